package conformance

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue/layout"
)

// RunBenchmarks measures the queue on an adapter side by side with the raw
// floor of the same storage: each operation has a "queue" and a "raw"
// sub-benchmark, so that benchstat or "mxq bench" can report ratios.
//
//	Commit/4KiB-1rcpt      a whole transaction vs. the parallel puts it needs
//	Commit/4KiB-10rcpt
//	CommitParallel/64      the same, 64 at a time
//	Walk/2000              a walk of 2000 envelopes vs. a listing of their keys
//	Claim                  claim and release vs. two read-and-swap pairs
//	Requests               requests per operation (bench.Costs), reported
//	                       as metrics named after the operation, beside
//	                       its floor
func RunBenchmarks(b *testing.B, mk HarnessMaker) {
	content := bytes.Repeat([]byte("x"), 4096)
	for _, rcpts := range []int{1, 10} {
		b.Run(fmt.Sprintf("Commit/4KiB-%drcpt", rcpts), func(b *testing.B) {
			e := newEnv(b, mk)
			s := e.store(nil)
			raw := e.backend()
			b.Cleanup(func() { bench.CleanRaw(context.WithoutCancel(e.ctx), raw) })
			b.Run("queue", func(b *testing.B) { loop(b, e.ctx, bench.Commit(s, content, rcpts)) })
			b.Run("raw", func(b *testing.B) { loop(b, e.ctx, bench.RawCommit(raw, content, rcpts)) })
		})
	}
	b.Run("CommitParallel/64", func(b *testing.B) {
		e := newEnv(b, mk)
		s := e.store(nil)
		raw := e.backend()
		b.Cleanup(func() { bench.CleanRaw(context.WithoutCancel(e.ctx), raw) })
		par := func(b *testing.B, op bench.Op) {
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := op(e.ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		b.Run("queue", func(b *testing.B) { par(b, bench.Commit(s, content, 1)) })
		b.Run("raw", func(b *testing.B) { par(b, bench.RawCommit(raw, content, 1)) })
	})
	b.Run("Walk/2000", func(b *testing.B) {
		e := newEnv(b, mk)
		s := e.store(nil)
		if err := bench.Fill(e.ctx, s, 2000, 4, 16); err != nil {
			b.Fatal(err)
		}
		raw := e.backend()
		b.Run("queue", func(b *testing.B) { loop(b, e.ctx, bench.Walk(s)) })
		b.Run("raw", func(b *testing.B) {
			loop(b, e.ctx, bench.RawList(raw, layout.Key(layout.Handle{Kind: layout.Envelope})))
		})
	})
	b.Run("Claim", func(b *testing.B) {
		e := newEnv(b, mk)
		s := e.store(nil)
		m, ids := e.commit(s, []byte("x"), "a", "b", "c", "d")
		_ = m
		raw := e.backend()
		b.Cleanup(func() { bench.CleanRaw(context.WithoutCancel(e.ctx), raw) })
		rawOp, _ := bench.RawCAS(raw)
		b.Run("queue", func(b *testing.B) { loop(b, e.ctx, bench.ClaimRelease(s, ids)) })
		b.Run("raw", func(b *testing.B) { loop(b, e.ctx, rawOp) })
	})
	b.Run("Requests", func(b *testing.B) {
		e := newEnv(b, mk)
		raw := e.backend()
		for b.Loop() {
			costs, err := bench.Costs(e.ctx, raw, "bench-requests", 20)
			if err != nil {
				b.Fatal(err)
			}
			for _, c := range costs {
				b.ReportMetric(c.Requests, metricName(c.Op, "-req/op"))
				b.ReportMetric(c.Floor, metricName(c.Op, "-floor-req/op"))
			}
		}
	})
}

// metricName turns an operation's name into a benchmark metric unit.
func metricName(op, unit string) string {
	return strings.NewReplacer(" + ", "+", " ", "-", ",", "", "(", "", ")", "").Replace(op) + unit
}

func loop(b *testing.B, ctx context.Context, op bench.Op) {
	for b.Loop() {
		if err := op(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
