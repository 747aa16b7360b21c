package queue

import (
	"bytes"
	"context"
	"errors"
	"io"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
	"github.com/mxqueue/mxq/queue/seal"
)

// ResealProgress counts what Reseal has done so far.
type ResealProgress struct {
	// Scanned is the number of content and envelope objects looked at.
	Scanned int
	// Resealed is the number rewritten under the current key.
	Resealed int
	// Current is the number already sealed with the current key.
	Current int
	// Busy is the number left as they were because they changed or
	// vanished meanwhile, or because a node holds a lease on them: the
	// node rewrites them with its own key when it updates them. Run
	// Reseal again to pick up those that remain.
	Busy int
	// Corrupt is the number left as they were because they do not verify
	// (see Quarantine).
	Corrupt int
}

// Reseal rewrites every message content and envelope of the queue, live
// and quarantined, that is plain or sealed with another key than the
// current one, so that it is sealed with the current key, and calls
// progress (if not nil) after each object. It is for turning encryption on
// in a queue that holds plain objects, and for retiring an old key; after
// it, old keys and plain objects may be refused (see
// Encryption.Require).
//
// Reseal is safe while the queue is in use: each rewrite is a
// compare-and-swap on the version read, so an object changed or deleted
// meanwhile is left alone (and counted Busy), and envelopes under a lease
// are not touched, so that no lease holder loses its version. An envelope
// rewritten between a node's Load and its Update without a lease makes the
// Update fail with ErrConflict, as any concurrent update does. The Store
// must have a current key; otherwise Reseal fails with ErrInvalid.
func (s *Store) Reseal(ctx context.Context, progress func(ResealProgress)) (ResealProgress, error) {
	var p ResealProgress
	if err := s.check("reseal"); err != nil {
		return p, err
	}
	sb, ok := s.b.(*sealedBackend)
	if !ok || sb.c.Options().Keys.Current() == nil {
		return p, errorf("reseal", "", ErrInvalid, "no current key is configured")
	}
	cur := sb.c.Options().Keys.Current().ID()
	for _, prefix := range []string{layout.Key(layout.Handle{Kind: layout.Content}), layout.Key(layout.Handle{Kind: layout.Envelope}), layout.Key(layout.Handle{Kind: layout.Quarantine})} {
		err := s.list(ctx, prefix, func(keys []string) error {
			for _, key := range keys {
				if _, sealed, _ := sealClass(key); !sealed {
					continue
				}
				p.Scanned++
				done, err := s.reseal(ctx, sb, key, cur)
				switch {
				case err != nil:
					return err
				case done == resealCurrent:
					p.Current++
				case done == resealDone:
					p.Resealed++
				case done == resealCorrupt:
					p.Corrupt++
				default:
					p.Busy++
				}
				if progress != nil {
					progress(p)
				}
			}
			return nil
		})
		if err != nil {
			return p, s.wrap("reseal", "", err, nil)
		}
	}
	return p, nil
}

type resealResult int

const (
	resealCurrent resealResult = iota
	resealDone
	resealBusy
	resealCorrupt
)

// reseal rewrites the object at key under the current key cur, unless it
// is sealed with it already.
func (s *Store) reseal(ctx context.Context, sb *sealedBackend, key string, cur seal.KeyID) (resealResult, error) {
	var hb [16]byte
	var n int
	err := s.retry(ctx, func() error {
		rc, _, err := sb.b.Get(ctx, key)
		if err != nil {
			return err
		}
		defer rc.Close()
		n, err = driver.ReadFull(rc, hb[:])
		if err == io.EOF {
			err = nil
		}
		return err
	})
	if s.isNotFound(err) {
		return resealBusy, nil
	}
	if err != nil {
		return 0, err
	}
	if h, err := seal.ParseHeader(hb[:n]); err == nil && h.Encrypted && h.Key == cur {
		return resealCurrent, nil
	}
	// Read the plaintext through the seal and write it back through it,
	// on the condition that the object has not changed.
	var rc io.ReadCloser
	var a driver.Attrs
	err = s.retry(ctx, func() error {
		var err error
		rc, a, err = sb.Get(ctx, key)
		return err
	})
	switch {
	case s.isNotFound(err):
		return resealBusy, nil
	case errors.Is(err, ErrCorrupt):
		return resealCorrupt, nil
	case err != nil:
		return 0, err
	}
	defer rc.Close()
	var body io.Reader = rc
	if h, _ := layout.Parse(key); h.Kind == layout.Envelope || h.Kind == layout.QuarantineEnvelope {
		b, err := io.ReadAll(io.LimitReader(rc, s.maxRecord()+1))
		if errors.Is(err, ErrCorrupt) {
			return resealCorrupt, nil
		}
		if err != nil {
			return 0, err
		}
		eh, _, err := decodeRecord(key, b)
		if err != nil {
			return resealCorrupt, nil
		}
		if eh.Holder != "" && eh.Expires > s.now().UnixNano() {
			return resealBusy, nil
		}
		body = bytes.NewReader(b)
	}
	_, err = sb.Put(ctx, key, body, &driver.PutOptions{IfMatch: a.Version, Size: -1})
	switch {
	case err == nil:
		return resealDone, nil
	case s.isPrecondition(err) || s.isNotFound(err):
		return resealBusy, nil
	case errors.Is(err, ErrCorrupt):
		// The content failed to verify as it was read: the conditional
		// write stored nothing.
		return resealCorrupt, nil
	}
	return 0, err
}
