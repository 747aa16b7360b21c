// Package bench measures a queue.Store against the raw floor: the same
// store driven through its Backend with the fewest requests an operation
// needs. Both conformance.RunBenchmarks and "mxq bench" use it, so the
// figures they report are comparable. Speed is reported as ratios of the
// queue to the floor, never as bare seconds.
package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Op is one operation to measure.
type Op func(ctx context.Context) error

// Result summarises a measurement.
type Result struct {
	N          int
	P50, P99   time.Duration
	Throughput float64 // operations per second
}

// Measure runs op n times with the given concurrency and returns the
// latency percentiles and the throughput.
func Measure(ctx context.Context, op Op, n, concurrency int) (Result, error) {
	return MeasureTimed(ctx, func(ctx context.Context) (time.Duration, error) {
		t := time.Now()
		err := op(ctx)
		return time.Since(t), err
	}, n, concurrency)
}

// TimedOp is an operation that times part of itself, leaving out its
// setup: it returns the latency to count.
type TimedOp func(ctx context.Context) (time.Duration, error)

// MeasureTimed is Measure for an operation that times itself. The
// throughput counts the whole of each operation, setup included.
func MeasureTimed(ctx context.Context, op TimedOp, n, concurrency int) (Result, error) {
	if n <= 0 {
		return Result{}, nil
	}
	concurrency = max(concurrency, 1)
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	start := time.Now()
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				d, err := op(ctx)
				if err != nil {
					once.Do(func() { first = err })
					return
				}
				lat[i] = d
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return Result{}, first
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	el := time.Since(start)
	slices.Sort(lat)
	return Result{N: n, P50: lat[n/2], P99: lat[min(n-1, n*99/100)], Throughput: float64(n) / el.Seconds()}, nil
}

// Commit stores a message of content with rcpts envelopes through s: the
// whole transaction, Begin to Commit.
func Commit(s *queue.Store, content []byte, rcpts int) Op {
	return func(ctx context.Context) error {
		tx, err := s.Begin(ctx)
		if err != nil {
			return err
		}
		for i := range rcpts {
			if _, err := tx.AddEnvelope(fmt.Appendf(nil, "rcpt%d@example.org", i)); err != nil {
				return err
			}
		}
		_, err = tx.CommitContent(ctx, bytes.NewReader(content))
		return err
	}
}

// DataTime is how long PreparedCommit waits between Prepare and the
// commit: a stand-in for the time a client takes to send DATA, and longer
// than a write to a store on the same network.
const DataTime = 20 * time.Millisecond

// PreparedCommit stores a message of content with one envelope as an MTA
// does that calls Tx.Prepare at RCPT TO, and times what the client waits
// for after DATA: CommitContent, DataTime after Prepare.
func PreparedCommit(s *queue.Store, content []byte) TimedOp {
	return func(ctx context.Context) (time.Duration, error) {
		tx, err := s.Begin(ctx)
		if err != nil {
			return 0, err
		}
		if _, err := tx.AddEnvelope([]byte("rcpt0@example.org")); err != nil {
			return 0, err
		}
		tx.Prepare(ctx)
		time.Sleep(DataTime)
		t := time.Now()
		_, err = tx.CommitContent(ctx, bytes.NewReader(content))
		return time.Since(t), err
	}
}

// After times op after a pause of d, as PreparedCommit times the commit:
// its floor, measured on the same terms (a machine that idled for d may
// answer its first request more slowly than a busy one).
func After(d time.Duration, op Op) TimedOp {
	return func(ctx context.Context) (time.Duration, error) {
		time.Sleep(d)
		t := time.Now()
		err := op(ctx)
		return time.Since(t), err
	}
}

// RawCommit is the floor of Commit: ONE create-only PUT, under a key of
// its own, of the bytes the commit stores, the content followed by one
// record per recipient. Nothing stores a message in fewer requests or
// rounds.
func RawCommit(b driver.Backend, content []byte, rcpts int) Op {
	return func(ctx context.Context) error {
		data := append([]byte(nil), content...)
		for i := range rcpts {
			data = fmt.Appendf(data, "rcpt%d@example.org\n", i)
		}
		_, err := b.Put(ctx, "raw/"+randHex(8), bytes.NewReader(data), &driver.PutOptions{IfNoneMatch: true, Size: int64(len(data))})
		return err
	}
}

// Walk walks the whole queue.
func Walk(s *queue.Store) Op {
	return func(ctx context.Context) error {
		for _, err := range s.Walk(ctx) {
			if err != nil {
				return err
			}
		}
		return nil
	}
}

// RawList is the floor of Walk: one listing of every key under prefix.
func RawList(b driver.Backend, prefix string) Op {
	return func(ctx context.Context) error {
		after := ""
		for {
			keys, more, err := b.List(ctx, prefix, after, 1000)
			if err != nil {
				return err
			}
			if !more || len(keys) == 0 {
				return nil
			}
			after = keys[len(keys)-1]
		}
	}
}

// Fill commits messages of rcpts envelopes until the queue holds n
// envelopes, with the given concurrency.
func Fill(ctx context.Context, s *queue.Store, n, rcpts, concurrency int) error {
	msgs := (n + rcpts - 1) / rcpts
	_, err := Measure(ctx, Commit(s, []byte("x"), rcpts), msgs, concurrency)
	return err
}

// ClaimRelease claims and releases one of ids, in turn: the claim is the
// measured part, the release makes the next claim possible.
func ClaimRelease(s *queue.Store, ids []queue.EvpID) Op {
	var i atomic.Int64
	return func(ctx context.Context) error {
		id := ids[int(i.Add(1)-1)%len(ids)]
		c, err := s.Claim(ctx, id, time.Minute)
		if err != nil {
			return err
		}
		return c.Release(ctx)
	}
}

// RawCAS is the floor of a claim: one read and one compare-and-swap of a
// small object, twice (claim and release).
func RawCAS(b driver.Backend) (Op, error) {
	key := "raw/" + randHex(8)
	return func(ctx context.Context) error {
		for range 2 {
			rc, a, err := b.Get(ctx, key)
			if err != nil && b.ErrorCode(err) != driver.CodeNotFound {
				return err
			}
			o := &driver.PutOptions{Size: 16, IfMatch: a.Version}
			if err != nil {
				o = &driver.PutOptions{Size: 16, IfNoneMatch: true}
			} else {
				rc.Close()
			}
			if _, err := b.Put(ctx, key, bytes.NewReader(make([]byte, 16)), o); err != nil {
				return err
			}
		}
		return nil
	}, nil
}

// CleanRaw removes the objects the raw floors wrote.
func CleanRaw(ctx context.Context, b driver.Backend) error {
	for {
		keys, _, err := b.List(ctx, "raw/", "", 1000)
		if err != nil || len(keys) == 0 {
			return err
		}
		for _, k := range keys {
			if err := b.Delete(ctx, k); err != nil {
				return err
			}
		}
	}
}

// CleanAll removes every object of b.
func CleanAll(ctx context.Context, b driver.Backend) error {
	for {
		keys, _, err := b.List(ctx, "", "", 1000)
		if err != nil || len(keys) == 0 {
			return err
		}
		for _, k := range keys {
			if err := b.Delete(ctx, k); err != nil {
				return err
			}
		}
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
