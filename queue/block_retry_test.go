package queue_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// rateLimited answers the first n swaps of block records with a transient
// error, as GCS does to writes of one object that come faster than about
// one a second.
type rateLimited struct {
	driver.Backend
	n, seen atomic.Int32
}

var errSlowDown = errors.New("rate limit for one object exceeded")

func (l *rateLimited) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	if strings.HasPrefix(key, "blk/") && opts.IfMatch != "" && l.seen.Add(1) <= l.n.Load() {
		return "", errSlowDown
	}
	return l.Backend.Put(ctx, key, r, opts)
}

func (l *rateLimited) ErrorCode(err error) driver.Code {
	if errors.Is(err, errSlowDown) {
		return driver.CodeUnavailable
	}
	return l.Backend.ErrorCode(err)
}

// TestCommitRateLimited: commits whose swap of the block record is refused
// as too fast wait and succeed, several of them with one swap; with no
// retries allowed, the commit fails as unavailable and never shows.
func TestCommitRateLimited(t *testing.T) {
	ctx := t.Context()
	l := &rateLimited{Backend: mem.OpenBackend("")}
	l.n.Store(2)
	s, err := queue.New(l, &queue.Options{Node: "limited"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			tx, err := s.Begin(ctx)
			if err == nil {
				tx.AddEnvelope([]byte("x"))
				err = tx.Commit(ctx)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	if got := countWalk(t, s); got != n {
		t.Fatalf("walk shows %d envelopes, want %d", got, n)
	}

	l.seen.Store(0)
	strict, err := queue.New(l, &queue.Options{Node: "strict", Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer strict.Close()
	tx, err := strict.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx.AddEnvelope([]byte("y"))
	if err := tx.Commit(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("commit refused with no retries: %v, want ErrUnavailable", err)
	}
	if got := countWalk(t, s); got != n {
		t.Fatalf("walk shows %d envelopes after a failed commit, want %d", got, n)
	}
}

func countWalk(t *testing.T, s *queue.Store) int {
	t.Helper()
	n := 0
	for _, err := range s.Walk(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}
