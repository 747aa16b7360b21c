package queue_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/file"
	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/driver/drivertest"
)

// storages are the adapters the fault tests run on: each opens a new
// Backend over one storage, as another process would.
var storages = []struct {
	name string
	open func(t *testing.T) func() driver.Backend
}{
	{"mem", func(t *testing.T) func() driver.Backend {
		name := fmt.Sprintf("faults-%s-%d", t.Name(), time.Now().UnixNano())
		return func() driver.Backend { return mem.OpenBackend(name) }
	}},
	{"file", func(t *testing.T) func() driver.Backend {
		dir := t.TempDir()
		return func() driver.Backend {
			s, err := file.Open(t.Context(), dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			return s.Backend() // s holds nothing else: no need to close it
		}
	}},
}

// faultyStore returns a Store over a Faults decorator of b.
func faultyStore(t *testing.T, b driver.Backend, opts queue.Options) (*queue.Store, *drivertest.Faults) {
	t.Helper()
	f := drivertest.New(b, 1)
	s, err := queue.New(f, &opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Lift()
		s.Close()
	})
	return s, f
}

// commitMsg commits a message with one envelope per datum.
func commitMsg(t *testing.T, s *queue.Store, content string, data ...string) (queue.MsgID, []queue.EvpID) {
	t.Helper()
	ctx := t.Context()
	tx, err := s.Begin(ctx)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	var ids []queue.EvpID
	for _, d := range data {
		id, err := tx.AddEnvelope([]byte(d))
		if err != nil {
			t.Fatalf("AddEnvelope: %v", err)
		}
		ids = append(ids, id)
	}
	if _, err := tx.WriteContent(ctx, strings.NewReader(content)); err != nil {
		t.Fatalf("WriteContent: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return tx.ID(), ids
}

func walkIDs(t *testing.T, s *queue.Store) []queue.EvpID {
	t.Helper()
	var ids []queue.EvpID
	for id, err := range s.Walk(t.Context()) {
		if err != nil {
			t.Fatalf("Walk: %v", err)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func content(t *testing.T, s *queue.Store, m queue.MsgID) string {
	t.Helper()
	rc, err := s.OpenContent(t.Context(), m)
	if err != nil {
		t.Fatalf("OpenContent(%v): %v", m, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading the content of %v: %v", m, err)
	}
	return string(b)
}

// storeCall is one call of the Store's API, made during an outage.
type storeCall struct {
	name string
	fn   func(ctx context.Context) error
}

// TestOutage: while the store is out, every call of the Store returns
// within its deadline with an error: ErrUnavailable when the store fails
// fast, and at the caller's deadline when requests hang. Once the outage
// is lifted the same Store works again, and nothing committed before it
// is lost.
func TestOutage(t *testing.T) {
	for _, st := range storages {
		for _, hang := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/hang=%v", st.name, hang), func(t *testing.T) {
				testOutage(t, st.open(t), hang)
			})
		}
	}
}

func testOutage(t *testing.T, open func() driver.Backend, hang bool) {
	ctx := t.Context()
	s, f := faultyStore(t, open(), queue.Options{Node: "node-a", Retries: 1})

	// Before the outage: one message acknowledged, one envelope of it
	// claimed, and two transactions open.
	m, ids := commitMsg(t, s, "before the outage", "x", "y", "z")
	c, err := s.Claim(ctx, ids[0], time.Hour)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	loaded, err := s.Load(ctx, ids[1])
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if err := s.Heartbeat(ctx); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	txCommit, err := s.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pending, _ := txCommit.AddEnvelope([]byte("pending"))
	if _, err := txCommit.WriteContent(ctx, strings.NewReader("pending")); err != nil {
		t.Fatal(err)
	}
	txWrite, err := s.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	txWrite.AddEnvelope([]byte("w"))
	// Wait for the background writes of the commit and the claim, so
	// that they do not race the outage.
	waitQuiet(t, f)

	calls := []storeCall{
		{"Begin and Commit", func(ctx context.Context) error {
			// Begin makes no request once the Store has a block of IDs.
			tx, err := s.Begin(ctx)
			if err != nil {
				return err
			}
			tx.AddEnvelope([]byte("x"))
			return tx.Commit(ctx)
		}},
		{"Tx.WriteContent", func(ctx context.Context) error {
			_, err := txWrite.WriteContent(ctx, strings.NewReader("during"))
			return err
		}},
		{"Tx.Commit", func(ctx context.Context) error { return txCommit.Commit(ctx) }},
		{"Load", func(ctx context.Context) error { _, err := s.Load(ctx, ids[1]); return err }},
		{"OpenContent", func(ctx context.Context) error {
			rc, err := s.OpenContent(ctx, m)
			if err == nil {
				_, err = io.ReadAll(rc)
				rc.Close()
			}
			return err
		}},
		{"Envelopes", func(ctx context.Context) error { _, err := s.Envelopes(ctx, m); return err }},
		{"Walk", func(ctx context.Context) error {
			for _, err := range s.Walk(ctx) {
				if err != nil {
					return err
				}
			}
			return nil
		}},
		{"WalkPage", func(ctx context.Context) error { _, err := s.WalkPage(ctx, "", 10); return err }},
		{"Due", func(ctx context.Context) error { _, err := s.Due(ctx, 10); return err }},
		{"Claim", func(ctx context.Context) error { _, err := s.Claim(ctx, ids[2], time.Minute); return err }},
		{"ClaimEnvelope", func(ctx context.Context) error { _, err := s.ClaimEnvelope(ctx, loaded, time.Minute); return err }},
		{"Resume", func(ctx context.Context) error { _, err := s.Resume(ctx, ids[0]); return err }},
		{"Claim.Update", func(ctx context.Context) error { return c.Update(ctx, []byte("x2")) }},
		{"Claim.Defer", func(ctx context.Context) error { return c.Defer(ctx, []byte("x3"), time.Now().Add(time.Hour)) }},
		{"Claim.Renew", func(ctx context.Context) error { return c.Renew(ctx, time.Hour) }},
		{"Claim.Release", func(ctx context.Context) error { return c.Release(ctx) }},
		{"Claim.Delete", func(ctx context.Context) error { return c.Delete(ctx) }},
		{"AddEnvelope", func(ctx context.Context) error { _, err := s.AddEnvelope(ctx, m, []byte("bounce")); return err }},
		{"DeleteEnvelope", func(ctx context.Context) error { return s.DeleteEnvelope(ctx, ids[2]) }},
		{"DeleteMessage", func(ctx context.Context) error { return s.DeleteMessage(ctx, m) }},
		{"Quarantine", func(ctx context.Context) error { return s.Quarantine(ctx, m, "test") }},
		{"Quarantined", func(ctx context.Context) error { _, err := s.Quarantined(ctx); return err }},
		{"Heartbeat", func(ctx context.Context) error { return s.Heartbeat(ctx) }},
		{"Takeover", func(ctx context.Context) error { _, err := s.Takeover(ctx); return err }},
		{"Sweep", func(ctx context.Context) error { _, err := s.Sweep(ctx); return err }},
		{"Ping", func(ctx context.Context) error { return s.Ping(ctx) }},
	}

	f.Outage(hang)
	deadline := 2 * time.Second
	if hang {
		deadline = 200 * time.Millisecond
	}
	// The calls run at once: each must return by its deadline (with a
	// generous slack that only catches a hang).
	var wg sync.WaitGroup
	errs := make([]error, len(calls))
	returned := make([]chan struct{}, len(calls))
	for i, call := range calls {
		returned[i] = make(chan struct{})
		wg.Go(func() {
			defer close(returned[i])
			cctx, cancel := context.WithTimeout(ctx, deadline)
			defer cancel()
			errs[i] = call.fn(cctx)
		})
	}
	limit := time.After(deadline + 5*time.Second)
	for i, call := range calls {
		select {
		case <-returned[i]:
		case <-limit:
			t.Fatalf("%s did not return within its deadline of %v in the outage", call.name, deadline)
		}
	}
	wg.Wait()
	for i, call := range calls {
		err := errs[i]
		switch {
		case err == nil:
			t.Errorf("%s succeeded in the outage", call.name)
		case hang && errors.Is(err, context.DeadlineExceeded):
		case !errors.Is(err, queue.ErrUnavailable):
			t.Errorf("%s in the outage: %v, want ErrUnavailable", call.name, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// The outage is lifted: the same Store works again.
	f.Lift()
	got := walkIDs(t, s)
	for _, id := range ids {
		if !slices.Contains(got, id) {
			t.Fatalf("after the outage, Walk lacks %v, committed before it: %v", id, got)
		}
	}
	for _, id := range got {
		if !slices.Contains(ids, id) && id != pending {
			t.Fatalf("after the outage, Walk yields %v, which nobody committed", id)
		}
	}
	if got := content(t, s, m); got != "before the outage" {
		t.Fatalf("content after the outage: %q", got)
	}
	if err := c.Update(ctx, []byte("x2")); err != nil {
		t.Fatalf("Claim.Update after the outage: %v", err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatalf("Claim.Delete after the outage: %v", err)
	}
	m2, ids2 := commitMsg(t, s, "after the outage", "a")
	if got := content(t, s, m2); got != "after the outage" {
		t.Fatalf("content of a message committed after the outage: %q", got)
	}
	c2, err := s.Claim(ctx, ids2[0], time.Minute)
	if err != nil {
		t.Fatalf("Claim after the outage: %v", err)
	}
	if err := c2.Defer(ctx, []byte("later"), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("Claim.Defer after the outage: %v", err)
	}
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatalf("Sweep after the outage: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping after the outage: %v", err)
	}
	t.Logf("%d requests, %d faults injected", f.Requests(""), f.Injected())
}

// waitQuiet waits until f has seen no request for a while: the Store's
// background writes are done.
func waitQuiet(t *testing.T, f *drivertest.Faults) {
	t.Helper()
	if !f.WaitQuiet(20*time.Millisecond, 4*time.Second) {
		t.Fatal("the Store's background requests do not end")
	}
}

// TestSlowStore: with latency on every request, every call still
// succeeds within its timeout, and makes the same requests as on a fast
// store: latency costs time, never a retry, a timeout or a failure. Only
// "did not time out" is asserted of the timings; they are logged.
func TestSlowStore(t *testing.T) {
	const latency = 10 * time.Millisecond
	const opTimeout = 5 * time.Second // far above latency times the requests of one call
	for _, st := range storages {
		t.Run(st.name, func(t *testing.T) {
			var counts [2]map[drivertest.Op]int
			var took [2]time.Duration
			for i, d := range []time.Duration{0, latency} {
				start := time.Now()
				counts[i] = slowWorkload(t, st.open(t)(), d, opTimeout)
				took[i] = time.Since(start)
			}
			for _, op := range []drivertest.Op{drivertest.OpGet, drivertest.OpPut, drivertest.OpDelete, drivertest.OpList, drivertest.OpStat, drivertest.OpPing} {
				if counts[0][op] != counts[1][op] {
					t.Errorf("%s requests: %d on a fast store, %d with %v of latency", op, counts[0][op], counts[1][op], latency)
				}
			}
			t.Logf("requests %v; %v fast, %v with %v per request", counts[1], took[0], took[1], latency)
		})
	}
}

// slowWorkload runs a fixed sequence of calls on a Store over b with the
// given latency, each bounded by opTimeout, and returns the requests made
// by operation once the Store is quiet.
func slowWorkload(t *testing.T, b driver.Backend, latency, opTimeout time.Duration) map[drivertest.Op]int {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s, f := faultyStore(t, b, queue.Options{Node: "slow", Clock: func() time.Time { return now }})
	f.SetLatency(latency)
	step := func(what string, fn func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
		defer cancel()
		if err := fn(ctx); err != nil {
			t.Fatalf("%s with %v of latency: %v", what, latency, err)
		}
		// The clean-up a delete leaves to a batch, and the other
		// background requests, are counted with their call.
		if err := s.Flush(ctx); err != nil {
			t.Fatalf("Flush after %s: %v", what, err)
		}
		waitQuiet(t, f)
	}
	var ids []queue.EvpID
	var msgs []queue.MsgID
	for i := range 3 {
		step("commit", func(ctx context.Context) error {
			tx, err := s.Begin(ctx)
			if err != nil {
				return err
			}
			for j := range 2 {
				id, err := tx.AddEnvelope(fmt.Appendf(nil, "m%d e%d", i, j))
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
			if _, err := tx.WriteContent(ctx, strings.NewReader("slow")); err != nil {
				return err
			}
			msgs = append(msgs, tx.ID())
			return tx.Commit(ctx)
		})
	}
	var c *queue.Claim
	step("Heartbeat", func(ctx context.Context) error { return s.Heartbeat(ctx) })
	step("Load", func(ctx context.Context) error { _, err := s.Load(ctx, ids[0]); return err })
	step("OpenContent", func(ctx context.Context) error {
		rc, err := s.OpenContent(ctx, msgs[0])
		if err == nil {
			_, err = io.ReadAll(rc)
			rc.Close()
		}
		return err
	})
	step("Due", func(ctx context.Context) error {
		due, err := s.Due(ctx, 100)
		if err == nil && len(due) != len(ids) {
			err = fmt.Errorf("%d due, want %d", len(due), len(ids))
		}
		return err
	})
	step("Claim", func(ctx context.Context) error { var err error; c, err = s.Claim(ctx, ids[0], time.Minute); return err })
	step("Update", func(ctx context.Context) error { return c.Update(ctx, []byte("updated")) })
	step("Defer", func(ctx context.Context) error { return c.Defer(ctx, nil, now.Add(time.Hour)) })
	step("Claim again", func(ctx context.Context) error { var err error; c, err = s.Claim(ctx, ids[1], time.Minute); return err })
	step("Claim.Delete", func(ctx context.Context) error { return c.Delete(ctx) })
	step("DeleteMessage", func(ctx context.Context) error { return s.DeleteMessage(ctx, msgs[2]) })
	step("Walk", func(ctx context.Context) error {
		n := 0
		for _, err := range s.Walk(ctx) {
			if err != nil {
				return err
			}
			n++
		}
		if n != 3 {
			return fmt.Errorf("Walk yields %d envelopes, want 3", n)
		}
		return nil
	})
	step("Sweep", func(ctx context.Context) error { _, err := s.Sweep(ctx); return err })
	step("Ping", func(ctx context.Context) error { return s.Ping(ctx) })
	counts := map[drivertest.Op]int{}
	for _, op := range []drivertest.Op{drivertest.OpGet, drivertest.OpPut, drivertest.OpDelete, drivertest.OpList, drivertest.OpStat, drivertest.OpPing} {
		counts[op] = f.Requests(op)
	}
	if f.Injected() != 0 {
		t.Fatalf("%d faults injected with latency alone", f.Injected())
	}
	return counts
}
