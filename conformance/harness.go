// Package conformance is the suite that proves an adapter meets the
// contract of driver.Backend and, through it, that a queue.Store on that
// adapter meets every line of the queue's contract. An adapter's test is a
// short Harness plus one call to Run:
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, func(ctx context.Context, t testing.TB) (conformance.Harness, error) {
//			return &harness{...}, nil
//		})
//	}
//
// # Harness
//
// Every subtest gets a fresh Harness. Subtests that need several nodes
// call MakeBackend several times; all backends of one Harness must share
// one storage. Capabilities tells the suite where adapters may differ.
//
// # Dead stores
//
// A Harness that is also a DeadHarness opens stores that cannot work: an
// endpoint where nothing listens, credentials the store refuses, a bucket
// that does not exist. The subtest DeadStore checks that each fails within
// its deadline with the error an operator can act on (ErrUnavailable,
// neither ErrNotFound nor ErrUnavailable, ErrInvalid), the store's own
// error reachable beneath. An adapter provides only the openers.
//
// # Benchmarks
//
// RunBenchmarks takes the same HarnessMaker and measures the Store on the
// adapter against the adapter's raw floor (package bench).
//
// # Encryption
//
// RunEncrypted runs the whole suite twice more, with every Store sealing
// content and envelopes (queue.Options.Encryption), and with compression
// too; WithEncryption does the same for one configuration.
//
// The suite depends only on queue, queue/driver, queue/driver/drivertest
// (whose fault injection drives the crash matrix), queue/seal, bench and
// the standard library; it imports no adapter.
package conformance

import (
	"context"
	"testing"

	"github.com/mxqueue/mxq/queue/driver"
)

// Harness gives the suite access to one adapter's storage.
type Harness interface {
	// MakeBackend returns a new Backend over the harness's storage. Every
	// call returns a Backend over the same storage, as if opened by
	// another node.
	MakeBackend(ctx context.Context) (driver.Backend, error)
	// Capabilities tells the suite what to expect of the adapter.
	Capabilities() Capabilities
	// Close releases the harness; the storage may be discarded.
	Close()
}

// HarnessMaker makes the Harness of one subtest.
type HarnessMaker func(ctx context.Context, t testing.TB) (Harness, error)

// Capabilities describe an adapter to the suite.
type Capabilities struct {
	// ContentInMemory says the adapter keeps stored content in this
	// process's memory (mem), so the memory bound of the large-message
	// test allows for it.
	ContentInMemory bool
	// IfMatchMissing is the code a compare-and-swap Put on a missing key
	// fails with: driver.CodeNotFound or driver.CodePrecondition. The zero
	// value accepts either.
	IfMatchMissing driver.Code
}
