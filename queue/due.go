package queue

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/mxqueue/mxq/queue/layout"
)

// dueWidth is the width of a due bucket.
const dueWidth = 60

func dueBucket(unix int64) int64 { return unix / dueWidth }

func dueKey(unix int64, id EvpID) string {
	return layout.Key(layout.Handle{Kind: layout.Due, Due: max(dueBucket(unix), 1), Evp: uint64(id)})
}

// Due returns up to limit envelopes that are due now and not held by a
// live lease, loaded, in random order so that nodes asking at once spread
// over them. Claim them with ClaimEnvelope. It reads the time-bucketed due
// pointers up to now, and the due groups among them (see writeGroups), so
// its cost follows the number of due and in-flight envelopes, not the size
// of the queue; stale pointers it meets are removed.
//
// Workers that share a Store share its due envelopes: an envelope that a
// call of Due is reading, or returned less than 5 seconds ago and nobody
// has claimed since, comes after every other due envelope in this Store's
// other scans, so that concurrent callers read and get different
// envelopes rather than the same ones.
func (s *Store) Due(ctx context.Context, limit int) ([]*Envelope, error) {
	if err := s.check("due"); err != nil {
		return nil, err
	}
	limit = max(limit, 1)
	now := s.now()
	nowBucket := max(dueBucket(now.Unix()), 1)
	// The pointers are listed in chunks of 4*limit: a listing is cheap,
	// and nodes that ask at once spread over a shuffled chunk. The
	// envelopes of a chunk are read in that order until limit are found,
	// so that no envelope is read that is not returned, but for stale
	// ones; a chunk that holds too few leads to the next.
	type pointer struct {
		key    string
		bucket int64
		h      handle
	}
	var out []*Envelope
	var chunk []pointer
	// The pointers of envelopes that Due returned lately, to another
	// caller most likely, come last.
	var offered []pointer
	// mine holds the envelopes this call offered itself before it read
	// them, so that the other callers of this Store read others.
	mine := make(map[EvpID]bool)
	errStop := errors.New("stop")
	process := func(last bool) error {
		rand.Shuffle(len(chunk), func(i, j int) { chunk[i], chunk[j] = chunk[j], chunk[i] })
		defer func() { chunk = chunk[:0] }()
		for _, p := range chunk {
			if len(out) >= limit {
				return errStop
			}
			if p.h.Kind == layout.DueGroup {
				more, skipped, err := s.dueGroup(ctx, p.key, p.h, now, &out, limit, last, mine)
				if err != nil {
					return err
				}
				if skipped {
					offered = append(offered, p)
				}
				if !more {
					return errStop
				}
				continue
			}
			if last && p.h.Msg == 0 && mine[p.h.Evp] {
				continue // taken by this scan through its group
			}
			own := !last && p.h.Msg == 0
			if own {
				if !s.claims.offer(p.h.Evp, now) {
					offered = append(offered, p)
					continue
				}
				mine[p.h.Evp] = true
			}
			n := len(out)
			more, err := s.duePointer(ctx, p.key, p.bucket, p.h, now, &out)
			if own && len(out) == n {
				s.claims.unoffer(p.h.Evp)
				delete(mine, p.h.Evp)
			}
			if err != nil {
				return err
			}
			if !more {
				return errStop
			}
		}
		if len(out) >= limit {
			return errStop
		}
		return nil
	}
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Due}), func(keys []string) error {
		for _, k := range keys {
			h, err := parseHandle(k)
			if err != nil || h.Kind != layout.Due && h.Kind != layout.DueGroup || s.gc.isPending(k) {
				continue
			}
			if h.Due > nowBucket {
				if err := process(false); err != nil {
					return err
				}
				return errStop
			}
			if h.Kind == layout.Due && h.Msg == 0 && s.claims.offered(h.Evp, now) {
				offered = append(offered, pointer{k, h.Due, h})
				continue
			}
			chunk = append(chunk, pointer{k, h.Due, h})
			if len(chunk) >= 4*limit {
				if err := process(false); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err == nil {
		err = process(false)
	}
	if (err == nil || err == errStop) && len(out) < limit && len(offered) > 0 {
		chunk = offered
		err = process(true)
	}
	if err != nil && err != errStop {
		for id := range mine {
			s.claims.unoffer(id)
		}
		return nil, s.wrap("due", "", err, nil)
	}
	// A message rolled forward by a reader has its own pointer beside its
	// group's entry.
	seen := make(map[EvpID]bool, len(out))
	out = slices.DeleteFunc(out, func(e *Envelope) bool {
		dup := seen[e.ID]
		seen[e.ID] = true
		return dup
	})
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	if len(out) > limit {
		for _, e := range out[limit:] {
			if mine[e.ID] {
				s.claims.unoffer(e.ID)
			}
		}
		out = out[:limit]
	}
	for _, e := range out {
		e.found = true
		if !mine[e.ID] {
			s.claims.offer(e.ID, now)
		}
	}
	return out, nil
}

// duePointer adds to out the envelopes that the due pointer at key makes
// due now and that are free, removing the pointer if it is stale. It
// reports false when out is full enough.
func (s *Store) duePointer(ctx context.Context, key string, bucket int64, h handle, now time.Time, out *[]*Envelope) (bool, error) {
	if h.Msg != 0 {
		return s.dueMessage(ctx, key, bucket, h.Msg, now, out)
	}
	id := h.Evp
	if s.claims.has(id, now) {
		return true, nil // this Store's caller is on it
	}
	e, err := s.loadFor(ctx, id, true)
	if s.isNotFound(err) {
		// Gone, or written by a transaction not committed yet, whose
		// pointer must stay. A commit writes its pointer and its
		// envelope in parallel, and AddEnvelope the pointer first, so
		// a missing envelope proves the pointer stale only once the
		// pointer is over a minute old and its message's transaction
		// has ended; the deletes of the collector remove the others.
		if bucket >= max(dueBucket(now.Unix()), 1)-1 {
			return true, nil
		}
		if _, serr := s.stat(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})); s.isNotFound(serr) {
			if st, err := s.msgState(ctx, id.MsgID()); err == nil && st != stateOpen {
				s.del(ctx, key)
			}
		}
		return true, nil
	}
	if errors.Is(err, ErrCorrupt) || err == nil && e.hdr.Held {
		return true, nil // on hold: ReleaseHold gives it a new pointer
	}
	if err != nil {
		return false, err
	}
	// A held envelope's pointer may be one its holder's Defer has just
	// written: leave it alone.
	if held, err := s.held(ctx, &e.hdr); err != nil {
		return false, err
	} else if held {
		return true, nil
	}
	if e.hdr.ByMsg || e.hdr.Due != 0 && max(dueBucket(e.hdr.Due), 1) != bucket {
		s.del(ctx, key) // rescheduled since
		return true, nil
	}
	if e.hdr.Due <= now.Unix() {
		*out = append(*out, e)
	}
	return true, nil
}

