package bench_test

import (
	"bytes"
	"sync"
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver/drivertest"
	"time"
)

// TestGroupCommit: 64 commits at once over a store with 5 ms per request
// share the swaps of their block record, so a 1-recipient commit costs
// the content, the envelope and the due pointer and a fraction of a swap:
// 3 and a fraction, where one at a time it is 4. Without group commit it
// would be 4 here too; the bound leaves room for small batches on a loaded
// machine.
func TestGroupCommit(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	f.SetLatency(5 * time.Millisecond)
	c := bench.Count(f)
	s, err := queue.New(c.Backend(), &queue.Options{Node: "c"})
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("x"), 4096)
	op := bench.Commit(s, content, 1)
	op(t.Context())
	base := c.Counts()
	const n, w = 640, 64
	var wg sync.WaitGroup
	ch := make(chan struct{}, n)
	for range n {
		ch <- struct{}{}
	}
	close(ch)
	for range w {
		wg.Go(func() {
			for range ch {
				if err := op(t.Context()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	s.Close()
	d := c.Counts().Sub(base)
	per := float64(d.Total()) / n
	t.Logf("64 at once: %.2f requests per commit %+v", per, d)
	if per > 3.5 {
		t.Errorf("64 commits at once: %.2f requests per commit, want at most 3.5", per)
	}
}
