package bench_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
)

// drain commits n 1-recipient messages, then lets workers deliver them
// all (Due, ClaimEnvelope, Delete) and returns the requests per envelope
// of the delivery, its clean-up included.
func drain(t *testing.T, n, workers int) float64 {
	t.Helper()
	ctx := t.Context()
	c := bench.Count(mem.OpenBackend(""))
	s, err := queue.New(c.Backend(), &queue.Options{Node: "drain"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	content := bytes.Repeat([]byte("x"), 1024)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	per := n / 8
	for w := range 8 {
		wg.Go(func() {
			for i := range per {
				tx, err := s.Begin(ctx)
				if err == nil {
					_, err = tx.AddEnvelope(fmt.Appendf(nil, "rcpt%d.%d", w, i))
				}
				if err == nil {
					_, err = tx.WriteContent(ctx, bytes.NewReader(content))
				}
				if err == nil {
					err = tx.Commit(ctx)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if err := s.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	base := c.Counts()
	var done atomic.Int64
	total := int64(per * 8)
	deadline := time.Now().Add(5 * time.Minute)
	errs = make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for done.Load() < total {
				if time.Now().After(deadline) {
					errs <- fmt.Errorf("%d of %d delivered after 5 minutes", done.Load(), total)
					return
				}
				envs, err := s.Due(ctx, 32)
				if err != nil {
					errs <- err
					return
				}
				if len(envs) == 0 {
					// The rest is in other workers' hands: poll
					// again in a moment, as an MTA does.
					time.Sleep(10 * time.Millisecond)
				}
				for _, e := range envs {
					cl, err := s.ClaimEnvelope(ctx, e, time.Minute)
					if errors.Is(err, queue.ErrConflict) || errors.Is(err, queue.ErrNotFound) {
						continue // another worker's
					}
					if err == nil {
						err = cl.Delete(ctx)
					}
					if err != nil {
						errs <- err
						return
					}
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(context.WithoutCancel(ctx)); err != nil {
		t.Fatal(err)
	}
	d := c.Counts().Sub(base)
	r := float64(d.Total()) / float64(total)
	t.Logf("%d envelopes, %d workers: %.2f requests per envelope %+v", total, workers, r, d)
	return r
}

// TestDrainCost: a delivery costs the same per envelope whether 8
// workers drain 1,000 envelopes or 10,000: nothing in it grows with the
// backlog. The count varies a little with the workers' collisions, so
// the bound is a ratio.
func TestDrainCost(t *testing.T) {
	big := 10_000
	if testing.Short() {
		big = 3_000
	}
	small := drain(t, 1000, 8)
	large := drain(t, big, 8)
	if large > 1.1*small {
		t.Errorf("draining %d costs %.2f requests per envelope, %.2fx the %.2f of 1,000", big, large, large/small, small)
	}
	// One worker pays 4 (TestCosts); workers of one Store that read
	// the same due envelope pay a read more, but never a lost claim.
	if small > 6 {
		t.Errorf("draining 1,000 costs %.2f requests per envelope, want at most 6", small)
	}
}
