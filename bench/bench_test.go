package bench

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
)

func TestMeasure(t *testing.T) {
	var calls atomic.Int64
	op := func(context.Context) error { calls.Add(1); return nil }
	r, err := Measure(t.Context(), op, 100, 8)
	if err != nil || r.N != 100 || calls.Load() != 100 || r.P50 > r.P99 || r.Throughput <= 0 {
		t.Fatalf("Measure = %+v, %v after %d calls", r, err, calls.Load())
	}
	if r, err := Measure(t.Context(), op, 0, 8); err != nil || r.N != 0 {
		t.Fatalf("Measure of nothing = %+v, %v", r, err)
	}
	boom := errors.New("boom")
	if _, err := Measure(t.Context(), func(context.Context) error { return boom }, 10, 2); !errors.Is(err, boom) {
		t.Fatalf("Measure of a failing op: %v", err)
	}
}

// TestMeasureTimed: the latencies are the ones the operation reports,
// not its whole duration, and After leaves its pause out.
func TestMeasureTimed(t *testing.T) {
	var i atomic.Int64
	op := func(context.Context) (time.Duration, error) {
		return time.Duration(i.Add(1)) * time.Millisecond, nil // 1 ms to 100 ms
	}
	r, err := MeasureTimed(t.Context(), op, 100, 4)
	if err != nil || r.P50 != 51*time.Millisecond || r.P99 != 100*time.Millisecond {
		t.Fatalf("MeasureTimed = %+v, %v; want p50 51ms, p99 100ms", r, err)
	}
	r, err = MeasureTimed(t.Context(), After(30*time.Millisecond, func(context.Context) error { return nil }), 3, 1)
	if err != nil || r.P99 >= 30*time.Millisecond {
		t.Fatalf("After counted its pause: %+v, %v", r, err)
	}
}

// TestPreparedCommit: the commit it times finds the envelope written
// ahead, and the message is stored whole.
func TestPreparedCommit(t *testing.T) {
	ctx := t.Context()
	c := Count(mem.OpenBackend(""))
	s, err := queue.New(c.Backend(), &queue.Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := MeasureTimed(ctx, PreparedCommit(s, []byte("hello")), 3, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := s.WalkPage(ctx, "", 100)
	if err != nil || len(p.IDs) != 3 {
		t.Fatalf("walk after 3 prepared commits: %v, %v", p.IDs, err)
	}
}
