package queue_test

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// countingBackend counts the requests of a Backend.
type countingBackend struct {
	driver.Backend
	*requests
}

// requests counts requests by operation.
type requests struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *requests) add(op string) {
	c.mu.Lock()
	c.n[op]++
	c.mu.Unlock()
}

func (c *requests) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = map[string]int{}
	return n
}

func (c *countingBackend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	c.add("get")
	return c.Backend.Get(ctx, key)
}

func (c *countingBackend) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	c.add("put")
	return c.Backend.Put(ctx, key, r, o)
}

func (c *countingBackend) Delete(ctx context.Context, key string) error {
	c.add("delete")
	return c.Backend.Delete(ctx, key)
}

func (c *countingBackend) List(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	c.add("list")
	return c.Backend.List(ctx, prefix, after, limit)
}

// TestOperatorCosts counts the requests of the operator's verbs, which
// docs/operations.md quotes: each must stay within its budget.
func TestOperatorCosts(t *testing.T) {
	ctx := t.Context()
	cb := &requests{n: map[string]int{}}
	open := func() *queue.Store {
		s, err := queue.New(&countingBackend{mem.OpenBackend("opscost-" + t.Name()), cb}, &queue.Options{Node: "operator"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := open()
	var ids []queue.EvpID
	for range 10 {
		tx, err := s.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tx.AddEnvelope([]byte("rcpt: a"))
		tx.AddEnvelope([]byte("rcpt: b"))
		tx.WriteContent(ctx, strings.NewReader("hello"))
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tx.Envelopes()...)
	}
	// The first claim of a process writes its heartbeat; count from the
	// second.
	if err := s.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open()
	if err := s.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	sum := func(n map[string]int) (t int) {
		for _, v := range n {
			t += v
		}
		return t
	}
	cb.take()
	for _, tc := range []struct {
		name string
		max  int
		fn   func() error
	}{
		{"hold", 7, func() error { return s.Hold(ctx, ids[0]) }},
		{"release", 4, func() error { return s.ReleaseHold(ctx, ids[0]) }},
		{"schedule", 7, func() error { return s.Schedule(ctx, ids[2], time.Time{}) }},
		{"import of 2 envelopes", 8, func() error {
			_, err := s.Import(ctx, 0x0badf00d, []queue.ImportEnvelope{{ID: 0x0badf00d00000001, Data: []byte("a")}, {ID: 0x0badf00d00000002, Data: []byte("b")}}, strings.NewReader("x"))
			return err
		}},
		{"stats of 11 messages", 6 + 2 + 11, func() error { _, err := s.Stats(ctx, &queue.StatsOptions{Sizes: true}); return err }},
		{"stats without sizes", 6 + 2, func() error { _, err := s.Stats(ctx, nil); return err }},
	} {
		if err := tc.fn(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		s.Close() // waits for background deletes
		n := cb.take()
		t.Logf("%-24s %2d requests: %v", tc.name, sum(n), n)
		if sum(n) > tc.max {
			t.Errorf("%s: %d requests, want at most %d", tc.name, sum(n), tc.max)
		}
		s = open()
		s.Heartbeat(ctx)
		cb.take()
	}
}
