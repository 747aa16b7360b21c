package queue

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// Quarantined describes a quarantined message.
type Quarantined struct {
	ID        MsgID     `json:"id"`
	Reason    string    `json:"reason"`
	Time      time.Time `json:"time"`
	Node      string    `json:"node"`
	Envelopes []EvpID   `json:"envelopes"`
}

// Quarantine moves the message m out of the queue, like OpenSMTPD's
// message_corrupt: its content and envelopes are kept aside under the
// quarantine prefix with the reason, and no longer walked or loaded.
//
// A crash or an error part way leaves the message whole in the queue, or
// the quarantine whole (its record, its content and every envelope) with
// some envelopes still in the queue too. Quarantine again completes it.
func (s *Store) Quarantine(ctx context.Context, m MsgID, reason string) error {
	if err := s.check("quarantine"); err != nil {
		return err
	}
	if err := m.Valid(); err != nil {
		return &Error{Op: "quarantine", ID: m.String(), Kind: ErrInvalid, Err: err}
	}
	return s.wrap("quarantine", m.String(), s.quarantine(ctx, m, reason), nil)
}

func (s *Store) quarantine(ctx context.Context, m MsgID, reason string) error {
	keys, err := s.envelopeKeys(ctx, m)
	if err != nil {
		return err
	}
	q := Quarantined{ID: m, Reason: reason, Time: s.now().UTC(), Node: s.opts.Node}
	found := false
	qc := layout.Key(layout.Handle{Kind: layout.QuarantineContent, Msg: uint32(m)})
	if err := s.copyObject(ctx, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)}), qc); err == nil {
		found = true
	} else if !s.isNotFound(err) {
		return err
	} else if b, err := s.inlineContent(ctx, m); err == nil {
		// Kept in its envelope: the quarantine keeps it on its own too.
		if _, err := s.putBytes(ctx, qc, b, driver.PutOptions{}); err != nil {
			return err
		}
		found = true
	} else if !s.isNotFound(err) {
		return err
	}
	for _, k := range keys {
		id, err := parseEnvelopeKey(k)
		if err != nil {
			continue
		}
		if err := s.copyObject(ctx, k, layout.Key(layout.Handle{Kind: layout.QuarantineEnvelope, Evp: uint64(id)})); err != nil {
			if s.isNotFound(err) {
				continue
			}
			return err
		}
		q.Envelopes = append(q.Envelopes, id)
		found = true
	}
	if !found {
		return notFound("quarantine", m)
	}
	// A quarantine that was interrupted after its record was written has
	// removed some envelopes from the queue already: the record keeps
	// listing them, with its first reason and time.
	key := layout.Key(layout.Handle{Kind: layout.Quarantine, Msg: uint32(m)})
	if b, _, err := s.getBytes(ctx, key, 1<<20); err == nil {
		var prev Quarantined
		if json.Unmarshal(b, &prev) == nil && prev.ID == m {
			q.Reason, q.Time, q.Node = prev.Reason, prev.Time, prev.Node
			for _, id := range prev.Envelopes {
				if id.MsgID() == m && !slices.Contains(q.Envelopes, id) {
					q.Envelopes = append(q.Envelopes, id)
				}
			}
			slices.Sort(q.Envelopes)
		}
	} else if !s.isNotFound(err) {
		return err
	}
	b, _ := json.Marshal(&q)
	if _, err := s.putBytes(ctx, key, b, driver.PutOptions{}); err != nil {
		return err
	}
	s.committed.remove(m)
	return s.removeMessageData(ctx, m)
}

func (s *Store) copyObject(ctx context.Context, from, to string) error {
	b := s.stored() // objects move as they are stored, sealed or not
	rc, a, err := b.Get(ctx, from)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = b.Put(ctx, to, rc, &driver.PutOptions{Size: a.Size})
	return err
}

// Quarantined lists the quarantined messages.
func (s *Store) Quarantined(ctx context.Context) ([]Quarantined, error) {
	if err := s.check("quarantined"); err != nil {
		return nil, err
	}
	var out []Quarantined
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Quarantine}), func(keys []string) error {
		for _, k := range keys {
			if !strings.HasSuffix(k, "/info") {
				continue
			}
			b, _, err := s.getBytes(ctx, k, 1<<20)
			if s.isNotFound(err) {
				continue
			}
			if err != nil {
				return err
			}
			var q Quarantined
			if err := json.Unmarshal(b, &q); err != nil {
				return fmt.Errorf("%w: quarantine record %s does not parse: %v", ErrCorrupt, k, err)
			}
			if h, err := parseHandle(k); err != nil || h.Kind != layout.Quarantine || q.ID != h.Msg {
				return fmt.Errorf("%w: quarantine record %s names message %v", ErrCorrupt, k, q.ID)
			}
			for _, id := range q.Envelopes {
				if id.MsgID() != q.ID {
					return fmt.Errorf("%w: quarantine record %s names envelope %v of another message", ErrCorrupt, k, id)
				}
			}
			out = append(out, q)
		}
		return nil
	})
	return out, s.wrap("quarantined", "", err, nil)
}

// OpenQuarantined opens the content of the quarantined message m as it was
// stored, trailer included, for inspection: in an encrypted queue, sealed
// as it was (see docs/encryption.md).
func (s *Store) OpenQuarantined(ctx context.Context, m MsgID) (io.ReadCloser, error) {
	if err := s.check("open quarantined"); err != nil {
		return nil, err
	}
	if err := m.Valid(); err != nil {
		return nil, &Error{Op: "open quarantined", ID: m.String(), Kind: ErrInvalid, Err: err}
	}
	rc, _, err := s.stored().Get(ctx, layout.Key(layout.Handle{Kind: layout.QuarantineContent, Msg: uint32(m)}))
	return rc, s.wrap("open quarantined", m.String(), err, nil)
}
