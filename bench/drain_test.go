package bench_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue/driver"
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
	raw := mem.OpenBackend("")
	// mem as it is, with a conditional delete; and shaped like S3 and
	// MinIO: a tombstone for the fenced delete, multi-object deletes, and
	// reads that take a millisecond, so that workers' due scans overlap.
	shapes := map[string]driver.Backend{
		"conditional delete": raw,
		"tombstone": struct {
			driver.Backend
			driver.MultiDeleter
		}{slowReads{raw}, raw.(driver.MultiDeleter)},
	}
	for name, b := range shapes {
		t.Run(name, func(t *testing.T) {
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
			// One worker pays 3 (TestCosts), and a tombstone is no
			// more: the envelope's delete goes in the batch. Workers
			// of one Store rarely read the same due envelope: Due
			// puts the ones it returned to another worker last.
			if small > 4 {
				t.Errorf("draining 1,000 costs %.2f requests per envelope, want at most 4", small)
			}
		})
	}
}

// slowReads is a Backend whose reads take a millisecond more.
type slowReads struct{ driver.Backend }

func (b slowReads) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	time.Sleep(time.Millisecond)
	return b.Backend.Get(ctx, key)
}
