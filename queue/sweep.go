package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

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
	// Collected counts the delivered messages whose content Sweep
	// found left behind, and removed.
	Collected int
	// Committed counts the messages committed in one round by
	// Tx.CommitContent whose committer did not get to set their bit in
	// the block record, and that Sweep set.
	Committed int
}

// Sweep aborts transactions that are older than Options.Grace and still
// open, and removes what they wrote. It never touches committed data: the
// abort is a compare-and-swap that sets the transaction's aborted bit in
// its block record (or turns its reservation from "open" to "aborted"),
// and a commit that races with it either wins (and Sweep leaves it alone)
// or fails. It removes the records of blocks that are done with and hold
// no message any more, and aborted reservations after another grace
// period. Any number of nodes may sweep at once.
//
// Its cost is a listing of the blocks and of the reservations, and per
// block a read of its record and two listings.
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
	if err := s.sweepBlocks(ctx, now, &st); err != nil {
		return st, err
	}
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

// sweepBlocks sweeps the transactions of every block.
func (s *Store) sweepBlocks(ctx context.Context, now time.Time, st *SweepStats) error {
	var firsts []uint32
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Block}), func(keys []string) error {
		for _, k := range keys {
			if h, err := layout.Parse(k); err == nil && h.Kind == layout.Block {
				firsts = append(firsts, h.Msg)
			}
		}
		return nil
	})
	if err != nil {
		return s.wrap("sweep", "", err, nil)
	}
	for _, f := range firsts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.sweepBlock(ctx, f, now, st); err != nil {
			return s.wrap("sweep", MsgID(f).String(), err, nil)
		}
	}
	return nil
}

// sweepBlock aborts the abandoned transactions of the block that starts at
// first and removes what they left, and removes the block's record once
// the block is done with and empty. A block is done with twice Grace after
// it was taken: its holder hands out its IDs for Grace, and a transaction
// open for Grace fails. Its record is retired a grace period later still,
// and removed a grace period after that.
func (s *Store) sweepBlock(ctx context.Context, first uint32, now time.Time, st *SweepStats) error {
	r, v, err := s.readBlock(ctx, first)
	if s.isNotFound(err) {
		return nil
	}
	if errors.Is(err, ErrCorrupt) {
		st.Corrupt++
		return nil
	}
	if err != nil {
		return err
	}
	done := now.Sub(r.Created) >= 2*s.opts.Grace
	objs, err := s.blockObjects(ctx, first, layout.Content, layout.Envelope)
	if err != nil {
		return err
	}
	var abort, remove []uint32
	orphans := make(map[MsgID][]string)
	for lo, keys := range objs {
		switch {
		case r.Foreign.has(lo):
			continue
		case r.Committed.has(lo):
			if !slices.ContainsFunc(keys, isEnvelopeKey) {
				// Delivered, but the clean-up that removes the
				// content after the last envelope was lost.
				orphans[MsgID(first|lo)] = nil
			}
			continue
		case r.Aborted.has(lo):
			remove = append(remove, lo) // what an abort left
			continue
		}
		// The header of an envelope tells when its transaction began,
		// and whether it is one of the block's at all: a message that a
		// node of an earlier version stored under an ID of the block
		// has a reservation's nonce instead, and is left to its rules.
		// Content alone waits for the block to be done.
		h, evp, ok, err := s.firstHeader(ctx, keys)
		if err != nil {
			return err
		}
		if ok && h.Block == 0 {
			continue
		}
		old := done || ok && now.Sub(time.Unix(h.Opened, 0)) >= s.opts.Grace
		if !old {
			st.Open++
			continue
		}
		if ok && h.oneRound() {
			// Committed in one round if its content is stored too: then
			// it is to be kept, and its bit set, never aborted.
			done, err := s.rollForward(ctx, evp, h)
			if err != nil {
				return err
			}
			if done {
				st.Committed++
				continue
			}
		}
		abort = append(abort, lo)
	}
	if len(abort) > 0 {
		aborted, err := s.abortBits(ctx, first, r, v, abort)
		if err != nil {
			return err
		}
		st.Aborted += len(aborted)
		remove = append(remove, aborted...)
	}
	for _, lo := range remove {
		if err := s.removeMessageData(ctx, MsgID(first|lo)); err != nil {
			return err
		}
	}
	if len(orphans) > 0 {
		// Listed again just before: an envelope added to the
		// message since the listing above keeps its content.
		s.sweepUp(ctx, nil, orphans)
		st.Collected += len(orphans)
	}
	// The record stays for one more grace period after the block is done
	// with, as a tombstone: a write still in flight when its transaction
	// was aborted may land after the removals above, and the record's
	// aborted bit keeps it hidden until a later sweep removes it. Without
	// the record, an envelope would count as one stored outside blocks.
	if now.Sub(r.Created) < 3*s.opts.Grace || len(objs) > len(remove) {
		return nil
	}
	// Done with, and empty once the removals above are: the record can go
	// when nothing else of the block is stored either.
	more, err := s.blockObjects(ctx, first, layout.Reservation, layout.Content, layout.Envelope, layout.Quarantine)
	if err != nil || len(more) > 0 {
		return err
	}
	if s.ownBlock(ctx, first) {
		return nil
	}
	if r.Retired.IsZero() {
		// Retired first, removed a grace period later: a node that
		// cached the record before trusts it for less than that (see
		// blockCache.committedRecent).
		rr := r.clone()
		rr.Retired = now
		if _, err := s.putBytes(ctx, blockKey(first), rr.encode(), driver.PutOptions{IfMatch: v}); err != nil && !s.isPrecondition(err) && !s.isNotFound(err) {
			return err
		}
		return nil
	}
	if now.Sub(r.Retired) < s.opts.Grace {
		return nil
	}
	if err := s.del(ctx, blockKey(first)); err != nil {
		return err
	}
	s.blocks.drop(first)
	st.Removed++
	return nil
}

