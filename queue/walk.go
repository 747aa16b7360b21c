package queue

import (
	"context"
	"iter"
	"strings"
)

// WalkPage is one page of a walk.
type WalkPage struct {
	// IDs of committed envelopes, grouped by message, in ID order.
	IDs []EvpID
	// Cursor resumes the walk after this page; "" when the walk is done.
	Cursor string
}

// WalkPage returns up to limit committed envelope IDs after cursor ("" to
// start). The cursor is opaque; pass it back unchanged. limit is clamped
// to 1..1000. Pages may hold fewer than limit IDs before the end.
//
// A walk reads one listing page of envelopes plus the (short) listing of
// open transactions for each page, and the reservation of any message
// that appears in both. It reads no envelope.
func (s *Store) WalkPage(ctx context.Context, cursor string, limit int) (WalkPage, error) {
	if err := s.check("walk"); err != nil {
		return WalkPage{}, err
	}
	limit = min(max(limit, 1), 1000)
	after := ""
	if cursor != "" {
		id, err := ParseEvpID(cursor)
		if err != nil {
			return WalkPage{}, &Error{Op: "walk", ID: cursor, Kind: ErrInvalid, Err: err}
		}
		after = Key(Handle{Kind: KindEnvelope, Evp: id})
	}
	p, err := s.walkPage(ctx, after, limit)
	return p, s.wrap("walk", "", err, nil)
}

func (s *Store) walkPage(ctx context.Context, after string, limit int) (WalkPage, error) {
	var keys []string
	var more bool
	err := s.retry(ctx, func() error {
		var err error
		keys, more, err = s.b.List(ctx, Key(Handle{Kind: KindEnvelope}), after, limit)
		return err
	})
	if err != nil {
		return WalkPage{}, err
	}
	var page WalkPage
	if more && len(keys) > 0 {
		id, err := parseEnvelopeKey(keys[len(keys)-1])
		if err != nil {
			return WalkPage{}, err
		}
		page.Cursor = id.String()
	}
	if len(keys) == 0 {
		return page, nil
	}
	// Messages in transaction have a reservation. Listed after the
	// envelopes, so that a transaction that began meanwhile is seen.
	open := make(map[MsgID]bool)
	err = s.list(ctx, Key(Handle{Kind: KindReservation}), func(ks []string) error {
		for _, k := range ks {
			if m, err := ParseMsgID(strings.TrimPrefix(k, "inc/")); err == nil {
				open[m] = true
			}
		}
		return nil
	})
	if err != nil {
		return WalkPage{}, err
	}
	hidden := make(map[MsgID]bool)
	for _, k := range keys {
		id, err := parseEnvelopeKey(k)
		if err != nil {
			continue // not ours; the walk shows only envelopes
		}
		m := id.MsgID()
		if open[m] {
			h, seen := hidden[m]
			if !seen {
				st, err := s.reservationState(ctx, m)
				if err != nil {
					return WalkPage{}, err
				}
				h = st == stateOpen || st == stateAborted
				hidden[m] = h
			}
			if h {
				continue
			}
		}
		page.IDs = append(page.IDs, id)
	}
	return page, nil
}

// Walk yields every committed envelope once, grouped by message, reading
// one page ahead. Its memory does not grow with the queue. It stops with
// ctx's error when ctx is done. The envelopes are those of a snapshot only
// for a quiescent queue: envelopes added or removed during the walk may or
// may not be yielded, but an envelope of an uncommitted message never is.
func (s *Store) Walk(ctx context.Context) iter.Seq2[EvpID, error] {
	return func(yield func(EvpID, error) bool) {
		if err := s.check("walk"); err != nil {
			yield(0, err)
			return
		}
		type result struct {
			p   WalkPage
			err error
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		fetch := func(after string) chan result {
			ch := make(chan result, 1)
			go func() {
				p, err := s.walkPage(ctx, after, 1000)
				ch <- result{p, s.wrap("walk", "", err, nil)}
			}()
			return ch
		}
		next := fetch("")
		for next != nil {
			r := <-next
			next = nil
			if r.err != nil {
				yield(0, r.err)
				return
			}
			if r.p.Cursor != "" {
				id, _ := ParseEvpID(r.p.Cursor)
				next = fetch(Key(Handle{Kind: KindEnvelope, Evp: id}))
			}
			for _, id := range r.p.IDs {
				if err := ctx.Err(); err != nil {
					yield(0, err)
					return
				}
				if !yield(id, nil) {
					return
				}
			}
		}
	}
}
