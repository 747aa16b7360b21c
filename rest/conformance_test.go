package rest_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/mxqueue/mxq/adapters/file"
	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/adapters/restclient"
	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/rest"
)

const testToken = "s3cret-token"

// harness serves one store through a Handler on an httptest.Server; its
// backends are REST clients of that server.
type harness struct {
	srv  *httptest.Server
	st   *queue.Store
	caps conformance.Capabilities
}

func (h *harness) MakeBackend(ctx context.Context) (driver.Backend, error) {
	return restclient.OpenBackend(ctx, h.srv.URL, &restclient.Options{Token: testToken})
}
func (h *harness) Capabilities() conformance.Capabilities { return h.caps }
func (h *harness) Close() {
	h.srv.Close()
	h.st.Close()
}

var harnesses atomic.Int64

func serve(st *queue.Store, caps conformance.Capabilities) *harness {
	h := rest.New(st, &rest.Options{Token: testToken})
	return &harness{srv: httptest.NewServer(h), st: st, caps: caps}
}

// TestConformance runs the suite through the REST client against the
// handler over a mem store.
func TestConformance(t *testing.T) {
	conformance.Run(t, func(ctx context.Context, t testing.TB) (conformance.Harness, error) {
		st, err := queue.New(mem.OpenBackend(fmt.Sprintf("rest-conformance-%d", harnesses.Add(1))), nil)
		if err != nil {
			return nil, err
		}
		return serve(st, conformance.Capabilities{ContentInMemory: true, IfMatchMissing: driver.CodeNotFound}), nil
	})
}

// TestConformanceFile runs the suite through the REST client against the
// handler over a file store: nothing of the content stays in this
// process, so the large-message test bounds the heap of client and server
// together.
func TestConformanceFile(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	conformance.Run(t, func(ctx context.Context, t testing.TB) (conformance.Harness, error) {
		st, err := file.Open(ctx, t.TempDir(), nil)
		if err != nil {
			return nil, err
		}
		return serve(st, conformance.Capabilities{IfMatchMissing: driver.CodeNotFound}), nil
	})
}
