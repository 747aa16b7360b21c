package bench

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
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
