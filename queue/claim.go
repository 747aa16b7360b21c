package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// Claim is this node's handle on an envelope it holds a lease on: the
// handle through which the holder updates, reschedules, releases and
// deletes it. The lease itself (holder, token, expiry) is recorded in the
// envelope and read as a Lease.
//
// Two verbs give a Claim. Claim and ClaimEnvelope take a new lease (by
// ID, or on an envelope already loaded); Resume and ResumeEnvelope give
// back the handle of a lease this node already holds (by ID, or on an
// envelope already loaded, with its token). Every write through
// a Claim is fenced: once another node has taken the envelope over, it
// fails with ErrLeaseLost and changes nothing. A Claim is safe for use by
// one goroutine at a time.
type Claim struct {
	s   *Store
	e   *Envelope
	ptr *lazyPointer // the claim pointer, while it is not written; nil once it is
}

// claimPointerDelay is how long a claim of an envelope that Due returned
// goes without a claim pointer. Most such claims end sooner, and never
// write one.
var claimPointerDelay = time.Second

// lazyPointer is the claim pointer of a claim made on an envelope that Due
// returned, for at most Options.LeaseDuration, written only if the claim
// lasts claimPointerDelay. Until then the envelope's due pointer is what
// leads survivors to it: their due scans return it once its holder is
// dead, as Takeover would. For that, Takeover keeps a dead node's
// heartbeat record until such leases have lapsed (see takeNode).
type lazyPointer struct {
	timer *time.Timer
	done  chan struct{} // closed once the timer's write is over
}

// deferPointer writes the claim pointer key after claimPointerDelay, in
// the background, unless the claim ends first (see end).
func (s *Store) deferPointer(key string) *lazyPointer {
	p := &lazyPointer{done: make(chan struct{})}
	p.timer = time.AfterFunc(claimPointerDelay, func() {
		if !s.background(context.Background(), func(ctx context.Context) {
			defer close(p.done)
			s.putBytes(ctx, key, nil, driver.PutOptions{})
		}) {
			close(p.done) // closed: the claim ends with the Store
		}
	})
	return p
}

// stop cancels the write of the pointer, and reports whether it did so
// before the write began.
func (p *lazyPointer) stop() bool { return p != nil && p.timer.Stop() }

// end stops the write of a lazy pointer and reports whether the pointer
// may be stored, so that the end of the claim must remove it.
func (p *lazyPointer) end(ctx context.Context) bool {
	if p == nil {
		return true
	}
	if p.stop() {
		return false
	}
	select {
	case <-p.done:
	case <-ctx.Done():
	}
	return true
}

// endPointer ends the claim's lazy pointer, if any, and reports whether
// the claim pointer may be stored.
func (c *Claim) endPointer(ctx context.Context) bool {
	stored := c.ptr.end(ctx)
	c.ptr = nil
	return stored
}

// Envelope returns the envelope as this node last wrote or read it.
func (c *Claim) Envelope() *Envelope { return c.e }

// Lease returns the lease as this node last wrote or read it.
func (c *Claim) Lease() Lease { return c.e.Lease }

