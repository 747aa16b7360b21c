package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver/drivertest"
)

// BenchmarkSlowStore measures what a slow store costs: the same work on
// mem with no latency and with 200 ms on every request, as a store far
// away would add. It reports the requests each operation makes and, with
// latency, how many request latencies each operation takes end to end
// (latencies/op): the requests on its critical path, since a Store runs
// independent requests in parallel. Throughput degrades in proportion to
// the latency, by that factor, and parallel callers win it back. Run it
// with -benchtime=10x: at 200 ms one operation takes about a second.
// docs/reliability.md gives the figures.
func BenchmarkSlowStore(b *testing.B) {
	for _, latency := range []time.Duration{0, 200 * time.Millisecond} {
		for _, w := range []struct {
			name     string
			parallel int
			op       func(ctx context.Context, s *queue.Store, i int) error
		}{
			{"commit", 1, benchCommit},
			{"commit/parallel16", 16, benchCommit},
			{"claim-update-delete", 1, nil},
		} {
			b.Run(fmt.Sprintf("latency=%v/%s", latency, w.name), func(b *testing.B) {
				f := drivertest.New(mem.OpenBackend(""), 1)
				s, err := queue.New(f, &queue.Options{Node: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				ctx := b.Context()
				op := w.op
				if op == nil {
					// Each iteration claims, updates and deletes an
					// envelope committed before the timer starts.
					ids := make([]queue.EvpID, b.N)
					for i := range ids {
						tx, err := s.Begin(ctx)
						if err != nil {
							b.Fatal(err)
						}
						ids[i], _ = tx.AddEnvelope([]byte("rcpt"))
						if _, err := tx.WriteContent(ctx, bytes.NewReader(make([]byte, 1024))); err != nil {
							b.Fatal(err)
						}
						if err := tx.Commit(ctx); err != nil {
							b.Fatal(err)
						}
					}
					op = func(ctx context.Context, s *queue.Store, i int) error {
						c, err := s.Claim(ctx, ids[i], time.Minute)
						if err != nil {
							return err
						}
						if err := c.Update(ctx, []byte("tried")); err != nil {
							return err
						}
						return c.Delete(ctx)
					}
				}
				if err := s.Heartbeat(ctx); err != nil {
					b.Fatal(err)
				}
				f.WaitQuiet(time.Millisecond, 10*time.Second)
				f.SetLatency(latency)
				before := f.Requests(drivertest.OpGet) + f.Requests(drivertest.OpPut) + f.Requests(drivertest.OpDelete) + f.Requests(drivertest.OpList) + f.Requests(drivertest.OpStat)
				b.ResetTimer()
				var wg sync.WaitGroup
				errs := make(chan error, w.parallel)
				next := make(chan int)
				for range w.parallel {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range next {
							if err := op(ctx, s, i); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				start := time.Now()
			feed:
				for i := range b.N {
					select {
					case next <- i:
					case err := <-errs:
						b.Fatal(err)
						break feed
					}
				}
				close(next)
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				select {
				case err := <-errs:
					b.Fatal(err)
				default:
				}
				f.WaitQuiet(time.Millisecond, 30*time.Second)
				after := f.Requests(drivertest.OpGet) + f.Requests(drivertest.OpPut) + f.Requests(drivertest.OpDelete) + f.Requests(drivertest.OpList) + f.Requests(drivertest.OpStat)
				b.ReportMetric(float64(after-before)/float64(b.N), "requests/op")
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
				if latency > 0 {
					b.ReportMetric(float64(elapsed)/float64(b.N)/float64(latency)*float64(w.parallel), "latencies/op")
				}
			})
		}
	}
}

// benchCommit commits a message with one envelope and 1 KiB of content.
func benchCommit(ctx context.Context, s *queue.Store, i int) error {
	tx, err := s.Begin(ctx)
	if err != nil {
		return err
	}
	if _, err := tx.AddEnvelope(fmt.Appendf(nil, "rcpt %d", i)); err != nil {
		return err
	}
	if _, err := tx.WriteContent(ctx, bytes.NewReader(make([]byte, 1024))); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
