package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"sync"
	"time"
)

// Lease describes a node's claim on an envelope. A lease is held while it
// has not expired and its holder's heartbeat is alive; a node that dies
// loses its leases when its heartbeat expires, however long they were
// taken for. Token grows with every claim of the envelope, so a lost lease
// is told from the one that replaced it.
type Lease struct {
	ID      EvpID
	Holder  string
	Token   uint64
	Expires time.Time
}

// nodeRecord is the heartbeat at KindNode.
type nodeRecord struct {
	Name    string    `json:"name"`
	Session uint64    `json:"session"`
	Expires time.Time `json:"expires"`
	Beat    time.Time `json:"beat"`
}

// nodeCache remembers other nodes' heartbeats for a short while.
type nodeCache struct {
	mu sync.Mutex
	m  map[string]cachedNode
}

type cachedNode struct {
	rec     *nodeRecord // nil: no heartbeat
	fetched time.Time
}

// beatState is this process's side of its node's heartbeat.
type beatState struct {
	mu         sync.Mutex
	at         time.Time // when the last heartbeat was written
	version    Version   // its version, which the next heartbeat swaps
	superseded error     // set for good once a later process of the node is found
}

// maxBeatAttempts bounds the rounds of one heartbeat whose write keeps
// finding the record changed.
const maxBeatAttempts = 8

// Heartbeat announces that this node is alive for Options.NodeTTL. One
// conditional write, whatever the size of the queue; the first heartbeat
// of a process also reads the record, to start a session later than every
// earlier process of the node. RunNode calls it every
// Options.HeartbeatInterval; Claim, Tx.Claim and Owned write the first
// one. If a later process of this node has started (two live processes
// under one name), the result is ErrConflict, and this process, superseded
// for good, claims nothing more.
func (s *Store) Heartbeat(ctx context.Context) error {
	if err := s.check("heartbeat"); err != nil {
		return err
	}
	return s.wrap("heartbeat", s.opts.Node, s.heartbeat(ctx, false), nil)
}

// heartbeat writes this node's record; with ifStale, only if the last one
// is not recent.
//
// Sessions order the processes of one node. The first heartbeat of a
// process reads the record and picks a session above the one recorded
// (and at least its start time in nanoseconds, so that sessions grow even
// after a dead node's record was removed), then writes it with a
// conditional write, read and retried if another write came between.
// Every later heartbeat is a compare-and-swap on the version of this
// process's last one. So the record's session only grows while the record
// exists, a late write of a dead process never replaces its successor's,
// and a process finds out when a later one has started. The session is
// set only once written, and every claim waits for ensureAlive, so no
// claim carries a session that is not in the record.
func (s *Store) heartbeat(ctx context.Context, ifStale bool) error {
	// One heartbeat at a time, each swapping the last one's version; a
	// caller whose ctx ends while another's heartbeat hangs gives up.
	select {
	case s.beatMu <- struct{}{}:
		defer func() { <-s.beatMu }()
	case <-ctx.Done():
		return ctx.Err()
	}
	if fresh, err := s.alive(); err != nil || fresh && ifStale {
		return err
	}
	key := Key(Handle{Kind: KindNode, Node: s.opts.Node})
	session := s.session.Load()
	s.beat.mu.Lock()
	ver := s.beat.version
	s.beat.mu.Unlock()
	var floor uint64 // the highest session seen in the record
	for range maxBeatAttempts {
		put := PutOptions{IfMatch: ver}
		if session == 0 || ver == "" {
			rec, v, err := s.readNode(ctx, s.opts.Node)
			if errors.Is(err, ErrCorrupt) && v != "" {
				rec, err = &nodeRecord{}, nil // unreadable: replace it
			}
			if err != nil {
				return err
			}
			// A missing record was removed by a survivor that forgot the
			// node; an earlier session's is a dead process's. Either way
			// this process writes its own.
			put = PutOptions{IfNoneMatch: true}
			if rec != nil {
				put = PutOptions{IfMatch: v}
				floor = max(floor, rec.Session)
				if session != 0 && rec.Session > session {
					return s.supersede(rec.Session)
				}
			}
		}
		now := s.now()
		sess := session
		if sess == 0 {
			sess = max(uint64(max(now.UnixNano(), 0)), floor+1)
		}
		b, _ := json.Marshal(&nodeRecord{Name: s.opts.Node, Session: sess, Expires: now.Add(s.opts.NodeTTL).UTC(), Beat: now.UTC()})
		v, err := s.putBytes(ctx, key, b, put)
		if s.isPrecondition(err) || s.isNotFound(err) {
			ver = "" // another write or a removal came between: read again
			continue
		}
		if err != nil {
			return err
		}
		s.session.Store(sess)
		s.beat.mu.Lock()
		s.beat.at, s.beat.version = now, v
		s.beat.mu.Unlock()
		return nil
	}
	return errorf("heartbeat", s.opts.Node, ErrConflict, "the heartbeat record changed under each of %d attempts to write it", maxBeatAttempts)
}