// Claim takes a lease on the envelope id for d (Options.LeaseDuration if d
// is 0). If another node holds it, the result is ErrConflict. It loads the
// envelope, then makes one conditional write; of concurrent claimers
// exactly one wins. A claim lasts while this node heartbeats: run RunNode,
// or call Heartbeat every Options.HeartbeatInterval.
func (s *Store) Claim(ctx context.Context, id EvpID, d time.Duration) (*Claim, error) {
	e, err := s.loadToClaim(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.ClaimEnvelope(ctx, e, d)
}

// ClaimEnvelope is Claim for an envelope already loaded (by Load or Due): one
// conditional write, which fails with ErrConflict if the envelope changed
// since e was read.
func (s *Store) ClaimEnvelope(ctx context.Context, e *Envelope, d time.Duration) (*Claim, error) {
	if err := s.check("claim"); err != nil {
		return nil, err
	}
	id := e.ID.String()
	if d <= 0 {
		d = s.opts.LeaseDuration
	}
	// The heartbeat first: it sets this process's session, which tells
	// the claims of this node's earlier processes from its own.
	if err := s.ensureAlive(ctx); err != nil {
		return nil, s.wrap("claim", id, err, nil)
	}
	if e.hdr.Held {
		return nil, errorf("claim", id, ErrConflict, "on hold: release it first")
	}
	if ok, err := s.held(ctx, &e.hdr); err != nil {
		return nil, s.wrap("claim", id, err, nil)
	} else if ok && !s.mine(&e.hdr) {
		return nil, errorf("claim", id, ErrConflict, "held by node %s until %s", e.hdr.Holder, time.Unix(0, e.hdr.Expires).UTC().Format(time.RFC3339))
	}
	now := s.now()
	h := e.hdr
	h.settled()
	h.Holder, h.Session, h.Expires = s.opts.Node, s.session.Load(), now.Add(d).UnixNano()
	h.Token++
	if !s.claims.take(e.ID, e.hdr.Token, h.Token, now, now.Add(d)) {
		return nil, errorf("claim", id, ErrConflict, "claimed by this node since it was read")
	}
	c := &Claim{s: s, e: &Envelope{ID: e.ID, Data: e.Data, Version: e.Version, hdr: e.hdr, loaded: true}}
	// A pointer from this node to the envelope lets survivors find it
	// without reading the queue. It is written beside the claim, so that a
	// claim never outlives its pointer's write and a later Delete or
	// Release removes it for good. An envelope that Due returned has a due
	// pointer that leads every node's due scan to it once its holder is
	// dead; its claim pointer waits, and most deliveries end first.
	pointer := layout.Key(layout.Handle{Kind: layout.Claim, Node: s.opts.Node, Evp: uint64(e.ID)})
	if e.found && e.hdr.Due != 0 && e.hdr.Holder != s.opts.Node && d <= s.opts.LeaseDuration && !s.opts.SelfScheduled {
		if err := c.write(ctx, "claim", &h, c.e.Data, ErrConflict); err != nil {
			s.claims.drop(e.ID)
			return nil, err
		}
		c.ptr = s.deferPointer(pointer)
		return c, nil
	}
	perr := make(chan error, 1)
	go func() {
		_, err := s.putBytes(ctx, pointer, nil, driver.PutOptions{})
		perr <- err
	}()
	err := c.write(ctx, "claim", &h, c.e.Data, ErrConflict)
	pointerErr := <-perr
	if err != nil {
		s.claims.drop(e.ID)
		if e.hdr.Holder != s.opts.Node {
			s.cleanup(ctx, pointer)
		}
		return nil, err
	}
	_ = pointerErr // without it, the envelope is still found through its due pointer
	return c, nil
}

// Resume returns the Claim of an envelope that this node already holds,
// for instance one committed with Tx.ClaimOnCommit, or one that
// Owned lists after a restart. If it does not, the result is
// ErrLeaseLost.
func (s *Store) Resume(ctx context.Context, id EvpID) (*Claim, error) {
	e, err := s.loadToClaim(ctx, id)
	if err != nil {
		return nil, err
	}
	if !s.mine(&e.hdr) {
		return nil, errorf("claim", id.String(), ErrLeaseLost, "held by %q, not this node", e.hdr.Holder)
	}
	return &Claim{s: s, e: e}, nil
}

// ResumeEnvelope returns the Claim of e, an envelope read by Load or Due, if
// this process holds its lease under token and the lease has not expired;
// otherwise the result is ErrLeaseLost. It makes no request: the writes
// through the Claim are fenced by e.Version, so they fail if the envelope
// changed after it was read. It lets a server that acts as one node for
// many clients (rest) tell one client's claim from another's by token.
func (s *Store) ResumeEnvelope(e *Envelope, token uint64) (*Claim, error) {
	if err := s.check("claim"); err != nil {
		return nil, err
	}
	switch {
	case !s.mine(&e.hdr):
		return nil, errorf("claim", e.ID.String(), ErrLeaseLost, "held by %q, not this node", e.hdr.Holder)
	case e.hdr.Token != token:
		return nil, errorf("claim", e.ID.String(), ErrLeaseLost, "claimed again since (token %d, not %d)", e.hdr.Token, token)
	case !s.now().Before(time.Unix(0, e.hdr.Expires)):
		return nil, errorf("claim", e.ID.String(), ErrLeaseLost, "the lease expired at %s", time.Unix(0, e.hdr.Expires).UTC().Format(time.RFC3339))
	}
	return &Claim{s: s, e: &Envelope{ID: e.ID, Data: e.Data, Version: e.Version, Lease: e.Lease, Due: e.Due, hdr: e.hdr}}, nil
}

// write stores h and data with a compare-and-swap on the claim's version.
// When the swap fails, it tells a lost lease from another change.
func (c *Claim) write(ctx context.Context, op string, h *envHeader, data []byte, otherwise error) error {
	s := c.s
	if err := s.check(op); err != nil {
		return err
	}
	id := c.e.ID
	if len(data) > s.opts.MaxEnvelopeSize {
		return errorf(op, id.String(), ErrInvalid, "envelope of %d bytes exceeds the limit of %d", len(data), s.opts.MaxEnvelopeSize)
	}
	v, err := s.putBytes(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)}), encodeRecord(h, data), driver.PutOptions{IfMatch: c.e.Version})
	if err != nil {
		if !s.isPrecondition(err) && !s.isNotFound(err) {
			return s.wrap(op, id.String(), err, nil)
		}
		if otherwise == ErrConflict {
			if s.isNotFound(err) {
				return notFound(op, id)
			}
			return s.wrap(op, id.String(), err, ErrConflict)
		}
		return c.lost(ctx, op, err)
	}
	c.e.Data = data
	c.e.Version = v
	c.e.hdr = *h
	c.e.fill()
	return nil
}

