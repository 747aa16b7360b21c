package mem

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue/driver"
)

type harness struct{ name string }

var harnesses atomic.Int64

func (h *harness) MakeBackend(context.Context) (driver.Backend, error) {
	return OpenBackend(h.name), nil
}
func (h *harness) Capabilities() conformance.Capabilities {
	return conformance.Capabilities{ContentInMemory: true, IfMatchMissing: driver.CodeNotFound}
}
func (h *harness) Close() {}

func newHarness(ctx context.Context, t testing.TB) (conformance.Harness, error) {
	return &harness{name: fmt.Sprintf("conformance-%d", harnesses.Add(1))}, nil
}

func TestConformance(t *testing.T) { conformance.Run(t, newHarness) }

func TestConformanceEncrypted(t *testing.T) { conformance.RunEncrypted(t, newHarness) }

func BenchmarkConformance(b *testing.B) { conformance.RunBenchmarks(b, newHarness) }
