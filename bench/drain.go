package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// DrainResult is what one drain measured.
type DrainResult struct {
	Envelopes  int           `json:"envelopes"`  // delivered
	Workers    int           `json:"workers"`    // delivering at once
	Elapsed    time.Duration `json:"elapsed"`    // from the first Due to the last delete
	Throughput float64       `json:"throughput"` // envelopes delivered per second
	Requests   float64       `json:"requests"`   // per envelope, the batched clean-up included
	By         Counts        `json:"by"`         // the requests of the whole drain, by kind
}

// drainPoll is how long a worker whose Due found nothing waits before it
// asks again, as an MTA's delivery loop does.
const drainPoll = 10 * time.Millisecond

// Drain commits n one-recipient messages of content into a queue of its
// own under a prefix of b, then delivers them all with workers goroutines
// that share one Store: each asks Due for up to 32 envelopes, claims each
// with ClaimEnvelope and deletes it, and asks again. It measures the
// delivery alone: its time, and its requests through a Counter, the
// clean-up that Flush sends at the end included. A claim lost to another
// worker is skipped, as an MTA skips it. The queue is removed at the end,
// so other messages in b are neither counted nor touched. node names the
// Store's node. The drain gives up after ten minutes.
func Drain(ctx context.Context, b driver.Backend, node string, n, workers int, content []byte) (DrainResult, error) {
	if n < 1 || workers < 1 {
		return DrainResult{}, fmt.Errorf("bench: a drain of %d envelopes by %d workers", n, workers)
	}
	pb := driver.Prefixed(b, "bench-drain-"+randHex(6))
	defer CleanAll(context.WithoutCancel(ctx), pb)
	c := Count(pb)
	s, err := queue.New(c.Backend(), &queue.Options{Node: node})
	if err != nil {
		return DrainResult{}, err
	}
	defer s.Close()
	if _, err := Measure(ctx, Commit(s, content, 1), n, 16); err != nil {
		return DrainResult{}, err
	}
	if err := s.Heartbeat(ctx); err != nil {
		return DrainResult{}, err
	}
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	base := c.Counts()
	start := time.Now()
	deadline := start.Add(10 * time.Minute)
	for range workers {
		wg.Go(func() {
			for done.Load() < int64(n) {
				if err := ctx.Err(); err != nil {
					errs <- err
					return
				}
				if time.Now().After(deadline) {
					errs <- fmt.Errorf("bench: %d of %d envelopes delivered after ten minutes", done.Load(), n)
					return
				}
				envs, err := s.Due(ctx, 32)
				if err != nil {
					errs <- err
					return
				}
				if len(envs) == 0 {
					time.Sleep(drainPoll)
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
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return DrainResult{}, err
	}
	if err := s.Flush(ctx); err != nil {
		return DrainResult{}, err
	}
	d := c.Counts().Sub(base)
	return DrainResult{
		Envelopes:  n,
		Workers:    workers,
		Elapsed:    elapsed,
		Throughput: float64(n) / elapsed.Seconds(),
		Requests:   float64(d.Total()) / float64(n),
		By:         d,
	}, nil
}