// ended forgets the claim in this Store's set of claims if err says it
// is lost.
func (c *Claim) ended(err error) {
	if errors.Is(err, ErrLeaseLost) {
		c.s.claims.drop(c.e.ID)
		if c.ptr.stop() {
			c.ptr = nil // never written; one written already is stale, and Owned or Takeover drops it
		}
	}
}

// lost explains a failed fenced write.
func (c *Claim) lost(ctx context.Context, op string, cause error) error {
	s := c.s
	id := c.e.ID
	cur, err := s.load(ctx, id)
	switch {
	case s.isNotFound(err):
		return &Error{Op: op, ID: id.String(), Kind: ErrLeaseLost, Err: fmt.Errorf("the envelope is gone")}
	case err != nil:
		return s.wrap(op, id.String(), err, nil)
	case cur.hdr.Holder != c.e.hdr.Holder || cur.hdr.Session != c.e.hdr.Session || cur.hdr.Token != c.e.hdr.Token:
		return &Error{Op: op, ID: id.String(), Kind: ErrLeaseLost, Err: fmt.Errorf("taken over by node %s (token %d)", cur.hdr.Holder, cur.hdr.Token)}
	}
	return s.wrap(op, id.String(), cause, ErrConflict)
}

// Renew extends the lease to d from now.
func (c *Claim) Renew(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		d = c.s.opts.LeaseDuration
	}
	h := c.e.hdr
	until := c.s.now().Add(d)
	h.Expires = until.UnixNano()
	if err := c.write(ctx, "renew", &h, c.e.Data, ErrLeaseLost); err != nil {
		c.ended(err)
		return err
	}
	c.s.claims.set(c.e.ID, until)
	return nil
}

// Update replaces the envelope's data, keeping the lease.
func (c *Claim) Update(ctx context.Context, data []byte) error {
	h := c.e.hdr
	return c.write(ctx, "update", &h, data, ErrLeaseLost)
}

// Release gives the lease up; the envelope keeps its due time.
func (c *Claim) Release(ctx context.Context) error {
	h := c.e.hdr
	if h.Due == 0 && !c.s.opts.SelfScheduled {
		// Claimed at commit, so no due pointer names it yet: give it one,
		// or no node would ever find it again.
		return c.deferTo(ctx, "release", nil, c.s.now())
	}
	h.Holder, h.Session, h.Expires = "", 0, 0
	if err := c.write(ctx, "release", &h, c.e.Data, ErrLeaseLost); err != nil {
		c.ended(err)
		return err
	}
	c.s.claims.drop(c.e.ID)
	if c.endPointer(ctx) {
		c.s.del(ctx, layout.Key(layout.Handle{Kind: layout.Claim, Node: c.s.opts.Node, Evp: uint64(c.e.ID)}))
	}
	return nil
}

// Defer reschedules the envelope to be due at due, with data as its new
// data (nil keeps it), and releases the lease: the temporary-failure path.
// Any node's Due finds it once it is due.
func (c *Claim) Defer(ctx context.Context, data []byte, due time.Time) error {
	return c.deferTo(ctx, "defer", data, due)
}

