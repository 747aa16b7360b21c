// Package rest is the REST frontend of mxq: an http.Handler that serves
// any *queue.Store over HTTP, so that MTAs on other machines, in other
// languages, or started elsewhere with the same URL share one queue. The
// command "mxq serve" runs it; the adapter in adapters/restclient is its Go
// client. docs/rest.md documents the API with curl examples.
//
// # Layers
//
// The API under /v1 has two layers.
//
// The object layer, /v1/objects, is the driver.Backend of the store: get,
// put with a precondition, delete and list of opaque objects by key. The
// Go client speaks only this layer, so that the whole portable queue logic
// (commit protocol, walk, sweep, leases) runs in the client exactly as it
// does over a cloud store. It is also the contract for anyone who puts
// their own storage behind mxq: implement these few requests and every
// mxq client works against it.
//
// The queue layer, /v1/messages, /v1/envelopes, /v1/due, /v1/walk,
// /v1/sweep and /v1/quarantine, offers every Store operation to curl users
// and to MTAs that do not link the Go library, claims included: the
// Handler's Store is one node, and its clients tell their claims apart by
// version and lease token (see lease.go). A transaction begun with POST
// /v1/messages stays open in the server until it is committed or rolled
// back, or until it has been idle for Options.TxIdleTimeout; then it is
// rolled back.
//
// # Errors
//
// Every error is JSON, {"error":{"code":"...","message":"..."}}, with a
// stable code per queue sentinel (see Code) and the matching status. A
// client's mistake is never a 5xx.
//
// # Security
//
// With Options.Token set, every request but GET /healthz needs the header
// "Authorization: Bearer <token>", compared in constant time. Bodies are
// bounded by Options.MaxBodySize and Options.MaxEnvelopeSize, and the
// number of requests served at once by Options.MaxInFlight.
package rest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Options configure a Handler. The zero value gives the defaults.
type Options struct {
	// Token is the bearer token that every request except GET /healthz
	// must carry. Empty: no authentication.
	Token string
	// MaxBodySize bounds the body of a request that stores message
	// content or an object. Default: 1 GiB.
	MaxBodySize int64
	// MaxEnvelopeSize bounds the body of a request that stores envelope
	// data through the queue layer. Default, and upper bound: the Store's
	// own limit (Store.MaxEnvelopeSize), so that a larger envelope gets
	// 413 before its body is read.
	MaxEnvelopeSize int64
	// MaxInFlight bounds the requests served at once; more get 503 with
	// code "unavailable". /healthz and /metrics do not count. Default: 256.
	MaxInFlight int
	// BodyIdleTimeout bounds the wait for each piece of a request body:
	// a client that sends nothing for this long has its request failed
	// and its connection closed, whatever the body's size. The server's
	// whole-request timeout (http.Server.ReadTimeout) still bounds the
	// total. Default: 1 minute.
	BodyIdleTimeout time.Duration
	// TxIdleTimeout is how long a transaction opened through the queue
	// layer may stay without a request before it is rolled back.
	// Default: 5 minutes.
	TxIdleTimeout time.Duration
	// Logger receives one line per failed request and per rolled-back
	// transaction. Tokens are never logged. Default: discard.
	Logger *slog.Logger
	// Metrics, if set, receives the handler's Prometheus collectors, and
	// GET /metrics serves it (behind the token, if there is one).
	Metrics *prometheus.Registry
}

// Handler serves a *queue.Store over HTTP. Create it with New; it is safe
// for concurrent use.
type Handler struct {
	st    *queue.Store
	be    driver.Backend
	opts  Options
	log   *slog.Logger
	mux   *http.ServeMux
	sem   chan struct{}
	token [sha256.Size]byte
	m     *metrics

	mu      sync.Mutex
	txs     map[queue.MsgID]*openTx
	closing bool
}

var _ http.Handler = (*Handler)(nil)

