package queue

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// dueWidth is the width of a due bucket.
const dueWidth = 60

func dueBucket(unix int64) int64 { return unix / dueWidth }

func dueKey(unix int64, id EvpID) string {
	return Key(Handle{Kind: KindDue, Due: max(dueBucket(unix), 1), Evp: id})
}

// Due returns up to limit envelopes that are due now and not held by a
// live lease, loaded, in random order so that nodes asking at once spread
// over them. Claim them with ClaimLoaded. It reads the time-bucketed due
// pointers up to now, so its cost follows the number of due and in-flight
// envelopes, not the size of the queue; stale pointers it meets are
// removed.
func (s *Store) Due(ctx context.Context, limit int) ([]*Envelope, error) {
	if err := s.check("due"); err != nil {
		return nil, err
	}
	limit = max(limit, 1)
	now := s.now()
	nowBucket := max(dueBucket(now.Unix()), 1)
	var out []*Envelope
	errStop := errors.New("stop")
	err := s.list(ctx, Key(Handle{Kind: KindDue}), func(keys []string) error {
		for _, k := range keys {
			h, err := ParseKey(k)
			if err != nil || h.Kind != KindDue {
				continue
			}
			bucket := h.Due
			if bucket > nowBucket {
				return errStop
			}
			if h.Msg != 0 {
				more, err := s.dueMessage(ctx, k, bucket, h.Msg, now, &out)
				if err != nil {
					return err
				}
				if !more || len(out) >= 4*limit {
					return errStop
				}
				continue
			}
			id := h.Evp
			e, err := s.load(ctx, id)
			if s.isNotFound(err) {
				// Gone, or written by a transaction not committed yet,
				// whose pointer must stay.
				if _, serr := s.stat(ctx, Key(Handle{Kind: KindEnvelope, Evp: id})); s.isNotFound(serr) {
					s.del(ctx, k)
				}
				continue
			}
			if errors.Is(err, ErrCorrupt) || err == nil && e.hdr.Held {
				continue // on hold: ReleaseHold gives it a new pointer
			}
			if err != nil {
				return err
			}
			// A held envelope's pointer may be one its holder's Defer has
			// just written: leave it alone.
			if held, err := s.held(ctx, &e.hdr); err != nil {
				return err
			} else if held {
				continue
			}
			if e.hdr.ByMsg || e.hdr.Due != 0 && max(dueBucket(e.hdr.Due), 1) != bucket {
				s.del(ctx, k) // rescheduled since
				continue
			}
			if e.hdr.Due > now.Unix() {
				continue
			}
			out = append(out, e)
			if len(out) >= 4*limit {
				return errStop
			}
		}
		return nil
	})
	if err != nil && err != errStop {
		return nil, s.wrap("due", "", err, nil)
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// dueMessage adds to out the envelopes of m that its commit made due and
// that are due and free now. A pointer to a message that is gone is
// removed. It reports false when out is full enough.
func (s *Store) dueMessage(ctx context.Context, key string, bucket int64, m MsgID, now time.Time, out *[]*Envelope) (bool, error) {
	// The state first: an open transaction writes its pointer and its
	// envelopes in parallel, so an empty listing proves nothing until the
	// transaction has ended.
	st, err := s.reservationState(ctx, m)
	if err != nil {
		return false, err
	}
	if st == stateOpen {
		return true, nil
	}
	var ids []EvpID
	err = s.list(ctx, Key(Handle{Kind: KindEnvelope, Msg: m}), func(keys []string) error {
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
		s.del(ctx, key) // the message is gone
		return true, nil
	}
	for _, id := range ids {
		e, err := s.load(ctx, id)
		if s.isNotFound(err) || errors.Is(err, ErrCorrupt) {
			continue
		}
		if err != nil {
			return false, err
		}
		if !e.hdr.ByMsg || max(dueBucket(e.hdr.Due), 1) != bucket || e.hdr.Due > now.Unix() || e.hdr.Held {
			continue // rescheduled with a pointer of its own, or on hold
		}
		if held, err := s.held(ctx, &e.hdr); err != nil {
			return false, err
		} else if held {
			continue
		}
		*out = append(*out, e)
	}
	return true, nil
}
