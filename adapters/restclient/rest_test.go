package restclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// The in-process conformance run, against the handler over mem, is in the
// package rest (the server); this one runs against a real "mxq serve",
// which scripts/services starts over MinIO.

type harness struct {
	url, token, prefix string
}

func (h *harness) MakeBackend(ctx context.Context) (driver.Backend, error) {
	b, err := OpenBackend(ctx, h.url, &Options{Token: h.token})
	if err != nil {
		return nil, err
	}
	// Every subtest gets a key space of its own on the shared server.
	return driver.Prefixed(b, h.prefix), nil
}
func (h *harness) Capabilities() conformance.Capabilities { return conformance.Capabilities{} }
func (h *harness) Close()                                 {}

// MakeDeadBackend implements conformance.DeadHarness: a port nothing
// listens on, and a wrong token when the server wants one. A REST server
// has no bucket of its own.
func (h *harness) MakeDeadBackend(ctx context.Context, d conformance.Dead) (driver.Backend, error) {
	switch d {
	case conformance.DeadEndpoint:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		addr := ln.Addr().String()
		ln.Close()
		return OpenBackend(ctx, "http://"+addr, nil)
	case conformance.DeadCredentials:
		if h.token == "" {
			return nil, nil
		}
		return OpenBackend(ctx, h.url, &Options{Token: "wrong-" + h.token})
	}
	return nil, nil
}

var runs atomic.Int64

func TestConformance(t *testing.T) {
	u := os.Getenv("MXQ_TEST_REST_URL")
	if u == "" {
		if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
			t.Fatal("MXQ_TEST_REST_URL not set and MXQ_REQUIRE_SERVICES=1: start the server with scripts/services start rest")
		}
		t.Skip("MXQ_TEST_REST_URL not set; see docs/services.md")
	}
	token := os.Getenv("MXQ_TOKEN")
	run := fmt.Sprintf("test-%d-%d", time.Now().UnixNano(), os.Getpid())
	t.Logf("server %s, key prefix %s/", u, run)
	mk := func(ctx context.Context, t testing.TB) (conformance.Harness, error) {
		return &harness{url: u, token: token, prefix: fmt.Sprintf("%s/%d/", run, runs.Add(1))}, nil
	}
	conformance.Run(t, mk)
	// End to end: the client seals, so the server never sees plaintext.
	conformance.RunEncrypted(t, mk)
}

func TestURLs(t *testing.T) {
	cases := []struct {
		name, url string
		base      string // "" when the URL is refused
	}{
		{"http", "http://127.0.0.1:8025", "http://127.0.0.1:8025"},
		{"trailing slash", "http://127.0.0.1:8025/", "http://127.0.0.1:8025"},
		{"https with prefix", "https://mxq.example.net/queue/", "https://mxq.example.net/queue"},
		{"deep prefix", "http://h/a/b", "http://h/a/b"},
		{"ipv6", "http://[::1]:8025", "http://[::1]:8025"},
		{"userinfo", "http://user:secret@127.0.0.1:8025", ""},
		{"user only", "http://token@127.0.0.1:8025", ""},
		{"unknown parameter", "http://127.0.0.1:8025?token=x", ""},
		{"prefix parameter", "http://127.0.0.1:8025/?prefix=a", ""},
		{"no host", "http:///path", ""},
		{"opaque", "http:127.0.0.1", ""},
		{"fragment", "http://127.0.0.1:8025/#x", ""},
		{"other scheme", "ftp://127.0.0.1", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := OpenBackend(t.Context(), c.url, nil)
			if c.base == "" {
				if !errors.Is(err, queue.ErrInvalid) {
					t.Fatalf("OpenBackend(%q) = %v, want an error wrapping ErrInvalid", c.url, err)
				}
				if err != nil && strings.Contains(err.Error(), "secret") {
					t.Fatalf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenBackend(%q): %v", c.url, err)
			}
			if got := b.(*backend).base; got != c.base {
				t.Fatalf("base %q, want %q", got, c.base)
			}
		})
	}
	// Through the mux, as an operator's URL arrives.
	_, err := queue.Open(t.Context(), "https://u:p@127.0.0.1/")
	if !errors.Is(err, queue.ErrInvalid) {
		t.Fatalf("queue.Open with userinfo: %v", err)
	}
}

