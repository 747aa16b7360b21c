package queue

import (
	"context"
	"iter"
	"slices"
	"strings"
	"sync"

	"github.com/mxqueue/mxq/queue/layout"
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
		prefix := layout.Key(layout.Handle{Kind: layout.Envelope})
		if !strings.HasPrefix(cursor, prefix) || len(cursor) > 128 || strings.Trim(cursor, "abcdefghijklmnopqrstuvwxyz0123456789._-/") != "" {
			return WalkPage{}, errorf("walk", cursor, ErrInvalid, "not a walk cursor")
		}
		after = cursor
	}
	keys, more, err := s.listEnvelopes(ctx, after, limit)
	if err != nil {
		return WalkPage{}, s.wrap("walk", "", err, nil)
	}
	var page WalkPage
	if more && len(keys) > 0 {
		page.Cursor = keys[len(keys)-1]
	}
	page.IDs, err = s.committedOf(ctx, keys)
	return page, s.wrap("walk", "", err, nil)
}

// listEnvelopes lists one page of envelope keys.
func (s *Store) listEnvelopes(ctx context.Context, after string, limit int) (keys []string, more bool, err error) {
	err = s.retry(ctx, func() error {
		keys, more, err = s.b.List(ctx, layout.Key(layout.Handle{Kind: layout.Envelope}), after, limit)
		return err
	})
	return keys, more, err
}

// committedOf returns the IDs of the envelope keys whose messages are
// committed. The records of the blocks the page spans are read after the
// page was listed, so that a commit before the listing is seen: a page of
// envelopes listed in ID order spans few blocks. Messages outside blocks
// (stored by Import, or by the reservation protocol of earlier versions)
// are checked against the open reservations, listed after the page too;
// they are few, and only the messages that appear in both lists have their
// reservation read.
func (s *Store) committedOf(ctx context.Context, keys []string) ([]EvpID, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	all := make([]EvpID, 0, len(keys))
	blocks := make(map[uint32]*blockRecord)
	for _, k := range keys {
		id, err := parseEnvelopeKey(k)
		if err != nil {
			continue // not ours; the walk shows only envelopes
		}
		if s.gc.isPending(k) {
			continue // a tombstone waiting for this Store's next batch
		}
		all = append(all, id)
		blocks[layout.BlockOf(uint32(id.MsgID()))] = nil
	}
	if err := s.readBlocks(ctx, blocks); err != nil {
		return nil, err
	}
	var open map[MsgID]bool // nil until needed
	hidden := make(map[MsgID]bool)
	inBlock := make(map[MsgID]string)
	ids := make([]EvpID, 0, len(all))
	for _, id := range all {
		m := id.MsgID()
		if r := blocks[layout.BlockOf(uint32(m))]; r != nil && !r.Foreign.has(lowBits(m)) {
			switch lo := lowBits(m); {
			case r.Committed.has(lo) || s.blocks.committed(m, r.Nonce):
				// Committed, as stored or as this Store knows of a
				// commit of its own whose bit is still to be written.
				ids = append(ids, id)
				continue
			case r.Aborted.has(lo):
				continue
			}
			// Open, or committed in one round and its bit not set yet,
			// or stored under an ID of the block by a node of an
			// earlier version: the envelope's header tells.
			st, seen := inBlock[m]
			if !seen {
				var err error
				if st, err = s.blockTxState(ctx, id); err != nil {
					return nil, err
				}
				inBlock[m] = st
			}
			switch st {
			case stateCommitted:
				ids = append(ids, id)
				continue
			case stateOpen:
				continue
			}
		}
		if open == nil {
			open = make(map[MsgID]bool)
			err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Reservation}), func(ks []string) error {
				for _, k := range ks {
					if h, err := parseHandle(k); err == nil && h.Kind == layout.Reservation {
						open[h.Msg] = true
					}
				}
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
		if open[m] {
			h, seen := hidden[m]
			if !seen {
				st, err := s.reservationState(ctx, m)
				if err != nil {
					return nil, err
				}
				h = st == stateOpen || st == stateAborted
				hidden[m] = h
			}
			if h {
				continue
			}
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// blockTxState tells, by the header of the envelope id, whose message's
// bit in its block record is neither committed nor aborted, whether the
// message is committed (in one round, its bit not set yet: see
// rollForward) or open, or "" when it was written under a reservation.
// A missing envelope, or one that does not parse, counts as open.
func (s *Store) blockTxState(ctx context.Context, id EvpID) (string, error) {
	h, _, ok, err := s.firstHeader(ctx, []string{layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})})
	switch {
	case err != nil || !ok:
		return stateOpen, err
	case h.Block == 0:
		return "", nil
	case h.oneRound():
		if done, err := s.rollForward(ctx, id, h); err != nil || !done {
			return stateOpen, err
		}
		return stateCommitted, nil
	}
	return stateOpen, nil
}

// readBlocks reads the records of the blocks whose first IDs are the keys
// of recs, leaving nil those that have none. For many blocks, it lists the
// records first and reads only those that exist.
func (s *Store) readBlocks(ctx context.Context, recs map[uint32]*blockRecord) error {
	firsts := make([]uint32, 0, len(recs))
	for f := range recs {
		firsts = append(firsts, f)
	}
	if len(firsts) > 8 {
		exist := make(map[uint32]bool)
		err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Block}), func(keys []string) error {
			for _, k := range keys {
				if h, err := layout.Parse(k); err == nil && h.Kind == layout.Block {
					exist[h.Msg] = true
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		firsts = slices.DeleteFunc(firsts, func(f uint32) bool { return !exist[f] })
	}
	var mu sync.Mutex
	return s.parallel(ctx, len(firsts), func(ctx context.Context, i int) error {
		r, _, err := s.readBlock(ctx, firsts[i])
		if s.isNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		s.blocks.putAt(firsts[i], r, s.now())
		mu.Lock()
		recs[firsts[i]] = r
		mu.Unlock()
		return nil
	})
}

// Walk yields every committed envelope once, grouped by message. The
// listing of envelope pages runs one page ahead of the checks and the
// caller, so memory does not grow with the queue and a walk costs little
// more than the listing itself. It stops with ctx's error when ctx is
// done. The envelopes are those of a snapshot only for a quiescent queue:
// envelopes added or removed during the walk may or may not be yielded,
// but an envelope of an uncommitted message never is.
func (s *Store) Walk(ctx context.Context) iter.Seq2[EvpID, error] {
	return func(yield func(EvpID, error) bool) {
		if err := s.check("walk"); err != nil {
			yield(0, err)
			return
		}
		type page struct {
			keys []string
			err  error
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		pages := make(chan page, 1)
		go func() {
			defer close(pages)
			after := ""
			for {
				keys, more, err := s.listEnvelopes(ctx, after, 1000)
				select {
				case pages <- page{keys, err}:
				case <-ctx.Done():
					return
				}
				if err != nil || !more || len(keys) == 0 {
					return
				}
				after = keys[len(keys)-1]
			}
		}()
		for p := range pages {
			if p.err != nil {
				yield(0, s.wrap("walk", "", p.err, nil))
				return
			}
			ids, err := s.committedOf(ctx, p.keys)
			if err != nil {
				yield(0, s.wrap("walk", "", err, nil))
				return
			}
			for _, id := range ids {
				if err := ctx.Err(); err != nil {
					yield(0, err)
					return
				}
				if !yield(id, nil) {
					return
				}
			}
		}
		if err := ctx.Err(); err != nil {
			yield(0, err)
		}
	}
}