// New returns a Handler over st. opts may be nil. The Handler does not own
// st: the caller closes it after Shutdown.
func New(st *queue.Store, opts *Options) *Handler {
	h := &Handler{st: st, be: st.Backend(), txs: make(map[queue.MsgID]*openTx)}
	if opts != nil {
		h.opts = *opts
	}
	o := &h.opts
	if o.MaxBodySize <= 0 {
		o.MaxBodySize = 1 << 30
	}
	if limit := int64(st.MaxEnvelopeSize()); o.MaxEnvelopeSize <= 0 || o.MaxEnvelopeSize > limit {
		o.MaxEnvelopeSize = limit
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 256
	}
	if o.TxIdleTimeout <= 0 {
		o.TxIdleTimeout = 5 * time.Minute
	}
	if o.BodyIdleTimeout <= 0 {
		o.BodyIdleTimeout = time.Minute
	}
	h.log = o.Logger
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if o.Token != "" {
		h.token = sha256.Sum256([]byte(o.Token))
	}
	h.sem = make(chan struct{}, o.MaxInFlight)
	h.m = newMetrics(o.Metrics, h)
	h.routes()
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The mux would redirect a path with "..", "." or "//" to its clean
	// form; in this API such a path is always a mistake.
	if !cleanPath(r.URL.Path) {
		// Without the token, not even the path's fault is told.
		if r.URL.Path != "/healthz" && !h.authorized(r) {
			h.fail(w, r, "invalid", errf(CodeUnauthorized, "missing or wrong bearer token"))
			return
		}
		h.fail(w, r, "invalid", errf(CodeInvalid, "path %q is not clean: no empty, \".\" or \"..\" segments", r.URL.Path))
		return
	}
	h.mux.ServeHTTP(w, r)
}

func cleanPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	for _, seg := range strings.Split(p[1:], "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return !strings.Contains(p, "//")
}

// route is one endpoint: its pattern, the operation name used in metrics
// and logs, and whether it needs the token and counts against MaxInFlight.
type route struct {
	method, path string
	op           string
	open         bool // no token, no in-flight limit
	fn           func(w http.ResponseWriter, r *http.Request) error
}

