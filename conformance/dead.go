package conformance

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Dead names a way in which a store cannot work, for DeadHarness.
type Dead int

// The dead stores the suite checks.
const (
	// DeadEndpoint: nothing answers at the store's address. The Store
	// fails with queue.ErrUnavailable, or at the ctx deadline, not later.
	DeadEndpoint Dead = iota + 1
	// DeadCredentials: the store answers but refuses the credentials.
	// The error is neither queue.ErrNotFound nor queue.ErrUnavailable,
	// since waiting will not help, and carries the store's own error.
	DeadCredentials
	// DeadContainer: the bucket, or whatever holds the queue, does not
	// exist. The error wraps queue.ErrInvalid: a misspelt bucket must not
	// look like an empty queue, nor be retried in vain.
	DeadContainer
)

// String returns the name of the subtest of d.
func (d Dead) String() string {
	switch d {
	case DeadEndpoint:
		return "Endpoint"
	case DeadCredentials:
		return "Credentials"
	case DeadContainer:
		return "Container"
	}
	return "Dead?"
}

// DeadHarness is a Harness that can also open stores that cannot work.
// Run checks them in the subtest DeadStore, so that an adapter proves that
// a store it cannot use fails clearly and in time; a Harness that is not
// a DeadHarness skips it.
type DeadHarness interface {
	Harness
	// MakeDeadBackend returns a Backend over a store that fails as d
	// says, with the client settings (timeouts, retries) of the adapter's
	// URL opener. A nil Backend and a nil error say that the adapter has
	// no such store (a local directory has no credentials); that case is
	// skipped.
	MakeDeadBackend(ctx context.Context, d Dead) (driver.Backend, error)
}

// deadDeadline bounds the Ping of a dead store.
const deadDeadline = 5 * time.Second

// testDeadStore pings each dead store of the harness through a Store with
// default options, and checks the error.
func testDeadStore(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	dh, ok := e.h.(DeadHarness)
	if !ok {
		t.Skip("the harness is not a DeadHarness")
	}
	for _, d := range []Dead{DeadEndpoint, DeadCredentials, DeadContainer} {
		t.Run(d.String(), func(t *testing.T) {
			b, err := dh.MakeDeadBackend(e.ctx, d)
			if err != nil {
				t.Fatalf("MakeDeadBackend: %v", err)
			}
			if b == nil {
				t.Skipf("the adapter has no store that fails so")
			}
			s, err := queue.New(b, nil)
			if err != nil {
				t.Fatalf("queue.New: %v", err)
			}
			defer s.Close()
			ctx, cancel := context.WithTimeout(e.ctx, deadDeadline)
			defer cancel()
			start := time.Now()
			err = s.Ping(ctx)
			took := time.Since(start)
			t.Logf("Ping after %v: %v", took.Round(time.Millisecond), err)
			if err == nil {
				t.Fatal("Ping of a dead store succeeded")
			}
			if took > deadDeadline+time.Second {
				t.Fatalf("Ping took %v, past the deadline of %v", took, deadDeadline)
			}
			switch d {
			case DeadEndpoint:
				if !errors.Is(err, queue.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("want ErrUnavailable or the deadline: %v", err)
				}
			case DeadCredentials:
				if errors.Is(err, queue.ErrNotFound) || errors.Is(err, queue.ErrUnavailable) {
					t.Fatalf("want neither ErrNotFound nor ErrUnavailable: %v", err)
				}
			case DeadContainer:
				if !errors.Is(err, queue.ErrInvalid) {
					t.Fatalf("want ErrInvalid: %v", err)
				}
			}
			// The store's own error stays reachable under the sentinel.
			var qe *queue.Error
			if !errors.Is(err, context.DeadlineExceeded) && (!errors.As(err, &qe) || qe.Err == nil || qe.Err == qe.Kind) {
				t.Fatalf("the store's own error is not reachable: %#v", err)
			}
		})
	}
}
