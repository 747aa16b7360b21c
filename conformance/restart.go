package conformance

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// testRestartUnderName: a node whose process dies and restarts under the
// same name keeps every claim the new process makes, whatever the other
// nodes knew of the old process: a heartbeat they cached, one they read
// before the new process's first heartbeat, or a late heartbeat of the
// dead process itself. Each case fixes the order of every step with the
// injected clock and, where the race is inside one call, a hook in the
// backend.
func testRestartUnderName(t *testing.T, mk HarnessMaker) {
	for _, c := range []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"CachedHeartbeat", restartCachedHeartbeat},
		{"ForgottenAtRestart", func(t *testing.T, e *env) { restartForgotten(t, e, true) }},
		{"ForgottenAtRestartThenDead", func(t *testing.T, e *env) { restartForgotten(t, e, false) }},
		{"LateHeartbeat", restartLateHeartbeat},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newEnv(t, mk)) })
	}
}

// restartCachedHeartbeat: node-b has cached the heartbeat of node-a's
// first process when node-a restarts, with a clock 10 s behind, and
// claims an envelope: node-b must not take it through Due, Claim,
// ClaimEnvelope or Takeover. The dead process's claim is free at once.
func restartCachedHeartbeat(t *testing.T, e *env) {
	_, ids := e.commit(e.node("committer"), []byte("c"), "x", "y")
	x, y := ids[0], ids[1]
	a1 := e.node("node-a")
	_, err := a1.Claim(e.ctx, y, time.Hour)
	wantErr(t, "Claim by the first process", err, nil)
	b := e.node("node-b")
	_, err = b.Claim(e.ctx, y, time.Minute) // reads node-a's heartbeat
	wantErr(t, "Claim of an envelope the first process holds", err, queue.ErrConflict)
	loaded, err := b.Load(e.ctx, x)
	wantErr(t, "Load", err, nil)

	// node-a's process dies and a new one starts under its name, on a
	// host whose clock is 10 s behind.
	a2 := e.store(&queue.Options{Node: "node-a", Clock: e.behind(10 * time.Second)})
	cx, err := a2.Claim(e.ctx, x, time.Hour)
	wantErr(t, "Claim by the restarted process", err, nil)
	e.mustNotTake(b, x, cx.Lease(), loaded)
	wantErr(t, "Update by the restarted process", cx.Update(e.ctx, []byte("x2")), nil)

	// Once node-b has read the new heartbeat, the dead process's claim is
	// free: the new process superseded it.
	e.clock.Advance(2 * time.Second)
	_, err = b.Claim(e.ctx, y, time.Minute)
	wantErr(t, "Claim of the dead process's envelope", err, nil)
}

// restartForgotten: node-b takes over the dead node-a and forgets it:
// it reads node-a's heartbeat, expired, and deletes it. Between the read
// and the delete, node-a restarts, writes its first heartbeat, claims a
// due envelope and commits a message claimed for itself (Tx.ClaimOnCommit); the
// delete removes the new heartbeat. No other node may take what the new
// process holds, and once it dies for good, survivors take it all,
// whether or not it wrote another heartbeat (beatsAgain) before it died.
func restartForgotten(t *testing.T, e *env, beatsAgain bool) {
	_, ids := e.commit(e.node("committer"), []byte("c"), "x", "y")
	x, y := ids[0], ids[1]
	a1 := e.node("node-a")
	_, err := a1.Claim(e.ctx, y, time.Hour)
	wantErr(t, "Claim by the first process", err, nil)
	// node-a's first process is dead, and for longer than a lease of
	// the default length: a takeover forgets it.
	e.clock.Advance(time.Minute + 5*time.Minute)

	var a2 *queue.Store
	var cx *queue.Claim
	var z queue.EvpID
	c := e.node("node-c")
	deleted, gap := false, false
	var checkGap func()
	hooked := &hook{Backend: e.backend(), fn: func(op, key string) {
		switch {
		case op == "delete" && strings.HasSuffix(key, "node/node-a") && !deleted:
			deleted = true
			a2 = e.node("node-a")
			var err error
			cx, err = a2.Claim(e.ctx, x, time.Hour)
			wantErr(t, "Claim by the restarted process", err, nil)
			tx, err := a2.Begin(e.ctx)
			wantErr(t, "Begin", err, nil)
			tx.ClaimOnCommit(time.Hour)
			z, _ = tx.AddEnvelope([]byte("z"))
			wantErr(t, "Commit", tx.Commit(e.ctx), nil)
		case deleted && !gap:
			gap = true
			checkGap()
		}
	}}
	// Just after the delete, node-a has no heartbeat at all.
	checkGap = func() { e.mustNotTake(c, x, cx.Lease(), nil) }
	b := e.storeOn(hooked, &queue.Options{Node: "node-b"})
	wantErr(t, "Heartbeat", b.Heartbeat(e.ctx), nil)
	taken, err := b.Takeover(e.ctx)
	wantErr(t, "Takeover", err, nil)
	if !slices.Equal(taken, []queue.EvpID{y}) {
		t.Fatalf("Takeover took %v, want the dead process's %v", taken, y)
	}
	if !deleted {
		t.Fatal("the takeover did not forget node-a, so the race was not run")
	}
	if !gap {
		gap = true
		checkGap()
	}
	lz, err := c.Load(e.ctx, z)
	wantErr(t, "Load", err, nil)
	for _, s := range []*queue.Store{c, b} {
		e.mustNotTake(s, x, cx.Lease(), nil)
		e.mustNotTake(s, z, lz.Lease, lz)
	}
	if beatsAgain {
		// The restarted process's next heartbeat finds its record gone
		// or replaced, and writes it again: it is not an error.
		e.clock.Advance(10 * time.Second)
		wantErr(t, "Heartbeat of the restarted process", a2.Heartbeat(e.ctx), nil)
		e.mustNotTake(c, x, cx.Lease(), nil)
		wantErr(t, "Update by the restarted process", cx.Update(e.ctx, []byte("x2")), nil)
	}
	// node-a's new process dies, before or after its next heartbeat: once
	// no heartbeat of it is left unexpired, survivors take its envelopes,
	// long before their leases expire, the one it committed claimed
	// included, which no due pointer names.
	e.clock.Advance(time.Minute)
	wantErr(t, "Heartbeat", b.Heartbeat(e.ctx), nil)
	wantErr(t, "Heartbeat", c.Heartbeat(e.ctx), nil)
	taken, err = c.Takeover(e.ctx)
	wantErr(t, "Takeover", err, nil)
	slices.Sort(taken)
	want := []queue.EvpID{x, z}
	slices.Sort(want)
	if !slices.Equal(taken, want) {
		t.Fatalf("Takeover after the restarted process died took %v, want %v", taken, want)
	}
}

