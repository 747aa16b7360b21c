package queue_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
)

// TestHold holds an envelope while another node runs: Due skips it, no
// node can claim it, a node's claim keeps the operator out until it ends,
// and a release makes it due again. Schedule brings a deferred envelope
// forward.
func TestHold(t *testing.T) {
	ctx := t.Context()
	open := memNodes(t)
	mx, op := open("mx"), open("operator")
	tx, err := mx.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := tx.AddEnvelope([]byte("rcpt: a"))
	b, _ := tx.AddEnvelope([]byte("rcpt: b"))
	if _, err := tx.WriteContent(ctx, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	due := func() map[queue.EvpID]bool {
		t.Helper()
		es, err := mx.Due(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		m := map[queue.EvpID]bool{}
		for _, e := range es {
			m[e.ID] = true
		}
		return m
	}

	// A delivery in progress keeps the hold out.
	c, err := mx.Claim(ctx, a, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Hold(ctx, a); !errors.Is(err, queue.ErrConflict) {
		t.Fatalf("hold of a claimed envelope: %v, want ErrConflict", err)
	}
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second is a no-op
		if err := op.Hold(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if e, err := mx.Load(ctx, a); err != nil || !e.Held() {
		t.Fatalf("after hold: held %v, %v", e != nil && e.Held(), err)
	}
	if d := due(); d[a] || !d[b] {
		t.Errorf("due with a on hold: %v, want b only", d)
	}
	if _, err := mx.Claim(ctx, a, 0); !errors.Is(err, queue.ErrConflict) {
		t.Errorf("claim of a held envelope: %v, want ErrConflict", err)
	}
	if err := op.Schedule(ctx, a, time.Time{}); !errors.Is(err, queue.ErrConflict) {
		t.Errorf("schedule of a held envelope: %v, want ErrConflict", err)
	}
	if err := op.ReleaseHold(ctx, a); err != nil {
		t.Fatal(err)
	}
	if e, err := mx.Load(ctx, a); err != nil || e.Held() {
		t.Fatalf("after release: held %v, %v", e != nil && e.Held(), err)
	}
	if d := due(); !d[a] || !d[b] {
		t.Errorf("due after release: %v, want a and b", d)
	}

	// Schedule: a deferred envelope is due again.
	c, err = mx.Claim(ctx, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Defer(ctx, nil, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if d := due(); d[b] {
		t.Fatalf("deferred envelope is due")
	}
	if err := op.Schedule(ctx, b, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if d := due(); !d[b] {
		t.Errorf("scheduled envelope is not due: %v", d)
	}
}
