package queue_test

import (
	"context"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// commitAlone commits n messages of one envelope each with CommitContent,
// flushes s, and returns their envelopes.
func commitAlone(t *testing.T, s *queue.Store, n int) []queue.EvpID {
	t.Helper()
	var ids []queue.EvpID
	for range n {
		tx, id := aloneTx(t, s)
		if _, err := tx.CommitContent(t.Context(), strings.NewReader("hello")); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := s.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	return ids
}

// deliver claims and deletes every envelope of due.
func deliver(t *testing.T, s *queue.Store, due []*queue.Envelope) {
	t.Helper()
	for _, e := range due {
		c, err := s.ClaimEnvelope(t.Context(), e, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestDueGroupShared: the commits of a moment share one due pointer, the
// group, which every node's due scan follows. A node that did not deliver
// the envelopes other nodes delivered from it lists the group's range of
// IDs once it finds one gone, instead of reading each; the scan after the last
// delivery removes the group.
func TestDueGroupShared(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	ca := bench.Count(raw)
	a, err := queue.New(ca.Backend(), &queue.Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b := node(t, raw, "b")
	const n = 20
	ids := commitAlone(t, a, n)
	due := keysUnder(t, raw, "due/")
	if len(due) != 1 || !strings.Contains(due[0], "/g") {
		t.Fatalf("due pointers %v, want one group for %d commits", due, n)
	}
	got, err := b.Due(ctx, n/2)
	if err != nil || len(got) != n/2 {
		t.Fatalf("b.Due = %d envelopes, %v; want %d", len(got), err, n/2)
	}
	deliver(t, b, got)
	before := ca.Counts()
	rest, err := a.Due(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if len(rest) != n/2 {
		t.Fatalf("a.Due = %d envelopes after b delivered %d of %d", len(rest), n/2, n)
	}
	// The group (cached), a read that finds an envelope gone, a
	// listing, and a read of each envelope left.
	if c := ca.Counts().Sub(before); c.Get > n/2+1 || c.List != 2 {
		t.Errorf("a's due scan made %+v, want a listing of the due pointers and one of the group, and %d reads", c, n/2+1)
	}
	deliver(t, a, rest)
	if got, err := b.Due(ctx, n); err != nil || len(got) != 0 {
		t.Fatalf("Due after every delivery = %d envelopes, %v", len(got), err)
	}
	b.Flush(ctx)
	if due := keysUnder(t, raw, "due/"); len(due) != 0 {
		t.Fatalf("due pointers %v left after every delivery", due)
	}
	if keys := keysUnder(t, raw, "evp/"); len(keys) != 0 || len(ids) != n {
		t.Fatalf("envelopes %v left", keys)
	}
}

// TestDueGroupRescheduled: an envelope deferred since its commit has a
// pointer of its own, and its group's entry is stale: the group goes once
// no entry is live, and the envelope is due at its new time, once.
func TestDueGroupRescheduled(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	clk := &fuzzClock{now: time.Now()}
	a := clocked(t, raw, "a", clk, 0)
	defer a.Close()
	ids := commitAlone(t, a, 2)
	got, err := a.Due(ctx, 10)
	if err != nil || len(got) != 2 {
		t.Fatalf("Due = %d envelopes, %v", len(got), err)
	}
	for _, e := range got {
		c, err := a.ClaimEnvelope(ctx, e, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if e.ID == ids[0] {
			err = c.Defer(ctx, nil, clk.Now().Add(time.Hour))
		} else {
			err = c.Delete(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	a.Flush(ctx)
	if got, err := a.Due(ctx, 10); err != nil || len(got) != 0 {
		t.Fatalf("Due before the deferred time = %d envelopes, %v", len(got), err)
	}
	a.Flush(ctx)
	due := keysUnder(t, raw, "due/")
	if len(due) != 1 || strings.Contains(due[0], "/g") {
		t.Fatalf("due pointers %v, want the deferred envelope's own alone", due)
	}
	clk.Advance(2 * time.Hour)
	got, err = a.Due(ctx, 10)
	if err != nil || len(got) != 1 || got[0].ID != ids[0] {
		t.Fatalf("Due at the deferred time = %v, %v", got, err)
	}
}

// TestDueGroupCorrupt: a group object that does not parse costs its
// messages their place in due scans, never an error of the scan, and
// Stats counts them as unscheduled; a reader that finds such a message
// still loads it.
func TestDueGroupCorrupt(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	a := node(t, raw, "a")
	ids := commitAlone(t, a, 1)
	due := keysUnder(t, raw, "due/")
	if len(due) != 1 {
		t.Fatalf("due pointers %v", due)
	}
	if _, err := raw.Put(ctx, due[0], strings.NewReader("mxq-due/1 1\nnot an id here!!\n"), &driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	b := node(t, raw, "b")
	if got, err := b.Due(ctx, 10); err != nil || len(got) != 0 {
		t.Fatalf("Due over a corrupt group = %v, %v", got, err)
	}
	st, err := b.Stats(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Due.Unscheduled != 1 || st.Due.Now != 0 {
		t.Fatalf("Stats.Due = %+v, want the message unscheduled", st.Due)
	}
	if _, err := b.Load(ctx, ids[0]); err != nil {
		t.Fatalf("Load of a message whose group is corrupt: %v", err)
	}
	if keys := keysUnder(t, raw, "due/"); len(keys) != 1 {
		t.Fatalf("the corrupt group is gone: %v", keys)
	}
}

// dueOnce reports whether another node's due scan returns exactly ids.
func dueOnce(t *testing.T, b *queue.Store, ids ...queue.EvpID) {
	t.Helper()
	got, err := b.Due(t.Context(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ids) {
		t.Fatalf("Due = %d envelopes, want %d", len(got), len(ids))
	}
	for _, e := range got {
		if !slices.Contains(ids, e.ID) {
			t.Fatalf("Due returned %v, want %v", e.ID, ids)
		}
	}
}

// TestDueGroupRetries: a commit that leaves its due pointer to a group,
// and fails, keeps the pointer for the commit that follows, which writes
// it: after WriteContent and Commit, or with a second envelope added.
func TestDueGroupRetries(t *testing.T) {
	for _, c := range []struct {
		name   string
		second bool
	}{{"WriteContent and Commit", false}, {"a second envelope", true}} {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			g := &gated{Backend: mem.OpenBackend("")}
			a := node(t, g, "a")
			tx, id := aloneTx(t, a)
			g.refusePrefix("evp/")
			if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err == nil {
				t.Fatal("CommitContent succeeded with its envelope refused")
			}
			g.refusePrefix("")
			want := []queue.EvpID{id}
			if c.second {
				id2, err := tx.AddEnvelope([]byte("rcpt2"))
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, id2)
				if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
					t.Fatal(err)
				}
			} else {
				if _, err := tx.WriteContent(ctx, strings.NewReader("hello")); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}
			a.Flush(ctx)
			dueOnce(t, node(t, g.Backend, "b"), want...)
		})
	}
}

// TestDueGroupFlush: Flush waits for a group that the background is
// writing, and a group whose write failed is written again later, before
// the bits it carries.
func TestDueGroupFlush(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	a := node(t, g, "a")
	g.mu.Lock()
	g.onPut = func(key string) {
		if strings.HasPrefix(key, "due/") {
			time.Sleep(300 * time.Millisecond)
		}
	}
	g.mu.Unlock()
	tx, id := aloneTx(t, a)
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond) // the group's write is under way
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if keys := keysUnder(t, g.Backend, "due/"); len(keys) != 1 {
		t.Fatalf("due pointers %v when Flush returned, want the group", keys)
	}
	g.mu.Lock()
	g.onPut = nil
	g.mu.Unlock()

	tx, id2 := aloneTx(t, a)
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	g.refusePrefix("due/")
	a.Flush(ctx)
	g.refusePrefix("")
	if c, _ := rawBits(t, g.Backend, tx.ID()); c {
		t.Fatal("the bit is stored without a due pointer")
	}
	for range 100 {
		if c, _ := rawBits(t, g.Backend, tx.ID()); c {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c, _ := rawBits(t, g.Backend, tx.ID()); !c {
		t.Fatal("the failed group was not written again within 5 s")
	}
	dueOnce(t, node(t, g.Backend, "b"), id, id2)
}

// overlapGroups is a Backend whose reads of due groups wait, up to a
// second, for another such read to be in flight, and records the most at
// once.
type overlapGroups struct {
	driver.Backend
	mu       sync.Mutex
	cur, max int
	arrived  chan struct{}
}

func (o *overlapGroups) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	if strings.HasPrefix(key, "due/") && strings.Contains(key, "/g") {
		o.mu.Lock()
		o.cur++
		o.max = max(o.max, o.cur)
		o.mu.Unlock()
		select {
		case o.arrived <- struct{}{}:
		case <-o.arrived:
		case <-time.After(time.Second):
		}
		defer func() {
			o.mu.Lock()
			o.cur--
			o.mu.Unlock()
		}()
	}
	return o.Backend.Get(ctx, key)
}

// TestStatsReadsGroupsInParallel: Stats reads the due groups of a queue
// side by side, not one after the other, and counts their entries.
func TestStatsReadsGroupsInParallel(t *testing.T) {
	raw := mem.OpenBackend("")
	a := node(t, raw, "a")
	for range 4 {
		commitAlone(t, a, 2) // a group each: commitAlone flushes
	}
	if due := keysUnder(t, raw, "due/"); len(due) != 4 {
		t.Fatalf("due pointers %v, want 4 groups", due)
	}
	o := &overlapGroups{Backend: raw, arrived: make(chan struct{})}
	b := node(t, o, "b")
	st, err := b.Stats(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Due.Now != 8 {
		t.Errorf("Stats counted %d envelopes due now, want 8: %+v", st.Due.Now, st.Due)
	}
	if o.max < 2 {
		t.Errorf("Stats read at most %d due group at a time, want them read in parallel", o.max)
	}
}
