package queue

import (
	"context"
	"encoding/json"
	"errors"
	"iter"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// Owned yields the envelopes this node holds, grouped by message, as
// OpenSMTPD's start-up walk wants them. Envelopes held by an earlier
// process of this node (the same Options.Node) are claimed again for this
// one; envelopes another node took over are skipped and forgotten. It reads
// this node's claim pointers, not the whole queue.
func (s *Store) Owned(ctx context.Context) iter.Seq2[EvpID, error] {
	return func(yield func(EvpID, error) bool) {
		if err := s.check("owned"); err != nil {
			yield(0, err)
			return
		}
		if err := s.ensureAlive(ctx); err != nil {
			yield(0, s.wrap("owned", "", err, nil))
			return
		}
		var group MsgID
		seen := make(map[EvpID]bool)
		stop := errors.New("stop")
		emit := func(id EvpID) error {
			if id.MsgID() != group {
				group = id.MsgID()
				clear(seen)
			}
			if seen[id] {
				return nil
			}
			seen[id] = true
			ok, err := s.reclaim(ctx, id)
			if err != nil {
				if !yield(0, s.wrap("owned", id.String(), err, nil)) {
					return stop
				}
				return nil
			}
			if ok && !yield(id, nil) {
				return stop
			}
			return nil
		}
		prefix := layout.Key(layout.Handle{Kind: layout.Claim, Node: s.opts.Node})
		err := s.list(ctx, prefix, func(keys []string) error {
			for _, k := range keys {
				h, err := parseHandle(k)
				if err != nil || h.Kind != layout.Claim {
					continue
				}
				if m := h.Msg; m != 0 {
					ids, err := s.Envelopes(ctx, m)
					if err != nil {
						return err
					}
					if len(ids) == 0 {
						s.del(ctx, k)
					}
					for _, id := range ids {
						if err := emit(id); err != nil {
							return err
						}
					}
					continue
				}
				if err := emit(h.Evp); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil && err != stop {
			yield(0, s.wrap("owned", "", err, nil))
		}
	}
}

// reclaim makes this process the holder of an envelope its node holds.
// It reports false, and removes the pointer, if the envelope is gone or
// held by another node.
func (s *Store) reclaim(ctx context.Context, id EvpID) (bool, error) {
	e, err := s.load(ctx, id)
	if s.isNotFound(err) {
		s.del(ctx, layout.Key(layout.Handle{Kind: layout.Claim, Node: s.opts.Node, Evp: uint64(id)}))
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if e.hdr.Holder != s.opts.Node {
		s.del(ctx, layout.Key(layout.Handle{Kind: layout.Claim, Node: s.opts.Node, Evp: uint64(id)}))
		return false, nil
	}
	if s.mine(&e.hdr) {
		return true, nil
	}
	if e.hdr.Session > s.session.Load() {
		// A later process of this node holds it, so this one is
		// superseded; the pointer is the later one's.
		return false, nil
	}
	h := e.hdr
	h.settled()
	h.Session = s.session.Load()
	h.Token++
	_, err = s.putBytes(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)}), encodeRecord(&h, e.Data), driver.PutOptions{IfMatch: e.Version})
	if s.isPrecondition(err) || s.isNotFound(err) {
		return false, nil // another node was quicker
	}
	return err == nil, err
}

// Takeover finds the nodes whose heartbeat expired and claims their
// envelopes for this node, sharing the work with any other survivor that
// does the same: each envelope is claimed by one conditional write, which
// exactly one survivor wins. It returns the envelopes this node took.
// A dead node is forgotten once all its envelopes are taken and
// Options.LeaseDuration has passed since its heartbeat expired, so that
// due scans meanwhile take the claims it made on due envelopes in their
// first second, which have no claim pointer yet. The cost is one listing
// of the nodes and one read per node, plus, for each dead node, a listing
// of its claim pointers.
func (s *Store) Takeover(ctx context.Context) ([]EvpID, error) {
	if err := s.check("takeover"); err != nil {
		return nil, err
	}
	if _, err := s.alive(); err != nil {
		return nil, err // superseded: this process claims nothing more
	}
	var names []string
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Node, Node: ""}), func(keys []string) error {
		for _, k := range keys {
			if h, err := parseHandle(k); err == nil && h.Kind == layout.Node && h.Node != s.opts.Node {
				names = append(names, h.Node)
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("takeover", "", err, nil)
	}
	var taken []EvpID
	now := s.now()
	for _, n := range names {
		rec, err := s.node(ctx, n)
		if err != nil {
			return taken, s.wrap("takeover", n, err, nil)
		}
		if rec != nil && now.Before(rec.Expires) {
			continue
		}
		t, err := s.takeNode(ctx, n, rec)
		taken = append(taken, t...)
		if err != nil {
			return taken, s.wrap("takeover", n, err, nil)
		}
	}
	return taken, nil
}

// takeNode claims the envelopes of the dead node n.
func (s *Store) takeNode(ctx context.Context, n string, rec *nodeRecord) ([]EvpID, error) {
	var taken []EvpID
	prefix := layout.Key(layout.Handle{Kind: layout.Claim, Node: n})
	take := func(id EvpID) (bool, error) {
		e, err := s.load(ctx, id)
		if s.isNotFound(err) || errors.Is(err, ErrCorrupt) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if e.hdr.Holder != n {
			return true, nil // released, or taken by someone else
		}
		if held, err := s.held(ctx, &e.hdr); err != nil || held {
			return false, err // a later process of n holds it
		}
		c, err := s.ClaimEnvelope(ctx, e, s.opts.LeaseDuration)
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			return true, nil // another survivor won
		}
		if err != nil {
			return false, err
		}
		taken = append(taken, c.e.ID)
		return true, nil
	}
	remaining := 0
	err := s.list(ctx, prefix, func(keys []string) error {
		for _, k := range keys {
			h, err := parseHandle(k)
			var ids []EvpID
			switch {
			case err != nil || h.Kind != layout.Claim:
				// Not a claim pointer: nothing to take, and removed below.
			case h.Msg != 0:
				if ids, err = s.Envelopes(ctx, h.Msg); err != nil {
					return err
				}
				if len(ids) == 0 {
					// Its transaction may still be open: keep the pointer.
					if st, err := s.msgState(ctx, h.Msg); err != nil || st == stateOpen {
						remaining++
						continue
					}
				}
			default:
				ids = []EvpID{h.Evp}
			}
			done := true
			for _, id := range ids {
				ok, err := take(id)
				if err != nil {
					return err
				}
				done = done && ok
			}
			if done {
				s.del(ctx, k)
			} else {
				remaining++
			}
		}
		return nil
	})
	if err != nil {
		return taken, err
	}
	// The claims of a node with no heartbeat record count as held until
	// their leases lapse (see held), and a claim of a due envelope has no
	// pointer in its first moments (see lazyPointer): the record stays
	// until any such lease has lapsed, so that due scans take them.
	if remaining == 0 && rec != nil && !s.now().Before(rec.Expires.Add(s.opts.LeaseDuration)) {
		s.forget(ctx, n, rec)
	}
	return taken, nil
}

// forget removes the heartbeat of the dead node n, whose envelopes are all
// taken, unless n came back meanwhile, so that n costs nothing more.
//
// A delete cannot be conditional, so a new process of n may write its
// first heartbeat between the read here and the delete, and claim: the
// delete removes its heartbeat. held treats the claims of a node without
// heartbeat as held until their leases expire, and the new process writes
// its heartbeat again at its next beat. Should it die before that, its
// claim pointers would be left with no heartbeat to lead survivors to
// them; so when the node has pointers again after the delete, the
// heartbeat is written back (create-only), unexpired for one NodeTTL as if
// the new process had written it: survivors keep watching the node, and
// take its envelopes over once it has not heartbeated for a NodeTTL.
func (s *Store) forget(ctx context.Context, n string, rec *nodeRecord) {
	cur, _, err := s.readNode(ctx, n)
	if err != nil || cur == nil || cur.Session != rec.Session || s.now().Before(cur.Expires) {
		return
	}
	key := layout.Key(layout.Handle{Kind: layout.Node, Node: n})
	if s.del(ctx, key) != nil {
		return
	}
	var keys []string
	err = s.retry(ctx, func() error {
		var err error
		keys, _, err = s.b.List(ctx, layout.Key(layout.Handle{Kind: layout.Claim, Node: n}), "", 1)
		return err
	})
	if err == nil && len(keys) == 0 {
		return
	}
	now := s.now()
	back := *cur
	back.Beat, back.Expires = now.UTC(), now.Add(max(cur.Expires.Sub(cur.Beat), s.opts.NodeTTL)).UTC()
	b, _ := json.Marshal(&back)
	s.putBytes(ctx, key, b, driver.PutOptions{IfNoneMatch: true})
}
