package conformance

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
)

func runLeaseTests(t *testing.T, mk HarnessMaker) {
	t.Run("ClaimRace", func(t *testing.T) { testClaimRace(t, mk) })
	t.Run("LeaseExpiry", func(t *testing.T) { testLeaseExpiry(t, mk) })
	t.Run("Fencing", func(t *testing.T) { testFencing(t, mk) })
	t.Run("DueSplit", func(t *testing.T) { testDueSplit(t, mk) })
	t.Run("Defer", func(t *testing.T) { testDefer(t, mk) })
	t.Run("NodeTakeover", func(t *testing.T) { testNodeTakeover(t, mk) })
	t.Run("DeleteInterrupted", func(t *testing.T) { testDeleteInterrupted(t, mk) })
	t.Run("NothingStranded", func(t *testing.T) { testNothingStranded(t, mk) })
	t.Run("RestartUnderName", func(t *testing.T) { testRestartUnderName(t, mk) })
}

func (e *env) node(name string) *queue.Store {
	return e.store(&queue.Options{Node: name})
}

// testClaimRace has 2 to 8 nodes race to claim the same envelopes.
func testClaimRace(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	_, ids := e.commit(e.node("committer"), []byte("c"), "a", "b", "c", "d", "e", "f", "g")
	for n := 2; n <= 8; n++ {
		var nodes []*queue.Store
		for i := range n {
			nodes = append(nodes, e.node(fmt.Sprintf("racer-%d-%d", n, i)))
		}
		id := ids[n-2]
		var wins, conflicts int
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, s := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.Claim(e.ctx, id, time.Minute)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins++
				case errors.Is(err, queue.ErrConflict):
					conflicts++
				default:
					t.Errorf("Claim: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 || conflicts != n-1 {
			t.Fatalf("%d nodes racing: %d claims won, %d conflicted; want 1 and %d", n, wins, conflicts, n-1)
		}
	}
}

// testLeaseExpiry: a lease blocks others until it expires; a dead node's
// lease is broken once its heartbeat expires, even before the lease does.
func testLeaseExpiry(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.node("node-a"), e.node("node-b")
	_, ids := e.commit(a, []byte("c"), "x", "y")
	ca, err := a.Claim(e.ctx, ids[0], 5*time.Minute)
	wantErr(t, "Claim", err, nil)
	if l := ca.Lease(); l.Holder != "node-a" || l.Token != 1 {
		t.Fatalf("lease %+v", l)
	}
	_, err = b.Claim(e.ctx, ids[0], time.Minute)
	wantErr(t, "Claim of a held envelope", err, queue.ErrConflict)
	// While a heartbeats, its lease holds until it expires.
	for range 4 {
		e.clock.Advance(20 * time.Second)
		wantErr(t, "Heartbeat", a.Heartbeat(e.ctx), nil)
		_, err = b.Claim(e.ctx, ids[0], time.Minute)
		wantErr(t, "Claim while the holder lives", err, queue.ErrConflict)
	}
	e.clock.Advance(4 * time.Minute) // past the lease
	wantErr(t, "Heartbeat", a.Heartbeat(e.ctx), nil)
	cb, err := b.Claim(e.ctx, ids[0], time.Minute)
	wantErr(t, "Claim of an expired lease", err, nil)
	if l := cb.Lease(); l.Holder != "node-b" || l.Token != 2 {
		t.Fatalf("lease after takeover %+v, want node-b with token 2", l)
	}
	// A dead node loses an unexpired lease once its heartbeat expires.
	_, err = a.Claim(e.ctx, ids[1], time.Hour)
	wantErr(t, "Claim", err, nil)
	e.clock.Advance(2 * time.Minute) // a stops heartbeating
	wantErr(t, "Heartbeat", b.Heartbeat(e.ctx), nil)
	_, err = b.Claim(e.ctx, ids[1], time.Minute)
	wantErr(t, "Claim from a dead node", err, nil)
	// Renew and Release work for the holder.
	cb2, err := b.Resume(e.ctx, ids[1])
	wantErr(t, "Resume", err, nil)
	wantErr(t, "Renew", cb2.Renew(e.ctx, time.Hour), nil)
	wantErr(t, "Release", cb2.Release(e.ctx), nil)
	_, err = a.Claim(e.ctx, ids[1], time.Minute)
	wantErr(t, "Claim after Release", err, nil)
}

