package queue

import (
	"context"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// Held reports whether the envelope is on hold (see Store.Hold).
func (e *Envelope) Held() bool { return e.hdr.Held }

// Hold puts the envelope id on hold, like postsuper -h: Due no longer
// returns it and no node can claim it, until ReleaseHold. It goes through
// a claim, so it is safe while nodes run: if a live node holds the
// envelope (a delivery in progress), the result is ErrConflict and nothing
// changes; try again later. Holding a held envelope does nothing.
//
// The cost is a read, the claim (two writes), the fenced write of the
// hold, and the removal of the claim and due pointers: about six requests.
//
// Nodes that run a version of this package without holds ignore them.
func (s *Store) Hold(ctx context.Context, id EvpID) error {
	if err := s.check("hold"); err != nil {
		return err
	}
	if err := id.Valid(); err != nil {
		return &Error{Op: "hold", ID: id.String(), Kind: ErrInvalid, Err: err}
	}
	e, err := s.load(ctx, id)
	if err != nil {
		return s.wrap("hold", id.String(), err, nil)
	}
	if e.hdr.Held {
		return nil
	}
	c, err := s.ClaimEnvelope(ctx, e, 0)
	if err != nil {
		return err
	}
	h := c.e.hdr
	h.Holder, h.Session, h.Expires = "", 0, 0
	h.Held = true
	if err := c.write(ctx, "hold", &h, c.e.Data, ErrLeaseLost); err != nil {
		return err
	}
	s.del(ctx, layout.Key(layout.Handle{Kind: layout.Claim, Node: s.opts.Node, Evp: uint64(id)}))
	if !h.ByMsg && h.Due != 0 {
		// Nothing needs to find it until it is released.
		s.del(ctx, dueKey(h.Due, id))
	}
	return nil
}

// ReleaseHold takes the envelope id off hold, like postsuper -H, and
// makes it due now. Releasing an envelope that is not held does nothing.
// A change to the envelope between the read and the write is ErrConflict.
// The cost is a read and two writes.
func (s *Store) ReleaseHold(ctx context.Context, id EvpID) error {
	if err := s.check("release hold"); err != nil {
		return err
	}
	if err := id.Valid(); err != nil {
		return &Error{Op: "release hold", ID: id.String(), Kind: ErrInvalid, Err: err}
	}
	e, err := s.load(ctx, id)
	if err != nil {
		return s.wrap("release hold", id.String(), err, nil)
	}
	if !e.hdr.Held {
		return nil
	}
	h := e.hdr
	h.Held = false
	if !s.opts.SelfScheduled {
		h.Due, h.ByMsg = s.now().Unix(), false
		// The pointer first, so that the envelope is never due without
		// one.
		if _, err := s.putBytes(ctx, dueKey(h.Due, id), nil, driver.PutOptions{}); err != nil {
			return s.wrap("release hold", id.String(), err, nil)
		}
	}
	if _, err := s.putBytes(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)}), encodeRecord(&h, e.Data), driver.PutOptions{IfMatch: e.Version}); err != nil {
		// The new pointer stays: a stale pointer is harmless, Due
		// removes it, and another release may have written the same.
		if s.isNotFound(err) {
			return notFound("release hold", id)
		}
		return s.wrap("release hold", id.String(), err, ErrConflict)
	}
	return nil
}

// Schedule makes the envelope id due at t (now, if t is zero), like
// smtpctl schedule: it claims the envelope and defers it to t. If a live
// node holds it, or it is on hold, the result is ErrConflict. The cost is
// that of Claim and Claim.Defer: about six requests.
func (s *Store) Schedule(ctx context.Context, id EvpID, t time.Time) error {
	if t.IsZero() {
		t = s.now()
	}
	c, err := s.Claim(ctx, id, 0)
	if err != nil {
		return err
	}
	return c.Defer(ctx, nil, t)
}
