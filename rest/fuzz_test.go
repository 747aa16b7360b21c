package rest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/rest"
)

var fuzzStores atomic.Int32

// FuzzHandler sends arbitrary requests to the handler over a healthy
// in-memory store. Whatever the method, path, headers and body, the
// answer is never a 500 (a client's mistake is never the server's
// fault), every error has the documented JSON shape with a known code,
// and a request without the token learns nothing but 401.
func FuzzHandler(f *testing.F) {
	for _, s := range []struct {
		method, path, hdr, body string
		auth                    bool
	}{
		{"PUT", "/v1/objects/inc/00000001", "If-None-Match: *", "x", true},
		{"GET", "/v1/objects/inc/00000001", "", "", true},
		{"GET", "/v1/objects?prefix=inc/&limit=5", "", "", true},
		{"DELETE", "/v1/objects/inc/00000001", "If-Match: \"v1\"", "", true},
		{"POST", "/v1/objects:delete", "Content-Type: application/json", `{"keys":["inc/00000001","due/000000000001/00000001"]}`, true},
		{"POST", "/v1/messages", "", "", true},
		{"POST", "/v1/messages/00000001/envelopes", "Content-Type: application/octet-stream", "rcpt: a@b", true},
		{"PUT", "/v1/messages/00000001/content", "", "hello", true},
		{"POST", "/v1/messages/00000001/commit", "", "", true},
		{"GET", "/v1/envelopes/0000000100000001", "", "", true},
		{"PUT", "/v1/envelopes/0000000100000001", "If-Match: \"1\"", "x", true},
		{"POST", "/v1/envelopes/0000000100000001/claim", "", `{"lease":"1s"}`, true},
		{"GET", "/v1/due?limit=3", "", "", true},
		{"GET", "/v1/walk?cursor=zz", "", "", true},
		{"POST", "/v1/sweep", "", "", true},
		{"GET", "/v1/objects/../x", "", "", false},
		{"PUT", "/v1/objects/.tmp/x", "", "x", true},
		{"GET", "/healthz", "", "", false},
		{"BREW", "/v1/walk", "", "", true},
	} {
		f.Add(s.method, s.path, s.hdr, []byte(s.body), s.auth)
	}
	const token = "fuzz-token"
	b := mem.OpenBackend(fmt.Sprintf("rest-fuzz-%d", fuzzStores.Add(1)))
	st, err := queue.New(b, nil)
	if err != nil {
		f.Fatal(err)
	}
	h := rest.New(st, &rest.Options{Token: token, MaxBodySize: 1 << 16, TxIdleTimeout: time.Minute})
	f.Cleanup(func() { h.Shutdown(context.Background()); st.Close() })
	codes := map[string]int{"not_found": 404, "exists": 0, "conflict": 0, "corrupt": 502, "invalid": 0,
		"closed": 503, "unsupported": 501, "unavailable": 503, "lease_lost": 409, "unauthorized": 401,
		"too_large": 413, "method_not_allowed": 405}
	f.Fuzz(func(t *testing.T, method, path, hdr string, body []byte, auth bool) {
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, "http://mxq.test"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client can send
		}
		for _, line := range strings.Split(hdr, "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k != "" {
				req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
		req.Header.Del("Authorization")
		if auth {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		func() {
			defer func() {
				if r := recover(); r != nil && r != http.ErrAbortHandler {
					t.Fatalf("%s %s: panic %v", method, path, r)
				}
			}()
			h.ServeHTTP(w, req)
		}()
		st := w.Code
		if st == 500 {
			t.Fatalf("%s %s (%q, %d-byte body): 500 %s", method, path, hdr, len(body), w.Body.Bytes())
		}
		if !auth && st != 401 && !(req.URL.Path == "/healthz" && (req.Method == "GET" || req.Method == "HEAD")) {
			t.Fatalf("%s %s without the token: %d, want 401; body %s", method, path, st, w.Body.Bytes())
		}
		if st == 401 && w.Header().Get("WWW-Authenticate") == "" {
			t.Fatalf("%s %s: 401 without WWW-Authenticate", method, path)
		}
		if st < 400 || req.Method == "HEAD" {
			return
		}
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error.Message == "" {
			t.Fatalf("%s %s: %d with body %q: not the documented error shape", method, path, st, w.Body.Bytes())
		}
		want, known := codes[e.Error.Code]
		if !known {
			t.Fatalf("%s %s: unknown error code %q", method, path, e.Error.Code)
		}
		if want != 0 && want != st {
			t.Fatalf("%s %s: code %q with status %d, want %d", method, path, e.Error.Code, st, want)
		}
	})
}
