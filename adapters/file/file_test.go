package file

import (
	"context"
	"testing"

	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
)

type harness struct{ root string }

func (h *harness) MakeBackend(context.Context) (queue.Backend, error) { return openBackend(h.root) }
func (h *harness) Capabilities() conformance.Capabilities {
	return conformance.Capabilities{IfMatchMissing: queue.CodeNotFound}
}
func (h *harness) Close() {}

func newHarness(ctx context.Context, t testing.TB) (conformance.Harness, error) {
	return &harness{root: t.TempDir()}, nil
}

func TestConformance(t *testing.T) { conformance.Run(t, newHarness) }

func BenchmarkConformance(b *testing.B) { conformance.RunBenchmarks(b, newHarness) }
