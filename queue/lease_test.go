package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// TestResumeEnvelope: a Claim rebuilt from a loaded envelope and a token writes
// only while this process holds that very lease, unexpired.
func TestResumeEnvelope(t *testing.T) {
	ctx := t.Context()
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	name := fmt.Sprintf("lease-test-claimheld-%d", time.Now().UnixNano())
	a, err := mem.Open(ctx, name, &mem.Options{Queue: queue.Options{Node: "a", Clock: clock}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := mem.Open(ctx, name, &mem.Options{Queue: queue.Options{Node: "b", Clock: clock}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := tx.AddEnvelope([]byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.WriteContent(ctx, strings.NewReader("content")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := a.Claim(ctx, id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tok := c.Lease().Token
	load := func() *queue.Envelope {
		t.Helper()
		e, err := a.Load(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}

	// The right token rebuilds the claim, which writes.
	e := load()
	c2, err := a.ResumeEnvelope(e, tok)
	if err != nil {
		t.Fatalf("ResumeEnvelope with the claim's token: %v", err)
	}
	if err := c2.Update(ctx, []byte("two")); err != nil {
		t.Fatal(err)
	}
	// The envelope read before that write is stale: the rebuilt claim is
	// fenced by its version.
	if c3, err := a.ResumeEnvelope(e, tok); err != nil {
		t.Fatal(err)
	} else if err := c3.Update(ctx, []byte("stale")); !errors.Is(err, queue.ErrConflict) {
		t.Fatalf("update through a claim of a stale read: %v, want ErrConflict", err)
	}
	// A wrong token, another node, an expired lease: ErrLeaseLost.
	if _, err := a.ResumeEnvelope(load(), tok+1); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("wrong token: %v, want ErrLeaseLost", err)
	}
	if _, err := b.ResumeEnvelope(load(), tok); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("another node: %v, want ErrLeaseLost", err)
	}
	advance(2 * time.Minute)
	if _, err := a.ResumeEnvelope(load(), tok); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("expired lease: %v, want ErrLeaseLost", err)
	}
	if got := string(load().Data); got != "two" {
		t.Fatalf("data %q, want %q", got, "two")
	}
}

// counted counts the requests a Backend serves, by operation.
type counted struct {
	driver.Backend
	mu sync.Mutex
	n  map[string]int
}

func (c *counted) add(op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = make(map[string]int)
	}
	c.n[op]++
}

func (c *counted) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.n)
}

func (c *counted) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	c.add("get")
	return c.Backend.Get(ctx, key)
}

func (c *counted) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	switch {
	case o.IfMatch != "":
		c.add("put if-match")
	case o.IfNoneMatch:
		c.add("put if-none-match")
	default:
		c.add("put")
	}
	return c.Backend.Put(ctx, key, r, o)
}

func (c *counted) Delete(ctx context.Context, key string) error {
	c.add("delete")
	return c.Backend.Delete(ctx, key)
}

func (c *counted) List(ctx context.Context, p, a string, l int) ([]string, bool, error) {
	c.add("list")
	return c.Backend.List(ctx, p, a, l)
}

// TestHeartbeatSessions: the first heartbeat of a process reads the
// node's record and starts a session above the recorded one, even on a
// clock an hour behind; every later heartbeat is one compare-and-swap.
// The request counts are exact.
func TestHeartbeatSessions(t *testing.T) {
	ctx := t.Context()
	name := fmt.Sprintf("lease-test-sessions-%d", time.Now().UnixNano())
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	session := func() uint64 {
		t.Helper()
		rc, _, err := mem.OpenBackend(name).Get(ctx, "node/n")
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		var rec struct{ Session uint64 }
		if err := json.NewDecoder(rc).Decode(&rec); err != nil {
			t.Fatal(err)
		}
		return rec.Session
	}
	var sessions []uint64
	for i, skew := range []time.Duration{0, -time.Hour, time.Hour, -2 * time.Hour} {
		c := &counted{Backend: mem.OpenBackend(name)}
		s, err := queue.New(c, &queue.Options{Node: "n", Clock: func() time.Time { return now.Add(skew) }})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for range 3 {
			if err := s.Heartbeat(ctx); err != nil {
				t.Fatalf("process %d: Heartbeat: %v", i, err)
			}
		}
		first := map[string]int{"get": 1, "put if-match": 3}
		if i == 0 {
			first = map[string]int{"get": 1, "put if-none-match": 1, "put if-match": 2}
		}
		if got := c.counts(); !maps.Equal(got, first) {
			t.Errorf("process %d: three heartbeats made %v, want %v", i, got, first)
		}
		sessions = append(sessions, session())
	}
	if !slices.IsSorted(sessions) || len(slices.Compact(slices.Clone(sessions))) != len(sessions) {
		t.Fatalf("the sessions of successive processes %v do not grow", sessions)
	}
	// A record that does not parse does not stop a new process.
	if _, err := mem.OpenBackend(name).Put(ctx, "node/n", strings.NewReader("{"), &driver.PutOptions{Size: 1}); err != nil {
		t.Fatal(err)
	}
	s, err := queue.New(mem.OpenBackend(name), &queue.Options{Node: "n", Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Heartbeat(ctx); err != nil {
		t.Fatalf("Heartbeat over a corrupt record: %v", err)
	}
}