// testFencing: a holder whose lease was taken cannot write.
func testFencing(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.node("node-a"), e.node("node-b")
	_, ids := e.commit(a, []byte("c"), "orig")
	stale, err := a.Claim(e.ctx, ids[0], time.Minute)
	wantErr(t, "Claim", err, nil)
	e.clock.Advance(2 * time.Minute)
	wantErr(t, "Heartbeat", a.Heartbeat(e.ctx), nil)
	fresh, err := b.Claim(e.ctx, ids[0], time.Minute)
	wantErr(t, "takeover", err, nil)
	wantErr(t, "Update by the new holder", fresh.Update(e.ctx, []byte("new")), nil)
	for _, c := range []struct {
		name string
		fn   func() error
	}{
		{"Update", func() error { return stale.Update(e.ctx, []byte("stale")) }},
		{"Renew", func() error { return stale.Renew(e.ctx, time.Hour) }},
		{"Release", func() error { return stale.Release(e.ctx) }},
		{"Defer", func() error { return stale.Defer(e.ctx, []byte("stale"), e.clock.Now()) }},
		{"Delete", func() error { return stale.Delete(e.ctx) }},
	} {
		wantErr(t, "stale "+c.name, c.fn(), queue.ErrLeaseLost)
	}
	got, err := b.Load(e.ctx, ids[0])
	wantErr(t, "Load", err, nil)
	if string(got.Data) != "new" || got.Lease.Holder != "node-b" {
		t.Fatalf("after the stale holder's writes: %q held by %q", got.Data, got.Lease.Holder)
	}
	// A plain Update is refused while another node holds the lease.
	wantErr(t, "Update of a held envelope", a.Update(e.ctx, got), queue.ErrConflict)
	_, err = a.Resume(e.ctx, ids[0])
	wantErr(t, "Resume by a non-holder", err, queue.ErrLeaseLost)
	wantErr(t, "Delete by the holder", fresh.Delete(e.ctx), nil)
	_, err = a.Load(e.ctx, ids[0])
	wantErr(t, "Load after Delete", err, queue.ErrNotFound)
}