func (c *Claim) deferTo(ctx context.Context, op string, data []byte, due time.Time) error {
	s := c.s
	if data == nil {
		data = c.e.Data
	}
	old, byMsg := c.e.hdr.Due, c.e.hdr.ByMsg
	h := c.e.hdr
	h.Holder, h.Session, h.Expires = "", 0, 0
	h.Due, h.ByMsg = due.Unix(), false
	// The pointer goes first, so that the envelope is never due without
	// one; the old pointer is garbage after the swap.
	if _, err := s.putBytes(ctx, dueKey(h.Due, c.e.ID), nil, driver.PutOptions{}); err != nil {
		return s.wrap(op, c.e.ID.String(), err, nil)
	}
	if err := c.write(ctx, op, &h, data, ErrLeaseLost); err != nil {
		c.ended(err)
		if old == 0 || byMsg || dueBucket(old) != dueBucket(h.Due) {
			s.cleanup(ctx, dueKey(h.Due, c.e.ID))
		}
		return err
	}
	s.claims.drop(c.e.ID)
	if old != 0 && !byMsg && dueBucket(old) != dueBucket(h.Due) {
		s.del(ctx, dueKey(old, c.e.ID))
	}
	if c.endPointer(ctx) {
		s.del(ctx, layout.Key(layout.Handle{Kind: layout.Claim, Node: s.opts.Node, Evp: uint64(c.e.ID)}))
	}
	return nil
}

// Delete removes the envelope, fenced, so that a holder that lost the
// lease deletes nothing: with one conditional delete where the store
// honours the condition (driver.ConditionalDeleter), and otherwise with a
// tombstone swapped in, which every reader takes for a missing envelope.
// The envelope is gone when Delete returns; the tombstone, the pointers,
// and the content when it was the last envelope of its message, go a
// moment later in a batch (see Flush).
func (c *Claim) Delete(ctx context.Context) error {
	s := c.s
	id := c.e.ID
	h := c.e.hdr
	if !s.noCondDelete.Load() {
		if err := s.check("delete"); err != nil {
			return err
		}
		key := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})
		err := s.retry(ctx, func() error { return driver.DeleteIfMatch(ctx, s.b, key, c.e.Version) })
		switch {
		case errors.Is(err, errors.ErrUnsupported):
			s.noCondDelete.Store(true) // the tombstone, below
		case err == nil:
			// The entry in s.claims stays until the lease would have
			// lapsed: a worker that read the envelope before it went
			// learns from memory that it is gone.
			s.collectDeleted(ctx, id, c.stored(ctx, h), false)
			return nil
		case s.isPrecondition(err) || s.isNotFound(err):
			err = c.lost(ctx, "delete", err)
			c.ended(err)
			return err
		default:
			return s.wrap("delete", id.String(), err, nil)
		}
	}
	h.Gone = true
	h.content = nil // a tombstone carries nothing
	if err := c.write(ctx, "delete", &h, nil, ErrLeaseLost); err != nil {
		c.ended(err)
		return err
	}
	// Every reader takes the tombstone for a missing envelope, so it
	// goes in the collector's next batch, with the pointers.
	s.collectDeleted(ctx, id, c.stored(ctx, h), true)
	return nil
}

// stored ends the claim's lazy pointer and returns h, the header of the
// envelope it deletes, as the collector needs it: without the holder when
// the claim pointer was never written, so that no request deletes it.
func (c *Claim) stored(ctx context.Context, h envHeader) *envHeader {
	if !c.endPointer(ctx) {
		h.Holder = ""
	}
	return &h
}

// loadToClaim checks the Store and id, and loads the envelope id, for
// Claim and Resume; errors are those of the "claim" operation.
func (s *Store) loadToClaim(ctx context.Context, id EvpID) (*Envelope, error) {
	if err := s.check("claim"); err != nil {
		return nil, err
	}
	if err := id.Valid(); err != nil {
		return nil, &Error{Op: "claim", ID: id.String(), Kind: ErrInvalid, Err: err}
	}
	e, err := s.load(ctx, id)
	if err != nil {
		return nil, s.wrap("claim", id.String(), err, nil)
	}
	return e, nil
}