// firstHeader reads the header of the first envelope among keys, and
// returns it with the envelope's ID, or reports false when there is none.
func (s *Store) firstHeader(ctx context.Context, keys []string) (*envHeader, EvpID, bool, error) {
	for _, k := range keys {
		h, err := parseHandle(k)
		if err != nil || h.Kind != layout.Envelope {
			continue
		}
		b, _, err := s.getBytes(ctx, k, s.maxRecord())
		if s.isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, 0, false, err
		}
		hdr, _, err := decodeRecord(k, b)
		if err != nil {
			continue
		}
		return hdr, h.Evp, true, nil
	}
	return nil, 0, false, nil
}

// abortBits sets the aborted bits of the transactions los of the block
// that starts at first, whose record r was read at version v, and returns
// those whose aborted bit is set now, by this call or earlier; a
// transaction that committed meanwhile is not among them.
func (s *Store) abortBits(ctx context.Context, first uint32, r *blockRecord, v Version, los []uint32) ([]uint32, error) {
	for range maxSettleRounds {
		rec := r.clone()
		var aborted []uint32
		changed := false
		for _, lo := range los {
			switch {
			case rec.Committed.has(lo):
			case rec.Aborted.has(lo):
				aborted = append(aborted, lo)
			default:
				rec.Aborted.set(lo)
				aborted = append(aborted, lo)
				changed = true
			}
		}
		if !changed {
			return aborted, nil
		}
		_, err := s.putBytes(ctx, blockKey(first), rec.encode(), driver.PutOptions{IfMatch: v})
		if err == nil {
			return aborted, nil
		}
		if !s.isPrecondition(err) && !s.isNotFound(err) {
			return nil, err
		}
		r, v, err = s.readBlock(ctx, first)
		if s.isNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: the block record kept changing", ErrConflict)
}