// supersede records, for good, that a later process of this node (with
// the session later) has started.
func (s *Store) supersede(later uint64) error {
	err := errorf("heartbeat", s.opts.Node, ErrConflict,
		"a later process of node %s (session %d) has started, so this one (session %d) is superseded: it claims nothing more, and other nodes may take over its claims; every live process needs a node name of its own",
		s.opts.Node, later, s.session.Load())
	s.beat.mu.Lock()
	defer s.beat.mu.Unlock()
	if s.beat.superseded == nil {
		s.beat.superseded = err
	}
	return s.beat.superseded
}

// alive reports whether this process's last heartbeat is recent enough to
// claim under, or the error that ends its claims.
func (s *Store) alive() (bool, error) {
	s.beat.mu.Lock()
	defer s.beat.mu.Unlock()
	if s.beat.superseded != nil {
		return false, s.beat.superseded
	}
	return !s.beat.at.IsZero() && s.now().Sub(s.beat.at) < s.opts.NodeTTL/2, nil
}

// ensureAlive writes a heartbeat unless a recent one is still good. Every
// claim calls it first, so no claim is made before the session is set.
func (s *Store) ensureAlive(ctx context.Context) error {
	if fresh, err := s.alive(); fresh || err != nil {
		return err
	}
	return s.heartbeat(ctx, true)
}

// node returns the heartbeat of the named node. A heartbeat that showed
// the node alive is trusted for up to a second, or a quarter of the margin
// between heartbeats and their expiry if that is shorter; a heartbeat is
// only ever found expired on a fresh read.
func (s *Store) node(ctx context.Context, name string) (*nodeRecord, error) {
	now := s.now()
	s.nodes.mu.Lock()
	c, ok := s.nodes.m[name]
	s.nodes.mu.Unlock()
	keep := min(time.Second, (s.opts.NodeTTL-s.opts.HeartbeatInterval)/4)
	if ok && c.rec != nil && now.Before(c.rec.Expires) && now.Sub(c.fetched) < keep && now.Sub(c.fetched) >= 0 {
		return c.rec, nil
	}
	rec, _, err := s.readNode(ctx, name)
	if err != nil {
		return nil, err
	}
	s.nodes.mu.Lock()
	if s.nodes.m == nil {
		s.nodes.m = make(map[string]cachedNode)
	}
	s.nodes.m[name] = cachedNode{rec: rec, fetched: now}
	s.nodes.mu.Unlock()
	return rec, nil
}

// readNode reads the heartbeat of node n and its version; a missing one is
// nil, without error. A record that does not parse is ErrCorrupt, with its
// version.
func (s *Store) readNode(ctx context.Context, n string) (*nodeRecord, Version, error) {
	key := Key(Handle{Kind: KindNode, Node: n})
	b, a, err := s.getBytes(ctx, key, 4096)
	if s.isNotFound(err) {
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	rec := new(nodeRecord)
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, a.Version, fmt.Errorf("%w: heartbeat %s does not parse: %v", ErrCorrupt, key, err)
	}
	return rec, a.Version, nil
}

