package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// nodeRecord is the heartbeat at layout.Node.
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
	key := layout.Key(layout.Handle{Kind: layout.Node, Node: s.opts.Node})
	session := s.session.Load()
	s.beat.mu.Lock()
	ver := s.beat.version
	s.beat.mu.Unlock()
	var floor uint64 // the highest session seen in the record
	for range maxBeatAttempts {
		put := driver.PutOptions{IfMatch: ver}
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
			put = driver.PutOptions{IfNoneMatch: true}
			if rec != nil {
				put = driver.PutOptions{IfMatch: v}
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

// node returns the heartbeat of the named node, nil if it has none or
// one that does not parse. A heartbeat that showed
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
	if errors.Is(err, ErrCorrupt) {
		// An unreadable heartbeat counts as none: the node's leases are
		// held until they expire, and a live process of the node
		// replaces the record at its next heartbeat. One bad record
		// must not stop every takeover and claim that reads it.
		rec, err = nil, nil
	}
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
	key := layout.Key(layout.Handle{Kind: layout.Node, Node: n})
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
