package multiproc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
)

// TestIdleCost runs idle nodes over queues of two sizes and counts the
// requests each makes per heartbeat interval: the count must be bounded
// and must not grow with the queue.
func TestIdleCost(t *testing.T) {
	const nodes, intervals = 4, 25
	const beat = 40 * time.Millisecond
	perInterval := func(envelopes int) float64 {
		name := fmt.Sprintf("idle-%d", envelopes)
		filler, err := queue.New(mem.OpenBackend(name), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := bench.Fill(t.Context(), filler, envelopes, 10, 8); err != nil {
			t.Fatal(err)
		}
		filler.Close()
		var counters []*bench.Counter
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		for i := range nodes {
			c := bench.Count(mem.OpenBackend(name))
			counters = append(counters, c)
			s, err := queue.New(c.Backend(), &queue.Options{Node: fmt.Sprintf("idle%d", i), HeartbeatInterval: beat})
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				s.RunNode(ctx, nil)
				s.Close()
				done <- struct{}{}
			}()
		}
		time.Sleep(intervals * beat)
		cancel()
		for range nodes {
			<-done
		}
		var total int64
		for _, c := range counters {
			total += c.Counts().Total()
		}
		return float64(total) / nodes / intervals
	}
	small, large := perInterval(100), perInterval(5000)
	t.Logf("an idle node makes %.2f requests per heartbeat interval over 100 envelopes and %.2f over 5000 (%d nodes); at the default 10 s interval that is %.2f requests per second", small, large, nodes, large/10)
	// A heartbeat, a listing of the nodes and a read of each other node,
	// with some slack for timer jitter.
	if bound := float64(2+nodes-1) * 1.5; small > bound || large > bound {
		t.Fatalf("idle cost %.2f and %.2f requests per interval; the bound is %.1f", small, large, bound)
	}
	if large > small*1.5+1 {
		t.Fatalf("idle cost grows with the queue: %.2f requests per interval over 100 envelopes, %.2f over 5000", small, large)
	}
}
