package queue_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
)

// TestClaimHeld: a Claim rebuilt from a loaded envelope and a token writes
// only while this process holds that very lease, unexpired.
func TestClaimHeld(t *testing.T) {
	ctx := t.Context()
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	name := "lease-test-claimheld"
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
	c2, err := a.ClaimHeld(e, tok)
	if err != nil {
		t.Fatalf("ClaimHeld with the claim's token: %v", err)
	}
	if err := c2.Update(ctx, []byte("two")); err != nil {
		t.Fatal(err)
	}
	// The envelope read before that write is stale: the rebuilt claim is
	// fenced by its version.
	if c3, err := a.ClaimHeld(e, tok); err != nil {
		t.Fatal(err)
	} else if err := c3.Update(ctx, []byte("stale")); !errors.Is(err, queue.ErrConflict) {
		t.Fatalf("update through a claim of a stale read: %v, want ErrConflict", err)
	}
	// A wrong token, another node, an expired lease: ErrLeaseLost.
	if _, err := a.ClaimHeld(load(), tok+1); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("wrong token: %v, want ErrLeaseLost", err)
	}
	if _, err := b.ClaimHeld(load(), tok); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("another node: %v, want ErrLeaseLost", err)
	}
	advance(2 * time.Minute)
	if _, err := a.ClaimHeld(load(), tok); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("expired lease: %v, want ErrLeaseLost", err)
	}
	if got := string(load().Data); got != "two" {
		t.Fatalf("data %q, want %q", got, "two")
	}
}
