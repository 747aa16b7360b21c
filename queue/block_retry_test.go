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
	"github.com/mxqueue/mxq/queue/layout"
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

// TestBlocksInTurn: a Store with Options.Blocks hands out the IDs of that
// many blocks in turn, so that its commits spread over as many records.
func TestBlocksInTurn(t *testing.T) {
	ctx := t.Context()
	b := mem.OpenBackend("")
	s, err := queue.New(b, &queue.Options{Node: "striped", Blocks: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seen := map[queue.MsgID]bool{}
	firsts := map[uint32]int{}
	for range 12 {
		tx, err := s.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if seen[tx.ID()] {
			t.Fatalf("ID %v handed out twice", tx.ID())
		}
		seen[tx.ID()] = true
		firsts[layout.BlockOf(uint32(tx.ID()))]++
		tx.AddEnvelope([]byte("x"))
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(firsts) != 4 {
		t.Fatalf("12 commits used blocks %v, want 4 of 3 each", firsts)
	}
	for f, n := range firsts {
		if n != 3 {
			t.Fatalf("block %08x has %d commits, want 3", f, n)
		}
	}
	keys, _, err := b.List(ctx, "blk/", "", 100)
	if err != nil || len(keys) != 4 {
		t.Fatalf("block records %v, %v; want 4", keys, err)
	}
	if got := countWalk(t, s); got != 12 {
		t.Fatalf("walk shows %d envelopes, want 12", got)
	}
}
