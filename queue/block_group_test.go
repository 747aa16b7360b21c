package queue_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// gatedSwaps holds the first swap of a block record until release is
// closed, and fails the second with a permanent error.
type gatedSwaps struct {
	driver.Backend
	release chan struct{}
	seen    atomic.Int32
}

var errSwapBroken = errors.New("the store broke down")

func (g *gatedSwaps) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	if strings.HasPrefix(key, "blk/") && opts.IfMatch != "" {
		switch g.seen.Add(1) {
		case 1:
			<-g.release
		case 2:
			return "", errSwapBroken
		}
	}
	return g.Backend.Put(ctx, key, r, opts)
}

// TestRollbackInSameBatchAsCommit: a commit given up on while its swap
// waits for another's, then rolled back, puts both bits of one
// transaction into one batch. When that swap fails, the rollback must not
// report the message committed: it is not, and never shows.
func TestRollbackInSameBatchAsCommit(t *testing.T) {
	ctx := t.Context()
	g := &gatedSwaps{Backend: mem.OpenBackend(""), release: make(chan struct{})}
	s, err := queue.New(g, &queue.Options{Node: "gated", Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	begin := func() *queue.Tx { return writtenTx(t, s) }
	other, tx := begin(), begin()
	otherDone := make(chan error, 1)
	go func() { otherDone <- other.Commit(ctx) }()
	for g.seen.Load() == 0 {
		time.Sleep(time.Millisecond) // the other commit's swap is in flight
	}
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = tx.Commit(cctx)
	cancel()
	if err == nil {
		t.Fatal("commit returned nil while the record's swap was held")
	}
	rbDone := make(chan error, 1)
	go func() { rbDone <- tx.Rollback(ctx) }()
	time.Sleep(50 * time.Millisecond) // the rollback waits behind the held swap
	close(g.release)
	if err := <-otherDone; err != nil {
		t.Fatalf("the other commit: %v", err)
	}
	rerr := <-rbDone
	if rerr != nil && !errors.Is(rerr, queue.ErrConflict) {
		rerr = tx.Rollback(ctx) // nothing changed: it may be tried again
	}
	visible := false
	for id, err := range s.Walk(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		visible = visible || id.MsgID() == tx.ID()
	}
	if errors.Is(rerr, queue.ErrConflict) && !visible {
		t.Fatalf("rollback reports the message committed (%v), but it is not visible", rerr)
	}
	if rerr == nil && visible {
		t.Fatal("rollback succeeded, but the message is visible")
	}
}
