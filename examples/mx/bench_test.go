package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkMX measures the MX end to end on each target: b.N messages of
// 4 KiB, each to one recipient, submitted by 16 concurrent SMTP clients to
// one or two instances, and delivered to the sink. It reports the
// messages accepted per second (250 after Commit) and the envelopes
// delivered per second (from the first submission to the last delivery).
//
//	go test -run '^$' -bench MX -benchtime 2000x
func BenchmarkMX(b *testing.B) {
	for name, newQueue := range targets(b) {
		for _, instances := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/%d", name, instances), func(b *testing.B) { benchMX(b, newQueue, instances) })
		}
	}
}

func benchMX(b *testing.B, newQueue func(testing.TB) string, instances int) {
	u := newQueue(b)
	s := newSink(b)
	var mxs []*instance
	for i := range instances {
		mxs = append(mxs, startMX(b, fmt.Sprint("mx", i+1), u, s, "--workers", "16", "--log-level", "info"))
	}
	body := strings.Repeat(strings.Repeat("x", 62)+"\r\n", 64)
	const clients = 16
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := c; i < b.N; i += clients {
				text := fmt.Sprintf("From: <alice@src.test>\r\nSubject: m%d\r\n\r\n%s", i, body)
				if err := submit(mxs[i%instances].smtp, "alice@src.test", []string{fmt.Sprintf("r%d@dst.test", i)}, strings.NewReader(text)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	accepted := time.Since(start)
	s.wait("every message", func() bool { return len(s.msgs) >= b.N })
	delivered := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/accepted.Seconds(), "accepted/s")
	b.ReportMetric(float64(b.N)/delivered.Seconds(), "delivered/s")
	b.ReportMetric(0, "ns/op")
	for _, mx := range mxs {
		mx.stop()
	}
}