// dueMessage adds to out the envelopes of m that its commit made due and
// that are due and free now. A pointer to a message that is gone is
// removed. It reports false when out is full enough.
func (s *Store) dueMessage(ctx context.Context, key string, bucket int64, m MsgID, now time.Time, out *[]*Envelope) (bool, error) {
	var ids []EvpID
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)}), func(keys []string) error {
		for _, k := range keys {
			if id, err := parseEnvelopeKey(k); err == nil {
				ids = append(ids, id)
			}
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if len(ids) == 0 {
		// An open transaction writes its pointer and its envelopes in
		// parallel, so an empty listing proves the message gone only
		// once its transaction has ended. Loading the envelopes below
		// checks the transaction of each, so that is the only case that
		// reads it here.
		st, err := s.msgState(ctx, m)
		if err != nil {
			return false, err
		}
		if st != stateOpen {
			s.del(ctx, key) // the message is gone
		}
		return true, nil
	}
	var found []*Envelope
	var missing []EvpID
	// consider loads id and adds it to found if the message's pointer
	// makes it due now and it is free; it reports whether id could not
	// be loaded.
	consider := func(id EvpID) (bool, error) {
		e, err := s.load(ctx, id)
		if s.isNotFound(err) {
			return true, nil
		}
		if errors.Is(err, ErrCorrupt) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if !e.hdr.ByMsg || max(dueBucket(e.hdr.Due), 1) != bucket || e.hdr.Due > now.Unix() || e.hdr.Held {
			return false, nil // rescheduled with a pointer of its own, or on hold
		}
		if held, err := s.held(ctx, &e.hdr); err != nil {
			return false, err
		} else if !held {
			found = append(found, e)
		}
		return false, nil
	}
	for _, id := range ids {
		if s.claims.has(id, now) {
			continue
		}
		gone, err := consider(id)
		if err != nil {
			return false, err
		}
		if gone {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 && len(found) > 0 {
		// An envelope listed but not loaded is gone, or its
		// transaction had not committed when it was read, and then
		// the commit landed between the reads: read it again, so that
		// the message is not delivered in parts.
		for _, id := range missing {
			if _, err := consider(id); err != nil {
				return false, err
			}
		}
	}
	*out = append(*out, found...)
	return true, nil
}
