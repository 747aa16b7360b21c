package rest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/rest"
)

// env is a Handler over a mem store on an httptest.Server, with raw access
// to the storage behind it.
type env struct {
	t      *testing.T
	url    string
	h      *rest.Handler
	st     *queue.Store
	name   string // of the mem storage
	raw    driver.Backend
	closed chan struct{} // a connection was closed by the server
}

func newEnv(t *testing.T, opts *rest.Options, wrap func(driver.Backend) driver.Backend) *env {
	t.Helper()
	return newEnvStore(t, opts, wrap, nil)
}

// newEnvStore is newEnv with the options of the Store (nil for the
// defaults).
func newEnvStore(t *testing.T, opts *rest.Options, wrap func(driver.Backend) driver.Backend, qopts *queue.Options) *env {
	t.Helper()
	name := fmt.Sprintf("rest-test-%d", harnesses.Add(1))
	b := mem.OpenBackend(name)
	if wrap != nil {
		b = wrap(b)
	}
	st, err := queue.New(b, qopts)
	if err != nil {
		t.Fatal(err)
	}
	if opts == nil {
		opts = &rest.Options{Token: testToken}
	}
	e := &env{t: t, st: st, name: name, raw: mem.OpenBackend(name), closed: make(chan struct{}, 100)}
	e.h = rest.New(st, opts)
	srv := httptest.NewUnstartedServer(e.h)
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			select {
			case e.closed <- struct{}{}:
			default:
			}
		}
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		st.Close()
	})
	e.url = srv.URL
	return e
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request with the test token unless hdr sets Authorization.
func (e *env) do(method, path string, body io.Reader, hdr ...string) *response {
	e.t.Helper()
	req, err := http.NewRequestWithContext(e.t.Context(), method, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: data}
}

// ok checks that r has the status and decodes its JSON body into v.
func (r *response) ok(t *testing.T, status int, v any) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if v != nil {
		if err := json.Unmarshal(r.body, v); err != nil {
			t.Fatalf("body %q: %v", r.body, err)
		}
	}
}

// fails checks that r is a JSON error with exactly the documented shape,
// the status and the code.
func (r *response) fails(t *testing.T, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q, want application/json", ct)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &top); err != nil || len(top) != 1 || top["error"] == nil {
		t.Fatalf("error body %q: want {\"error\":{...}} only", r.body)
	}
	var inner map[string]any
	if err := json.Unmarshal(top["error"], &inner); err != nil || len(inner) != 2 {
		t.Fatalf("error body %q: want {\"error\":{\"code\":...,\"message\":...}}", r.body)
	}
	c, _ := inner["code"].(string)
	m, _ := inner["message"].(string)
	if c != code || m == "" {
		t.Fatalf("error code %q message %q, want code %q and a message; body %s", c, m, code, r.body)
	}
}

// rawKeys lists every key in the storage.
func (e *env) rawKeys(prefix string) []string {
	e.t.Helper()
	keys, _, err := e.raw.List(e.t.Context(), prefix, "", 1000)
	if err != nil {
		e.t.Fatal(err)
	}
	return keys
}

// rawRequest writes a request by hand on a new connection, then closes it
// without reading the answer, and waits until the server closed its side.
func (e *env) rawRequest(req string) {
	e.t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := io.WriteString(c, req); err != nil {
		e.t.Fatal(err)
	}
	c.Close()
	select {
	case <-e.closed:
	case <-time.After(10 * time.Second):
		e.t.Fatal("the server did not close the connection")
	}
}

// begin opens a transaction through the queue layer with the envelopes.
func (e *env) begin(envs ...string) (string, []string) {
	e.t.Helper()
	var b struct{ Msgid string }
	e.do("POST", "/v1/messages", nil).ok(e.t, 201, &b)
	var ids []string
	for _, d := range envs {
		var v struct{ Evpid string }
		e.do("POST", "/v1/messages/"+b.Msgid+"/envelopes", strings.NewReader(d)).ok(e.t, 201, &v)
		ids = append(ids, v.Evpid)
	}
	return b.Msgid, ids
}

// gate is a Backend whose conditional Puts on reservations (the commit
// point) wait until released, once armed.
type gate struct {
	driver.Backend
	mu      sync.Mutex
	armed   bool
	entered chan struct{}
	release chan struct{}
}

func (g *gate) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	g.mu.Lock()
	hold := g.armed && strings.HasPrefix(key, "blk/") && opts.IfMatch != ""
	if hold {
		g.armed = false
	}
	g.mu.Unlock()
	if hold {
		close(g.entered)
		<-g.release
	}
	return g.Backend.Put(ctx, key, r, opts)
}

func newServer(t *testing.T, h http.Handler) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
