package queue

import (
	"context"
	"errors"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// SweepStats reports what a Sweep did.
type SweepStats struct {
	// Aborted counts the abandoned transactions that Sweep aborted.
	Aborted int
	// Removed counts the reservations removed: aborted ones whose data is
	// gone, and committed ones left behind.
	Removed int
	// Open counts the transactions still within their grace period.
	Open int
	// Corrupt counts the reservations that do not parse, which Sweep
	// leaves alone.
	Corrupt int
}

// Sweep aborts transactions that are older than Options.Grace and still
// open, and removes what they wrote. It never touches committed data: the
// abort is a compare-and-swap from "open" to "aborted", and a commit that
// races with it either wins (and Sweep leaves it alone) or fails. Aborted
// reservations stay, as tombstones, for another grace period. Any number
// of nodes may sweep at once.
func (s *Store) Sweep(ctx context.Context) (SweepStats, error) {
	var st SweepStats
	if err := s.check("sweep"); err != nil {
		return st, err
	}
	var ids []MsgID
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Reservation}), func(keys []string) error {
		for _, k := range keys {
			if h, err := parseHandle(k); err == nil && h.Kind == layout.Reservation {
				ids = append(ids, h.Msg)
			}
		}
		return nil
	})
	if err != nil {
		return st, s.wrap("sweep", "", err, nil)
	}
	now := s.now()
	for _, m := range ids {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		key := layout.Key(layout.Handle{Kind: layout.Reservation, Msg: uint32(m)})
		r, v, err := s.readReservation(ctx, m)
		if s.isNotFound(err) {
			continue
		}
		if errors.Is(err, ErrCorrupt) {
			// Whether its message committed is unknown: leave it alone,
			// and sweep the others.
			st.Corrupt++
			continue
		}
		if err != nil {
			return st, s.wrap("sweep", m.String(), err, nil)
		}
		switch r.State {
		case stateCommitted:
			// Left behind by a commit whose clean-up failed. Kept for a
			// grace period, so that a committer retrying after a lost
			// answer still learns that it committed.
			if now.Sub(r.Changed) < s.opts.Grace {
				continue
			}
			if err := s.del(ctx, key); err != nil {
				return st, s.wrap("sweep", m.String(), err, nil)
			}
			st.Removed++
		case stateOpen:
			if now.Sub(r.Created) < s.opts.Grace {
				st.Open++
				continue
			}
			a := *r
			a.State = stateAborted
			a.Changed = now
			if _, err := s.putBytes(ctx, key, a.encode(), driver.PutOptions{IfMatch: v}); err != nil {
				if s.isPrecondition(err) || s.isNotFound(err) {
					continue // committed or aborted meanwhile
				}
				return st, s.wrap("sweep", m.String(), err, nil)
			}
			if err := s.removeMessageData(ctx, m); err != nil {
				return st, s.wrap("sweep", m.String(), err, nil)
			}
			st.Aborted++
		case stateAborted:
			if now.Sub(r.Changed) < s.opts.Grace {
				continue
			}
			// Remove again whatever a write that was still in flight at
			// the abort may have left, then the tombstone.
			if err := s.removeMessageData(ctx, m); err != nil {
				return st, s.wrap("sweep", m.String(), err, nil)
			}
			if err := s.del(ctx, key); err != nil {
				return st, s.wrap("sweep", m.String(), err, nil)
			}
			st.Removed++
		}
	}
	return st, nil
}