// testDueSplit has several nodes drain the due envelopes: each is
// processed exactly once and none is lost.
func testDueSplit(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	committer := e.node("committer")
	want := make(map[queue.EvpID]bool)
	for i := range 12 {
		_, ids := e.commit(committer, []byte("c"), fmt.Sprintf("m%d a", i), fmt.Sprintf("m%d b", i), fmt.Sprintf("m%d c", i))
		for _, id := range ids {
			want[id] = true
		}
	}
	// Envelopes of a transaction not yet committed are never due.
	open, err := committer.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	openID, _ := open.AddEnvelope([]byte("open"))
	open.WriteContent(e.ctx, strings.NewReader("x"))
	var mu sync.Mutex
	done := make(map[queue.EvpID]string)
	var wg sync.WaitGroup
	for n := range 4 {
		s := e.node(fmt.Sprintf("worker-%d", n))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				due, err := s.Due(e.ctx, 5)
				if err != nil {
					t.Errorf("Due: %v", err)
					return
				}
				if len(due) == 0 {
					return
				}
				for _, env := range due {
					if env.ID == openID {
						t.Errorf("Due yields %v of an uncommitted transaction", env.ID)
					}
					c, err := s.ClaimEnvelope(e.ctx, env, time.Minute)
					if errors.Is(err, queue.ErrConflict) || errors.Is(err, queue.ErrNotFound) {
						continue // another worker was quicker
					}
					if err != nil {
						t.Errorf("ClaimEnvelope: %v", err)
						return
					}
					mu.Lock()
					if prev, dup := done[env.ID]; dup {
						t.Errorf("%v processed by %s and %s", env.ID, prev, s.Node())
					}
					done[env.ID] = s.Node()
					mu.Unlock()
					if err := c.Delete(e.ctx); err != nil {
						t.Errorf("Delete: %v", err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if len(done) != len(want) {
		t.Fatalf("%d of %d envelopes processed", len(done), len(want))
	}
	per := make(map[string]int)
	for _, n := range done {
		per[n]++
	}
	t.Logf("work split: %v", per)
	wantErr(t, "Commit", open.Commit(e.ctx), nil)
	due, err := committer.Due(e.ctx, 10)
	wantErr(t, "Due", err, nil)
	if len(due) != 1 || due[0].ID != openID {
		t.Fatalf("after the commit Due = %d envelopes, want the committed one", len(due))
	}
}

func testDefer(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.node("node-a")
	_, ids := e.commit(a, []byte("c"), "try 0")
	c, err := a.Claim(e.ctx, ids[0], time.Minute)
	wantErr(t, "Claim", err, nil)
	due, err := a.Due(e.ctx, 10)
	wantErr(t, "Due", err, nil)
	if len(due) != 0 {
		t.Fatalf("a claimed envelope is due: %v", due)
	}
	wantErr(t, "Defer", c.Defer(e.ctx, []byte("try 1"), e.clock.Now().Add(10*time.Minute)), nil)
	due, err = a.Due(e.ctx, 10)
	wantErr(t, "Due", err, nil)
	if len(due) != 0 {
		t.Fatalf("a deferred envelope is due early: %v", due)
	}
	e.clock.Advance(11 * time.Minute)
	due, err = a.Due(e.ctx, 10)
	wantErr(t, "Due", err, nil)
	if len(due) != 1 || string(due[0].Data) != "try 1" || due[0].Lease.Holder != "" {
		t.Fatalf("Due after the delay = %+v", due)
	}
	// The envelope has one pointer of its own now; the message's pointer
	// no longer makes it due.
	n := 0
	for _, k := range e.rawKeys(e.backend(), "due/") {
		if strings.HasSuffix(k, "/"+ids[0].String()) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d due pointers of the envelope, want 1", n)
	}
	c2, err := a.ClaimEnvelope(e.ctx, due[0], time.Minute)
	wantErr(t, "ClaimEnvelope", err, nil)
	wantErr(t, "Delete", c2.Delete(e.ctx), nil)
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	due, err = a.Due(e.ctx, 10)
	wantErr(t, "Due", err, nil)
	if len(due) != 0 {
		t.Fatalf("Due after Delete = %d envelopes", len(due))
	}
	if k := e.rawKeys(e.backend(), "due/"); len(k) != 0 {
		t.Fatalf("due pointers left after the message is gone: %v", k)
	}
}

// testNodeTakeover: a node commits envelopes claimed for itself and dies;
// survivors take them over, and the dead node's next process does not see
// them.
func testNodeTakeover(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.node("node-a")
	var mine []queue.EvpID
	for i := range 5 {
		tx, err := a.Begin(e.ctx)
		wantErr(t, "Begin", err, nil)
		tx.ClaimOnCommit(time.Hour)
		for j := range 2 {
			id, _ := tx.AddEnvelope(fmt.Appendf(nil, "%d/%d", i, j))
			mine = append(mine, id)
		}
		_, err = tx.WriteContent(e.ctx, strings.NewReader("x"))
		wantErr(t, "WriteContent", err, nil)
		wantErr(t, "Commit", tx.Commit(e.ctx), nil)
	}
	slices.Sort(mine)
	// A restart of node-a sees its envelopes, grouped by message.
	a2 := e.node("node-a")
	var owned []queue.EvpID
	for id, err := range a2.Owned(e.ctx) {
		wantErr(t, "Owned", err, nil)
		owned = append(owned, id)
	}
	if !slices.Equal(owned, mine) {
		t.Fatalf("Owned = %v, want %v", owned, mine)
	}
	// Nothing is due and nothing can be taken while node-a lives.
	b, c := e.node("node-b"), e.node("node-c")
	due, err := b.Due(e.ctx, 100)
	wantErr(t, "Due", err, nil)
	if len(due) != 0 {
		t.Fatalf("claimed envelopes are due: %d", len(due))
	}
	taken, err := b.Takeover(e.ctx)
	wantErr(t, "Takeover", err, nil)
	if len(taken) != 0 {
		t.Fatalf("took %v from a live node", taken)
	}
	// node-a dies: its heartbeat expires.
	e.clock.Advance(time.Minute)
	wantErr(t, "Heartbeat", b.Heartbeat(e.ctx), nil)
	wantErr(t, "Heartbeat", c.Heartbeat(e.ctx), nil)
	var all []queue.EvpID
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, s := range []*queue.Store{b, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids, err := s.Takeover(e.ctx)
			if err != nil {
				t.Errorf("Takeover: %v", err)
			}
			mu.Lock()
			all = append(all, ids...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(all)
	if !slices.Equal(all, mine) {
		t.Fatalf("survivors took %v, want each of %v once", all, mine)
	}
	for _, id := range mine {
		env, err := b.Load(e.ctx, id)
		wantErr(t, "Load", err, nil)
		if h := env.Lease.Holder; h != "node-b" && h != "node-c" {
			t.Fatalf("%v held by %q after takeover", id, h)
		}
	}
	// The dead node's stale process cannot write, and its next process
	// owns nothing.
	_, err = a2.Resume(e.ctx, mine[0])
	wantErr(t, "Resume by the dead node", err, queue.ErrLeaseLost)
	a3 := e.node("node-a")
	for id, err := range a3.Owned(e.ctx) {
		t.Fatalf("a restarted dead node owns %v (%v)", id, err)
	}
}

// testDeleteInterrupted: a holder that dies between the tombstone and the
// removal of a deleted envelope leaves nothing behind for long: the next
// node that reads it finishes the delete. The crashing backend offers no
// conditional delete, so the tombstone is the delete, and the crash hits
// the batch that would remove it.
func testDeleteInterrupted(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	// A backend that dies after one write: the tombstone.
	cb := &crashing{Backend: e.backend(), budget: 1 << 30}
	a := e.storeOn(cb, &queue.Options{Node: "node-a", Retries: -1})
	_, ids := e.commit(a, []byte("c"), "only")
	// The message's due group, written after the commit, lands now,
	// not after the crash is armed.
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	c, err := a.Claim(e.ctx, ids[0], time.Minute)
	wantErr(t, "Claim", err, nil)
	// Let the background writes (the claim pointer, the reservation's
	// removal) land before the crash is armed.
	for i := 0; len(e.rawKeys(cb.Backend, "own/")) == 0 || len(e.rawKeys(cb.Backend, "inc/")) != 0; i++ {
		if i == 500 {
			t.Fatal("the background writes of Claim and Commit did not land")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cb.mu.Lock()
	cb.budget = cb.writes + 1
	cb.mu.Unlock()
	wantErr(t, "Delete", c.Delete(e.ctx), nil)
	a.Flush(e.ctx) // the batch crashes
	b := e.node("node-b")
	_, err = b.Load(e.ctx, ids[0])
	wantErr(t, "Load of a tombstone", err, queue.ErrNotFound)
	// The due group that named the envelope goes at the next due scan,
	// which finds no entry of it alive.
	due, err := b.Due(e.ctx, 10)
	wantErr(t, "Due", err, nil)
	if len(due) != 0 {
		t.Fatalf("Due after the delete was finished = %d envelopes", len(due))
	}
	b.Close() // waits for the background clean-up
	raw := e.backend()
	for _, p := range []string{"evp/", "msg/", "due/"} {
		if k := e.rawKeys(raw, p); len(k) != 0 {
			t.Fatalf("%s still has %v after the delete was finished", p, k)
		}
	}
}

// testNothingStranded: every way an envelope leaves a holder keeps it
// reachable, and the holder's pointers go with it.
func testNothingStranded(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.node("node-a"), e.node("node-b")
	raw := e.backend()
	// Claimed at commit, then released: due for anyone.
	tx, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	tx.ClaimOnCommit(time.Hour)
	id, _ := tx.AddEnvelope([]byte("claimed at commit"))
	_, err = tx.WriteContent(e.ctx, strings.NewReader("x"))
	wantErr(t, "WriteContent", err, nil)
	wantErr(t, "Commit", tx.Commit(e.ctx), nil)
	c, err := a.Resume(e.ctx, id)
	wantErr(t, "Resume", err, nil)
	wantErr(t, "Release", c.Release(e.ctx), nil)
	due, err := b.Due(e.ctx, 10)
	wantErr(t, "Due", err, nil)
	if len(due) != 1 || due[0].ID != id {
		t.Fatalf("after Release of an envelope claimed at commit, Due = %d envelopes", len(due))
	}
	// A bounce added to a committed message is due at once.
	bounce, err := b.AddEnvelope(e.ctx, id.MsgID(), []byte("bounce"))
	wantErr(t, "AddEnvelope", err, nil)
	due, err = a.Due(e.ctx, 10)
	wantErr(t, "Due", err, nil)
	found := false
	for _, d := range due {
		found = found || d.ID == bounce
	}
	if !found {
		t.Fatal("a bounce added to a committed message is not due")
	}
	// Claims and their deletes, many times over, leave no pointer.
	for _, x := range []queue.EvpID{id, bounce} {
		c, err := b.Claim(e.ctx, x, time.Minute)
		wantErr(t, "Claim", err, nil)
		wantErr(t, "Release", c.Release(e.ctx), nil)
		c, err = b.Claim(e.ctx, x, time.Minute)
		wantErr(t, "Claim again", err, nil)
		wantErr(t, "Delete", c.Delete(e.ctx), nil)
	}
	// Delete leaves the pointers and the content to be removed in a
	// batch; Flush sends it.
	wantErr(t, "Flush", b.Flush(e.ctx), nil)
	for _, p := range []string{"own/", "due/", "evp/", "msg/"} {
		if k := e.rawKeys(raw, p); len(k) != 0 {
			t.Fatalf("%s still has %v after every envelope was deleted", p, k)
		}
	}
}