// held reports whether the lease in h is held: not expired, and its
// holder's process alive.
//
// A claim is judged by its session against the holder's heartbeat, which
// may be older than the claim: cached, or read before a new process of the
// node wrote its first heartbeat. So a different session alone never
// means dead:
//   - an earlier session than the heartbeat's: a later process of the node
//     has started, so the claim's process is dead (one live process per
//     node name);
//   - the same or a later session: held while the heartbeat has not
//     expired, and a heartbeat is only ever found expired on a fresh read.
//     A live process keeps its node's heartbeat unexpired and at its own
//     session: its first heartbeat comes before its first claim, and each
//     of its heartbeats replaces an earlier session's record. The only
//     other writer, a survivor that writes back a forgotten node's
//     heartbeat (see forget), writes it unexpired for one NodeTTL. So an
//     expired heartbeat of an earlier session means that the claim's
//     process has not heartbeated for a NodeTTL;
//   - no heartbeat at all (a survivor that forgot the node removed it just
//     as a new process started, which an unconditional delete cannot rule
//     out): held until the lease expires.
func (s *Store) held(ctx context.Context, h *envHeader) (bool, error) {
	if h.Holder == "" || !s.now().Before(time.Unix(0, h.Expires)) {
		return false, nil
	}
	if own := s.session.Load(); h.Holder == s.opts.Node && own != 0 {
		switch {
		case h.Session == own:
			return true, nil
		case h.Session < own:
			return false, nil // an earlier process of this node
		}
	}
	rec, err := s.node(ctx, h.Holder)
	switch {
	case err != nil:
		return false, err
	case rec == nil:
		return true, nil
	case h.Session < rec.Session:
		return false, nil
	default:
		return s.now().Before(rec.Expires), nil
	}
}

// mine reports whether this process holds the lease in h.
func (s *Store) mine(h *envHeader) bool {
	return h.Holder == s.opts.Node && h.Session != 0 && h.Session == s.session.Load()
}

// Claim is this node's hold on an envelope: the handle through which the
// holder updates, reschedules, releases and deletes it. Every write through
// a Claim is fenced: once another node has taken the envelope over, it
// fails with ErrLeaseLost and changes nothing. A Claim is safe for use by
// one goroutine at a time.
type Claim struct {
	s *Store
	e *Envelope
}

// Envelope returns the envelope as this node last wrote or read it.
func (c *Claim) Envelope() *Envelope { return c.e }

// Lease returns the lease.
func (c *Claim) Lease() Lease { return c.e.Lease }

// Claim takes a lease on the envelope id for d (Options.LeaseDuration if d
// is 0). If another node holds it, the result is ErrConflict. It loads the
// envelope, then makes one conditional write; of concurrent claimers
// exactly one wins. A claim lasts while this node heartbeats: run RunNode,
// or call Heartbeat every Options.HeartbeatInterval.
func (s *Store) Claim(ctx context.Context, id EvpID, d time.Duration) (*Claim, error) {
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
	return s.ClaimLoaded(ctx, e, d)
}

// ClaimLoaded is Claim for an envelope already loaded (by Load or Due): one
// conditional write, which fails with ErrConflict if the envelope changed
// since e was read.
func (s *Store) ClaimLoaded(ctx context.Context, e *Envelope, d time.Duration) (*Claim, error) {
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
	if ok, err := s.held(ctx, &e.hdr); err != nil {
		return nil, s.wrap("claim", id, err, nil)
	} else if ok && !s.mine(&e.hdr) {
		return nil, errorf("claim", id, ErrConflict, "held by node %s until %s", e.hdr.Holder, time.Unix(0, e.hdr.Expires).UTC().Format(time.RFC3339))
	}
	h := e.hdr
	h.Pending = 0
	h.Holder, h.Session, h.Expires = s.opts.Node, s.session.Load(), s.now().Add(d).UnixNano()
	h.Token++
	c := &Claim{s: s, e: &Envelope{ID: e.ID, Data: e.Data, Version: e.Version, hdr: e.hdr, loaded: true}}
	// A pointer from this node to the envelope lets survivors find it
	// without reading the queue. It is written beside the claim, so that a
	// claim never outlives its pointer's write and a later Delete or
	// Release removes it for good.
	pointer := Key(Handle{Kind: KindClaim, Node: s.opts.Node, Evp: e.ID})
	perr := make(chan error, 1)
	go func() {
		_, err := s.putBytes(ctx, pointer, nil, PutOptions{})
		perr <- err
	}()
	err := c.write(ctx, "claim", &h, c.e.Data, ErrConflict)
	pointerErr := <-perr
	if err != nil {
		if e.hdr.Holder != s.opts.Node {
			s.del(context.WithoutCancel(ctx), pointer)
		}
		return nil, err
	}
	_ = pointerErr // without it, the envelope is still found through its due pointer
	return c, nil
}