func TestTokenFromEnvironment(t *testing.T) {
	t.Setenv("MXQ_TOKEN", "from-env")
	var got string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"keys":[],"more":false}`))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	st, err := queue.Open(t.Context(), "http://"+ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got != "Bearer from-env" {
		t.Fatalf("Authorization %q, want the token of MXQ_TOKEN", got)
	}
	// URLOpener.Token wins over the environment.
	u, _ := url.Parse("http://" + ln.Addr().String())
	st2, err := (&URLOpener{Token: "field"}).OpenStoreURL(t.Context(), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	st2.Ping(t.Context())
	if got != "Bearer field" {
		t.Fatalf("Authorization %q, want the URLOpener's token", got)
	}
}

func TestErrorCode(t *testing.T) {
	b := &backend{}
	cases := []struct {
		name string
		err  error
		want driver.Code
	}{
		{"404 not_found", &httpError{status: 404, code: "not_found"}, driver.CodeNotFound},
		{"404 bare", &httpError{status: 404}, driver.CodeNotFound},
		{"412 exists", &httpError{status: 412, code: "exists"}, driver.CodePrecondition},
		{"412 conflict", &httpError{status: 412, code: "conflict"}, driver.CodePrecondition},
		{"412 bare", &httpError{status: 412}, driver.CodePrecondition},
		{"409 conflict is not a precondition", &httpError{status: 409, code: "conflict"}, driver.CodeUnknown},
		{"400", &httpError{status: 400, code: "invalid"}, driver.CodeInvalid},
		{"413", &httpError{status: 413, code: "too_large"}, driver.CodeInvalid},
		{"501", &httpError{status: 501, code: "unsupported"}, driver.CodeUnsupported},
		{"502 corrupt", &httpError{status: 502, code: "corrupt"}, driver.CodeCorrupt},
		{"503", &httpError{status: 503, code: "unavailable"}, driver.CodeUnavailable},
		{"502 bare, from a proxy", &httpError{status: 502}, driver.CodeUnavailable},
		{"500 internal", &httpError{status: 500, code: "internal"}, driver.CodeUnknown},
		{"401", &httpError{status: 401, code: "unauthorized"}, driver.CodeUnknown},
		{"403 bare", &httpError{status: 403}, driver.CodeUnknown},
		{"429", &httpError{status: 429}, driver.CodeUnavailable},
		{"refused", &url.Error{Op: "Get", URL: "http://x", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}, driver.CodeUnavailable},
		{"cancelled", &url.Error{Op: "Get", URL: "http://x", Err: context.Canceled}, driver.CodeUnknown},
		{"other", errors.New("x"), driver.CodeUnknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := b.ErrorCode(c.err); got != c.want {
				t.Fatalf("ErrorCode(%v) = %d, want %d", c.err, got, c.want)
			}
		})
	}
}

// TestDeleteMultiFallback: a batch of deletes is one POST
// /v1/objects:delete; a server without that endpoint gets a DELETE per
// key, and is not asked for a batch again.
func TestDeleteMultiFallback(t *testing.T) {
	for _, batches := range []bool{true, false} {
		t.Run(fmt.Sprintf("server with batches %v", batches), func(t *testing.T) {
			var posts, deletes atomic.Int64
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch {
				case r.Method == http.MethodPost && r.URL.Path == "/v1/objects:delete":
					posts.Add(1)
					if !batches {
						w.WriteHeader(http.StatusMethodNotAllowed)
						return
					}
					w.WriteHeader(http.StatusNoContent)
				case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/v1/objects/"):
					deletes.Add(1)
					w.WriteHeader(http.StatusNoContent)
				default:
					w.WriteHeader(http.StatusBadRequest)
				}
			})}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(ln)
			defer srv.Close()
			b, err := OpenBackend(t.Context(), "http://"+ln.Addr().String(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			keys := []string{"due/000000000001/a", "due/000000000001/b", "own/n/c"}
			for range 2 {
				if err := driver.DeleteMulti(t.Context(), b, keys); err != nil {
					t.Fatal(err)
				}
			}
			wantPosts, wantDeletes := int64(2), int64(0)
			if !batches {
				wantPosts, wantDeletes = 1, 6
			}
			if posts.Load() != wantPosts || deletes.Load() != wantDeletes {
				t.Errorf("%d batch requests and %d deletes for two batches of 3, want %d and %d", posts.Load(), deletes.Load(), wantPosts, wantDeletes)
			}
		})
	}
}