// restartLateHeartbeat: a heartbeat of node-a's first process lands after
// the restarted process's (a write in flight when the process was killed,
// or a second live process under the same name). The old process learns
// that it is superseded and claims nothing more; node-b takes nothing the
// new process holds, and the old process's claims are free.
func restartLateHeartbeat(t *testing.T, e *env) {
	_, ids := e.commit(e.node("committer"), []byte("c"), "x", "y", "w")
	x, y, w := ids[0], ids[1], ids[2]
	a1 := e.node("node-a")
	_, err := a1.Claim(e.ctx, y, time.Hour)
	wantErr(t, "Claim by the first process", err, nil)
	a2 := e.node("node-a")
	cx, err := a2.Claim(e.ctx, x, time.Hour)
	wantErr(t, "Claim by the restarted process", err, nil)
	e.clock.Advance(20 * time.Second)
	wantErr(t, "late Heartbeat of the first process", a1.Heartbeat(e.ctx), queue.ErrConflict)
	_, err = a1.Claim(e.ctx, w, time.Hour)
	wantErr(t, "Claim by the superseded process", err, queue.ErrConflict)
	b := e.node("node-b")
	e.mustNotTake(b, x, cx.Lease(), nil)
	wantErr(t, "Heartbeat of the restarted process", a2.Heartbeat(e.ctx), nil)
	_, err = b.Claim(e.ctx, y, time.Minute)
	wantErr(t, "Claim of the superseded process's envelope", err, nil)
}

// mustNotTake checks that s neither sees id due nor can claim or take it
// over, and that id is still held under lease. loaded, if not nil, is the
// envelope as read before the holder claimed it, or since.
func (e *env) mustNotTake(s *queue.Store, id queue.EvpID, lease queue.Lease, loaded *queue.Envelope) {
	e.t.Helper()
	due, err := s.Due(e.ctx, 1000)
	wantErr(e.t, "Due", err, nil)
	for _, d := range due {
		if d.ID == id {
			e.t.Fatalf("%s: Due yields %v, which node %s holds (token %d)", s.Node(), id, lease.Holder, lease.Token)
		}
	}
	_, err = s.Claim(e.ctx, id, time.Minute)
	wantErr(e.t, s.Node()+": Claim of an envelope held by "+lease.Holder, err, queue.ErrConflict)
	if loaded != nil {
		_, err = s.ClaimEnvelope(e.ctx, loaded, time.Minute)
		wantErr(e.t, s.Node()+": ClaimEnvelope of an envelope held by "+lease.Holder, err, queue.ErrConflict)
	}
	taken, err := s.Takeover(e.ctx)
	wantErr(e.t, "Takeover", err, nil)
	if slices.Contains(taken, id) {
		e.t.Fatalf("%s: Takeover took %v from the live node %s", s.Node(), id, lease.Holder)
	}
	got, err := s.Load(e.ctx, id)
	wantErr(e.t, "Load", err, nil)
	if got.Lease.Holder != lease.Holder || got.Lease.Token != lease.Token {
		e.t.Fatalf("%v: lease %+v, want it still held by %s with token %d", id, got.Lease, lease.Holder, lease.Token)
	}
}

// behind returns a clock that runs d behind the env's.
func (e *env) behind(d time.Duration) func() time.Time {
	return func() time.Time { return e.clock.Now().Add(-d) }
}

// hook is a Backend that calls fn before every request, with the
// operation ("get", "put", "delete" or "list") and the key (for "list",
// the prefix). It puts steps of other nodes inside one call of a Store.
type hook struct {
	driver.Backend
	fn func(op, key string)
}

func (h *hook) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	h.fn("get", key)
	return h.Backend.Get(ctx, key)
}

func (h *hook) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	h.fn("put", key)
	return h.Backend.Put(ctx, key, r, opts)
}

func (h *hook) Delete(ctx context.Context, key string) error {
	h.fn("delete", key)
	return h.Backend.Delete(ctx, key)
}

func (h *hook) List(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	h.fn("list", prefix)
	return h.Backend.List(ctx, prefix, after, limit)
}