// ClaimOf returns the Claim of an envelope that this node already holds,
// for instance one committed with Tx.Claim. If it does not, the result is
// ErrLeaseLost.
func (s *Store) ClaimOf(ctx context.Context, id EvpID) (*Claim, error) {
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
	if !s.mine(&e.hdr) {
		return nil, errorf("claim", id.String(), ErrLeaseLost, "held by %q, not this node", e.hdr.Holder)
	}
	return &Claim{s: s, e: e}, nil
}

// ClaimHeld returns the Claim of e, an envelope read by Load or Due, if
// this process holds its lease under token and the lease has not expired;
// otherwise the result is ErrLeaseLost. It makes no request: the writes
// through the Claim are fenced by e.Version, so they fail if the envelope
// changed after it was read. It lets a server that acts as one node for
// many clients (rest) tell one client's claim from another's by token.
func (s *Store) ClaimHeld(e *Envelope, token uint64) (*Claim, error) {
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
	id := c.e.ID
	if len(data) > s.opts.MaxEnvelopeSize {
		return errorf(op, id.String(), ErrInvalid, "envelope of %d bytes exceeds the limit of %d", len(data), s.opts.MaxEnvelopeSize)
	}
	v, err := s.putBytes(ctx, Key(Handle{Kind: KindEnvelope, Evp: id}), encodeRecord(h, data), PutOptions{IfMatch: c.e.Version})
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
	h.Expires = c.s.now().Add(d).UnixNano()
	return c.write(ctx, "renew", &h, c.e.Data, ErrLeaseLost)
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
		return err
	}
	c.s.del(ctx, Key(Handle{Kind: KindClaim, Node: c.s.opts.Node, Evp: c.e.ID}))
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
	if _, err := s.putBytes(ctx, dueKey(h.Due, c.e.ID), nil, PutOptions{}); err != nil {
		return s.wrap(op, c.e.ID.String(), err, nil)
	}
	if err := c.write(ctx, op, &h, data, ErrLeaseLost); err != nil {
		if old == 0 || byMsg || dueBucket(old) != dueBucket(h.Due) {
			s.del(context.WithoutCancel(ctx), dueKey(h.Due, c.e.ID))
		}
		return err
	}
	if old != 0 && !byMsg && dueBucket(old) != dueBucket(h.Due) {
		s.del(ctx, dueKey(old, c.e.ID))
	}
	s.del(ctx, Key(Handle{Kind: KindClaim, Node: s.opts.Node, Evp: c.e.ID}))
	return nil
}

