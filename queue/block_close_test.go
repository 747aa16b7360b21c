package queue_test

import (
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// closeWatch holds the next envelope write while gated, and records
// block record writes after Close.
type closeWatch struct {
	driver.Backend
	gated, entered chan struct{}
	closed         atomic.Bool
	after          atomic.Int32
}

func (w *closeWatch) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	if w.closed.Load() && strings.HasPrefix(key, "blk/") {
		w.after.Add(1)
	}
	if strings.HasPrefix(key, "evp/") && w.gated != nil {
		g := w.gated
		w.gated = nil
		close(w.entered)
		<-g
	}
	return w.Backend.Put(ctx, key, r, opts)
}

func (w *closeWatch) Close() error {
	w.closed.Store(true)
	return nil
}

// TestCommitAcrossClose: a commit that reaches its swap of the block
// record after Close returned fails as closed, and writes nothing after
// Close: Close waits for background work, and starts none after.
func TestCommitAcrossClose(t *testing.T) {
	ctx := t.Context()
	w := &closeWatch{Backend: mem.OpenBackend("")}
	s, err := queue.New(w, &queue.Options{Node: "closing"})
	if err != nil {
		t.Fatal(err)
	}
	tx := writtenTx(t, s)
	tx.AddEnvelope([]byte("y"))
	release := make(chan struct{})
	w.entered = make(chan struct{})
	w.gated = release
	done := make(chan error, 1)
	go func() { done <- tx.Commit(ctx) }()
	<-w.entered
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	close(release)
	err = <-done
	if n := w.after.Load(); n > 0 {
		t.Fatalf("%d writes of the block record after Close (commit: %v)", n, err)
	}
	if err == nil {
		t.Fatal("commit returned nil after Close")
	}
}