func (h *Handler) routes() {
	rs := []route{
		{"GET", "/healthz", "healthz", true, h.healthz},

		{"GET", "/v1/objects", "object_list", false, h.objectList},
		{"GET", "/v1/objects/{key...}", "object_get", false, h.objectGet},
		{"HEAD", "/v1/objects/{key...}", "object_stat", false, h.objectGet},
		{"PUT", "/v1/objects/{key...}", "object_put", false, h.objectPut},
		{"DELETE", "/v1/objects/{key...}", "object_delete", false, h.objectDelete},
		{"POST", "/v1/objects:delete", "object_delete_batch", false, h.objectDeleteBatch},

		{"POST", "/v1/messages", "begin", false, h.begin},
		{"POST", "/v1/messages/{msgid}/envelopes", "add_envelope", false, h.addEnvelope},
		{"GET", "/v1/messages/{msgid}/envelopes", "envelopes", false, h.envelopes},
		{"PUT", "/v1/messages/{msgid}/content", "write_content", false, h.writeContent},
		{"GET", "/v1/messages/{msgid}/content", "open_content", false, h.openContent},
		{"POST", "/v1/messages/{msgid}/commit", "commit", false, h.commit},
		{"POST", "/v1/messages/{msgid}/rollback", "rollback", false, h.rollback},
		{"POST", "/v1/messages/{msgid}/quarantine", "quarantine", false, h.quarantine},
		{"DELETE", "/v1/messages/{msgid}", "delete_message", false, h.deleteMessage},
		{"GET", "/v1/envelopes/{evpid}", "load", false, h.load},
		{"PUT", "/v1/envelopes/{evpid}", "update", false, h.update},
		{"DELETE", "/v1/envelopes/{evpid}", "delete_envelope", false, h.deleteEnvelope},
		{"POST", "/v1/envelopes/{evpid}/claim", "claim", false, h.claim},
		{"POST", "/v1/envelopes/{evpid}/renew", "renew", false, h.renew},
		{"POST", "/v1/envelopes/{evpid}/release", "release", false, h.releaseLeased},
		{"POST", "/v1/envelopes/{evpid}/defer", "defer", false, h.deferLeased},
		{"PUT", "/v1/envelopes/{evpid}/leased", "update_leased", false, h.updateLeased},
		{"DELETE", "/v1/envelopes/{evpid}/leased", "delete_leased", false, h.deleteLeased},
		{"GET", "/v1/due", "due", false, h.due},
		{"GET", "/v1/walk", "walk", false, h.walk},
		{"POST", "/v1/sweep", "sweep", false, h.sweep},
		{"GET", "/v1/quarantine", "quarantined", false, h.quarantined},
		{"GET", "/v1/quarantine/{msgid}/content", "open_quarantined", false, h.openQuarantined},
	}
	if h.opts.Metrics != nil {
		ph := promhttp.HandlerFor(h.opts.Metrics, promhttp.HandlerOpts{})
		rs = append(rs, route{"GET", "/metrics", "metrics", false, func(w http.ResponseWriter, r *http.Request) error {
			ph.ServeHTTP(w, r)
			return nil
		}})
	}
	h.mux = http.NewServeMux()
	allow := make(map[string][]string)
	var order []string
	for _, rt := range rs {
		h.mux.Handle(rt.method+" "+rt.path, h.wrap(rt))
		if _, ok := allow[rt.path]; !ok {
			order = append(order, rt.path)
		}
		allow[rt.path] = append(allow[rt.path], rt.method)
	}
	// The same paths without a method answer 405 in JSON, where the
	// mux alone would answer in plain text.
	for _, p := range order {
		methods := allow[p]
		if slices.Contains(methods, "GET") && !slices.Contains(methods, "HEAD") {
			methods = append(methods, "HEAD")
		}
		allowed := strings.Join(methods, ", ")
		h.mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
			// Only GET (and HEAD) /healthz go without the token.
			if !h.authorized(r) {
				h.fail(w, r, "method_not_allowed", errf(CodeUnauthorized, "missing or wrong bearer token"))
				return
			}
			w.Header().Set("Allow", allowed)
			h.fail(w, r, "method_not_allowed", errf(CodeMethodNotAllowed, "%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allowed))
		})
	}
	// Without the token, nothing tells which endpoints exist.
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !h.authorized(r) {
			h.fail(w, r, "not_found", errf(CodeUnauthorized, "missing or wrong bearer token"))
			return
		}
		h.fail(w, r, "not_found", errf(CodeNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
}

// wrap adds authentication, the in-flight limit, error responses, logs
// and metrics to a route.
func (h *Handler) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		code := "ok"
		defer func() {
			h.m.observe(rt.op, code, time.Since(start))
		}()
		if !rt.open {
			if !h.authorized(r) {
				code = h.fail(sw, r, rt.op, errf(CodeUnauthorized, "missing or wrong bearer token"))
				return
			}
			select {
			case h.sem <- struct{}{}:
				defer func() { <-h.sem }()
			default:
				sw.Header().Set("Retry-After", "1")
				code = h.fail(sw, r, rt.op, errf(CodeUnavailable, "too many requests in flight (%d); retry later", h.opts.MaxInFlight))
				return
			}
			h.m.inflight.Inc()
			defer h.m.inflight.Dec()
		}
		if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
			r.Body = &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(sw), idle: h.opts.BodyIdleTimeout}
		}
		if err := rt.fn(sw, r); err != nil {
			if sw.wrote {
				// Headers went out already: the body is cut short, which
				// the client sees as an incomplete response.
				code = string(codeOf(err))
				h.log.Warn("response aborted", "op", rt.op, "path", r.URL.Path, "err", err)
				panic(http.ErrAbortHandler)
			}
			code = h.fail(sw, r, rt.op, err)
		}
	})
}

// idleBody fails a read of a request body that waits longer than idle
// for the client, by moving the connection's read deadline before each
// read.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.rc.SetReadDeadline(time.Time{}) // all read: the server's own timeouts again
	}
	return n, err
}

// authorized reports whether r carries the token. The comparison takes the
// same time whatever the token is: both sides are hashed first.
func (h *Handler) authorized(r *http.Request) bool {
	if h.opts.Token == "" {
		return true
	}
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(got[:], h.token[:]) == 1
}

func (h *Handler) healthz(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if err := h.st.Ping(ctx); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// statusWriter records whether the header was written.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status = code
		w.wrote = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.status = http.StatusOK
		w.wrote = true
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Shutdown rolls back every transaction still open and makes the queue
// layer refuse new ones. Call it after http.Server.Shutdown has let the
// requests in flight finish, and before closing the Store.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	h.closing = true
	txs := h.txs
	h.txs = make(map[queue.MsgID]*openTx)
	h.mu.Unlock()
	var first error
	for id, e := range txs {
		e.timer.Stop()
		e.mu.Lock()
		err := e.tx.Rollback(ctx)
		e.mu.Unlock()
		h.m.openTx.Dec()
		if err != nil && first == nil {
			first = err
		}
		h.log.Info("rolled back open transaction at shutdown", "msgid", id.String(), "err", err)
	}
	return first
}