// Delete removes the envelope, fenced: a tombstone is swapped in first, so
// a holder that lost the lease deletes nothing. When it was the last
// envelope of its message, the content goes too.
func (c *Claim) Delete(ctx context.Context) error {
	s := c.s
	id := c.e.ID
	h := c.e.hdr
	h.Gone = true
	if err := c.write(ctx, "delete", &h, nil, ErrLeaseLost); err != nil {
		return err
	}
	return s.wrap("delete", id.String(), s.finishDelete(ctx, id, &h), nil)
}

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
			if errors.Is(err, ErrCorrupt) {
				continue
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
		if !e.hdr.ByMsg || max(dueBucket(e.hdr.Due), 1) != bucket || e.hdr.Due > now.Unix() {
			continue // rescheduled with a pointer of its own
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
		prefix := Key(Handle{Kind: KindClaim, Node: s.opts.Node})
		err := s.list(ctx, prefix, func(keys []string) error {
			for _, k := range keys {
				h, err := ParseKey(k)
				if err != nil || h.Kind != KindClaim {
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
		s.del(ctx, Key(Handle{Kind: KindClaim, Node: s.opts.Node, Evp: id}))
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if e.hdr.Holder != s.opts.Node {
		s.del(ctx, Key(Handle{Kind: KindClaim, Node: s.opts.Node, Evp: id}))
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
	h.Pending = 0
	h.Session = s.session.Load()
	h.Token++
	_, err = s.putBytes(ctx, Key(Handle{Kind: KindEnvelope, Evp: id}), encodeRecord(&h, e.Data), PutOptions{IfMatch: e.Version})
	if s.isPrecondition(err) || s.isNotFound(err) {
		return false, nil // another node was quicker
	}
	return err == nil, err
}

// Takeover finds the nodes whose heartbeat expired and claims their
// envelopes for this node, sharing the work with any other survivor that
// does the same: each envelope is claimed by one conditional write, which
// exactly one survivor wins. It returns the envelopes this node took. A
// dead node is forgotten once all its envelopes are taken. The cost is one
// listing of the nodes and one read per node, plus, for each dead node, a
// listing of its claim pointers.
func (s *Store) Takeover(ctx context.Context) ([]EvpID, error) {
	if err := s.check("takeover"); err != nil {
		return nil, err
	}
	if _, err := s.alive(); err != nil {
		return nil, err // superseded: this process claims nothing more
	}
	var names []string
	err := s.list(ctx, Key(Handle{Kind: KindNode, Node: ""}), func(keys []string) error {
		for _, k := range keys {
			if h, err := ParseKey(k); err == nil && h.Kind == KindNode && h.Node != s.opts.Node {
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
	prefix := Key(Handle{Kind: KindClaim, Node: n})
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
		c, err := s.ClaimLoaded(ctx, e, s.opts.LeaseDuration)
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
			h, err := ParseKey(k)
			var ids []EvpID
			switch {
			case err != nil || h.Kind != KindClaim:
				// Not a claim pointer: nothing to take, and removed below.
			case h.Msg != 0:
				if ids, err = s.Envelopes(ctx, h.Msg); err != nil {
					return err
				}
				if len(ids) == 0 {
					// Its transaction may still be open: keep the pointer.
					if st, err := s.reservationState(ctx, h.Msg); err != nil || st == stateOpen {
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
	if remaining == 0 && rec != nil {
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
	key := Key(Handle{Kind: KindNode, Node: n})
	if s.del(ctx, key) != nil {
		return
	}
	var keys []string
	err = s.retry(ctx, func() error {
		var err error
		keys, _, err = s.b.List(ctx, Key(Handle{Kind: KindClaim, Node: n}), "", 1)
		return err
	})
	if err == nil && len(keys) == 0 {
		return
	}
	now := s.now()
	back := *cur
	back.Beat, back.Expires = now.UTC(), now.Add(max(cur.Expires.Sub(cur.Beat), s.opts.NodeTTL)).UTC()
	b, _ := json.Marshal(&back)
	s.putBytes(ctx, key, b, PutOptions{IfNoneMatch: true})
}

// NodeOptions configure RunNode.
type NodeOptions struct {
	// ScanInterval is how often the node looks for dead nodes to take
	// over. Default: Options.HeartbeatInterval. Takeover then happens at
	// most ScanInterval after a dead node's heartbeat expires.
	ScanInterval time.Duration
	// OnTakeover, if set, is called with the envelopes this node took
	// over, for instance to hand them to the MTA's scheduler.
	OnTakeover func(ids []EvpID)
	// OnError, if set, is called with errors of the loop, which goes on.
	OnError func(err error)
}

// RunNode keeps this node alive and takes over dead nodes' envelopes until
// ctx is done. Its idle cost is one heartbeat write per
// Options.HeartbeatInterval and, per ScanInterval, one listing of the nodes
// and one read of each: bounded and independent of the queue's size.
func (s *Store) RunNode(ctx context.Context, opts *NodeOptions) error {
	var o NodeOptions
	if opts != nil {
		o = *opts
	}
	if o.ScanInterval <= 0 {
		o.ScanInterval = s.opts.HeartbeatInterval
	}
	closed := false
	report := func(err error) {
		if errors.Is(err, ErrClosed) {
			closed = true
			return
		}
		if err != nil && o.OnError != nil && ctx.Err() == nil {
			o.OnError(err)
		}
	}
	report(s.Heartbeat(ctx))
	beat := time.NewTicker(s.opts.HeartbeatInterval)
	defer beat.Stop()
	scan := time.NewTicker(o.ScanInterval)
	defer scan.Stop()
	for !closed {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-beat.C:
			report(s.Heartbeat(ctx))
		case <-scan.C:
			if _, err := s.alive(); err != nil {
				continue // superseded: the heartbeats report it
			}
			ids, err := s.Takeover(ctx)
			report(err)
			if len(ids) > 0 && o.OnTakeover != nil {
				o.OnTakeover(ids)
			}
		}
	}
	return &Error{Op: "run node", ID: s.opts.Node, Kind: ErrClosed}
}
