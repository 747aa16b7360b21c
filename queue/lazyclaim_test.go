package queue_test

import (
	"errors"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/layout"
)

func claimKey(node string, id queue.EvpID) string {
	return layout.Key(layout.Handle{Kind: layout.Claim, Node: node, Evp: uint64(id)})
}

// TestClaimPointerWaits: a claim of an envelope that Due returned is one
// request, with no claim pointer, and a delivery that ends within
// claimPointerDelay never writes one; a claim that lasts gets its pointer,
// and its release removes it. A holder that dies before its pointer is
// written loses nothing: once its heartbeat has expired, another node's
// Due returns the envelope.
func TestClaimPointerWaits(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	clk := &fuzzClock{now: time.Now()}
	cnt := bench.Count(raw)
	a, err := queue.New(cnt.Backend(), &queue.Options{Node: "a", Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := queue.New(raw, &queue.Options{Node: "b", Clock: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	commitN(t, a, 3, 1)
	defer queue.SetClaimPointerDelay(time.Hour)()
	due, err := a.Due(ctx, 10)
	if err != nil || len(due) != 3 {
		t.Fatalf("Due = %d envelopes, %v; want 3", len(due), err)
	}

	// A delivery: the claim is one request, and nothing is left.
	if err := a.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	base := cnt.Counts()
	c, err := a.ClaimEnvelope(ctx, due[0], time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if d := cnt.Counts().Sub(base); d.Total() != 1 || d.Put != 1 {
		t.Errorf("the claim of a due envelope made %+v, want one write", d)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if keys := keysUnder(t, raw, "own/"); len(keys) != 0 {
		t.Errorf("claim pointers after a short delivery: %v", keys)
	}

	// A claim that lasts gets its pointer; the release removes it.
	queue.SetClaimPointerDelay(time.Millisecond)
	c, err = a.ClaimEnvelope(ctx, due[1], time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	waitStored(t, raw, claimKey("a", due[1].ID))
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if keys := keysUnder(t, raw, "own/"); len(keys) != 0 {
		t.Errorf("claim pointers after the release: %v", keys)
	}

	// The holder dies before its pointer is written: Takeover does not
	// see the claim, and Due does once the holder's heartbeat expired.
	queue.SetClaimPointerDelay(time.Hour)
	if _, err := a.ClaimEnvelope(ctx, due[2], 0); err != nil {
		t.Fatal(err)
	}
	if keys := keysUnder(t, raw, "own/"); len(keys) != 0 {
		t.Errorf("claim pointers of a young claim: %v", keys)
	}
	got, err := b.Due(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range got {
		if e.ID == due[2].ID {
			t.Fatalf("Due of another node returns %v, claimed by a live node", e.ID)
		}
	}
	clk.Advance(time.Minute)
	if err := b.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if taken, err := b.Takeover(ctx); err != nil || len(taken) != 0 {
		t.Errorf("Takeover = %v, %v; the dead node left no claim pointer", taken, err)
	}
	got, err = b.Due(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	var e *queue.Envelope
	for _, g := range got {
		if g.ID == due[2].ID {
			e = g
		}
	}
	if e == nil {
		t.Fatalf("Due after the holder died = %d envelopes without %v: its mail is stuck", len(got), due[2].ID)
	}
	c, err = b.ClaimEnvelope(ctx, e, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	// The dead holder's late delete is fenced.
	if _, err := a.Load(ctx, due[2].ID); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Load after the survivor's delete: %v", err)
	}
}
