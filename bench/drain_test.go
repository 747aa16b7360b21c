package bench_test

import (
	"bytes"
	"os"
	"strconv"
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
)

// TestDrainCost: a delivery costs the same per envelope whether 8
// workers drain 1,000 envelopes or 10,000: nothing in it grows with the
// backlog. The count varies a little with the workers' timing, so the
// bound is a ratio. MXQ_DRAIN_ENVELOPES sets the larger drain, e.g.
// 100000 for the figure in docs/performance.md.
func TestDrainCost(t *testing.T) {
	big := 10_000
	if testing.Short() {
		big = 3_000
	}
	if v, err := strconv.Atoi(os.Getenv("MXQ_DRAIN_ENVELOPES")); err == nil && v > 1000 {
		big = v
	}
	content := bytes.Repeat([]byte("x"), 1024)
	b := mem.OpenBackend("")
	var got []float64
	for _, n := range []int{1000, big} {
		r, err := bench.Drain(t.Context(), b, "drain", n, 8, content)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d envelopes, %d workers: %.2f requests per envelope %+v, %.0f envelopes/s", r.Envelopes, r.Workers, r.Requests, r.By, r.Throughput)
		got = append(got, r.Requests)
	}
	small, large := got[0], got[1]
	if large > 1.1*small {
		t.Errorf("draining %d costs %.2f requests per envelope, %.2fx the %.2f of 1,000", big, large, large/small, small)
	}
	// One worker pays 4 (TestCosts); workers of one Store that read
	// the same due envelope pay a read more, but never a lost claim.
	if small > 6 {
		t.Errorf("draining 1,000 costs %.2f requests per envelope, want at most 6", small)
	}
}
