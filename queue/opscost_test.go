package queue_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
)

// TestOperatorCosts counts the requests of the operator's verbs, which
// docs/operations.md quotes: each must stay within its budget.
func TestOperatorCosts(t *testing.T) {
	ctx := t.Context()
	cnt := bench.Count(mem.OpenBackend(fmt.Sprintf("opscost-%s-%d", t.Name(), time.Now().UnixNano())))
	base := cnt.Counts()
	take := func() bench.Counts {
		now := cnt.Counts()
		d := now.Sub(base)
		base = now
		return d
	}
	open := func() *queue.Store {
		s, err := queue.New(cnt.Backend(), &queue.Options{Node: "operator"})
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
	take()
	for _, tc := range []struct {
		name string
		max  int
		fn   func() error
	}{
		{"hold", 7, func() error { return s.Hold(ctx, ids[0]) }},
		{"release", 4, func() error { return s.ReleaseHold(ctx, ids[0]) }},
		{"schedule", 7, func() error { return s.Schedule(ctx, ids[2], time.Time{}) }},
		{"import of 2 envelopes", 9, func() error {
			_, err := s.Import(ctx, 0x0badf00d, []queue.ImportEnvelope{{ID: 0x0badf00d00000001, Data: []byte("a")}, {ID: 0x0badf00d00000002, Data: []byte("b")}}, strings.NewReader("x"))
			return err
		}},
		{"stats of 11 messages", 6 + 3 + 11, func() error { _, err := s.Stats(ctx, &queue.StatsOptions{Sizes: true}); return err }},
		{"stats without sizes", 6 + 3, func() error { _, err := s.Stats(ctx, nil); return err }},
	} {
		if err := tc.fn(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		s.Close() // waits for background deletes
		n := take()
		t.Logf("%-24s %2d requests: %+v", tc.name, n.Total(), n)
		if n.Total() > int64(tc.max) {
			t.Errorf("%s: %d requests, want at most %d", tc.name, n.Total(), tc.max)
		}
		s = open()
		s.Heartbeat(ctx)
		take()
	}
}
