package queue_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// stalledTake holds every block record's create-only write until release
// is closed, as a store that stopped answering would.
type stalledTake struct {
	driver.Backend
	release chan struct{}
}

func (s *stalledTake) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	if strings.HasPrefix(key, "blk/") && opts.IfNoneMatch {
		<-s.release
	}
	return s.Backend.Put(ctx, key, r, opts)
}

// TestBeginHonoursDeadline: a Begin waiting behind another's allocation of
// a block returns by its own deadline.
func TestBeginHonoursDeadline(t *testing.T) {
	ctx := t.Context()
	st := &stalledTake{Backend: mem.OpenBackend(""), release: make(chan struct{})}
	defer close(st.release)
	s, err := queue.New(st, &queue.Options{Node: "stalled"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	go s.Begin(ctx) // stalls taking a block
	time.Sleep(20 * time.Millisecond)
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.Begin(dctx)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Begin past its deadline: %v, want DeadlineExceeded", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Begin hangs past its deadline behind another's allocation")
	}
}
