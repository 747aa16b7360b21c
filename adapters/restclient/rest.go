// Package restclient is the client of mxq's REST frontend (the package rest and
// "mxq serve"): a driver.Backend that keeps its objects in a store behind an
// HTTP server. The whole portable queue logic runs in the client, over the
// server's object layer, so a Store opened here behaves exactly like one
// opened on the server's own URL, and sees the same queue.
//
// # URLs
//
// http://host:port/prefix and https://host:port/prefix name a server; an
// optional path prefix is kept in front of the API's /v1/..., for a server
// mounted under a path by a reverse proxy. No query parameters are
// accepted, and the URL must not carry credentials: the bearer token comes
// from URLOpener.Token, else from the MXQ_TOKEN environment variable when
// the URL is opened. See URLOpener.
//
// # Keys
//
// A queue key becomes the path /v1/objects/<key>, byte for byte: keys are
// made of a-z 0-9 . _ - and "/" and need no escaping. A batch of deletes
// (driver.MultiDeleter) is one POST /v1/objects:delete; a server without
// that endpoint gets one DELETE per key.
//
// # Errors
//
// The server's JSON error code decides the driver.Code: not_found is
// CodeNotFound, exists and conflict (412) are CodePrecondition, invalid is
// CodeInvalid, unsupported CodeUnsupported, corrupt CodeCorrupt and
// unavailable CodeUnavailable. Without a body the status decides: 404,
// 412, 400, 501, and 5xx (CodeUnavailable). Connection failures and
// timeouts are CodeUnavailable. 401 and 403 are CodeUnknown, with a message
// that names MXQ_TOKEN: retrying would not help.
package restclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Options are the options of Open.
type Options struct {
	// Queue are the options of the Store.
	Queue queue.Options
	// Token is the bearer token the server wants, if any.
	Token string
	// Client sends the requests. Default: a client with a dedicated
	// transport, sized for a Store's parallel requests, with no overall
	// timeout (bodies stream; ctx bounds each request).
	Client *http.Client
}

// Open returns a Store over the mxq server at baseURL (http:// or https://,
// with an optional path prefix). opts may be nil. It does not contact the
// server; use Store.Ping for that.
func Open(ctx context.Context, baseURL string, opts *Options) (*queue.Store, error) {
	if opts == nil {
		opts = new(Options)
	}
	b, err := OpenBackend(ctx, baseURL, opts)
	if err != nil {
		return nil, err
	}
	return queue.New(b, &opts.Queue)
}

// OpenBackend returns the Backend over the server at baseURL, for tests
// and tools that drive a Backend directly. opts.Queue is not used.
func OpenBackend(ctx context.Context, baseURL string, opts *Options) (driver.Backend, error) {
	if opts == nil {
		opts = new(Options)
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, &queue.Error{Op: "open", ID: queue.RedactURL(baseURL), Kind: queue.ErrInvalid, Err: errors.New("not a URL")}
	}
	return openBackend(u, opts.Token, opts.Client)
}

type backend struct {
	base    string // scheme://host[:port][/prefix], no trailing slash
	token   string
	client  *http.Client
	own     *http.Transport // closed in Close when the client is ours
	noBatch atomic.Bool     // the server has no POST /v1/objects:delete
}

var (
	_ driver.Backend      = (*backend)(nil)
	_ driver.Stater       = (*backend)(nil)
	_ driver.Pinger       = (*backend)(nil)
	_ driver.MultiDeleter = (*backend)(nil)
)

func openBackend(u *url.URL, token string, client *http.Client) (*backend, error) {
	invalid := func(format string, args ...any) error {
		return &queue.Error{Op: "open", ID: u.Redacted(), Kind: queue.ErrInvalid, Err: fmt.Errorf(format, args...)}
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, invalid("scheme %q: want http or https", u.Scheme)
	}
	if u.User != nil {
		return nil, invalid("credentials do not belong in the URL: set MXQ_TOKEN")
	}
	if u.Host == "" || u.Opaque != "" {
		return nil, invalid("no host: want %s://host:port/prefix", u.Scheme)
	}
	if u.Fragment != "" {
		return nil, invalid("a fragment (#...) means nothing here")
	}
	if _, err := driver.URLParams(u); err != nil {
		return nil, err
	}
	if strings.ContainsAny(token, "\r\n") {
		return nil, invalid("the token contains a line break")
	}
	prefix := strings.TrimRight(u.EscapedPath(), "/")
	b := &backend{base: u.Scheme + "://" + u.Host + prefix, token: token, client: client}
	if b.client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns = 256
		t.MaxIdleConnsPerHost = 64
		// Shorter than the server's idle timeout, so that a request is not
		// sent on a connection the server is closing.
		t.IdleConnTimeout = 30 * time.Second
		t.ResponseHeaderTimeout = 2 * time.Minute
		b.own = t
		b.client = &http.Client{Transport: t}
	}
	return b, nil
}

// httpError is a response that was not a success.
type httpError struct {
	method, path string
	status       int
	code         string // the JSON code, if the body had one
	msg          string
}

func (e *httpError) Error() string {
	s := fmt.Sprintf("rest: %s %s: %d %s", e.method, e.path, e.status, http.StatusText(e.status))
	if e.status == http.StatusUnauthorized || e.status == http.StatusForbidden {
		s += ": the server refused the token; set MXQ_TOKEN to the token of mxq serve"
	}
	if e.code != "" {
		s += " (" + e.code + ")"
	}
	if e.msg != "" {
		s += ": " + e.msg
	}
	return s
}

// do sends a request. A response with a status other than want becomes an
// *httpError, its body read and closed.
func (b *backend) do(ctx context.Context, method, path string, body io.Reader, size int64, hdr http.Header, want ...int) (*http.Response, error) {
	rctx := ctx
	if method == http.MethodPut || method == http.MethodDelete || method == http.MethodPost {
		// A write whose request reached the server may land after the
		// caller gave up, and the caller would then believe it failed
		// while the object changes under it. So once ctx is done, a
		// write whose body is not complete is aborted (the server
		// stores nothing from a broken body), and one that was sent
		// whole waits for its answer, at most writeSettle. A write
		// whose ctx is done already is not sent at all.
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var cancel context.CancelFunc
		rctx, cancel = context.WithCancel(context.WithoutCancel(ctx))
		defer cancel()
		var tb *trackedBody
		if body != nil {
			tb = &trackedBody{r: body, size: size}
			body = tb
		}
		stop := context.AfterFunc(ctx, func() {
			if tb != nil && !tb.sent() {
				cancel()
				return
			}
			time.AfterFunc(writeSettle, cancel)
		})
		defer stop()
	}
	req, err := http.NewRequestWithContext(rctx, method, b.base+path, body)
	if err != nil {
		return nil, err
	}
	switch {
	case body == nil:
	case size == 0:
		req.Body, req.ContentLength = http.NoBody, 0
		req.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	case size > 0:
		req.ContentLength = size
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if b.token != "" {
		req.Header.Set("Authorization", "Bearer "+b.token)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, &url.Error{Op: method, URL: req.URL.String(), Err: ctx.Err()}
		}
		return nil, err
	}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	he := &httpError{method: method, path: req.URL.Path, status: resp.StatusCode}
	if method != http.MethodHead {
		var eb struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
			he.code, he.msg = eb.Error.Code, eb.Error.Message
		} else if s := strings.TrimSpace(string(data)); s != "" {
			he.msg = s[:min(len(s), 200)]
		}
	}
	return nil, he
}

// writeSettle bounds the wait for the answer to a write that was sent
// whole before its ctx was done.
const writeSettle = 10 * time.Second

// trackedBody tells whether a request body was read to its end.
type trackedBody struct {
	r    io.Reader
	size int64 // -1 if unknown
	mu   sync.Mutex
	n    int64
	eof  bool
}

func (t *trackedBody) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.mu.Lock()
	t.n += int64(n)
	if err == io.EOF {
		t.eof = true
	}
	t.mu.Unlock()
	return n, err
}

func (t *trackedBody) sent() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.eof || t.size >= 0 && t.n >= t.size
}

func objectPath(key string) string { return "/v1/objects/" + key }

// version reads the ETag of a response.
func version(resp *http.Response) (driver.Version, error) {
	tag := resp.Header.Get("ETag")
	if len(tag) < 3 || tag[0] != '"' || tag[len(tag)-1] != '"' {
		return "", fmt.Errorf("rest: %s %s: the response has no strong ETag (%q)", resp.Request.Method, resp.Request.URL.Path, tag)
	}
	return driver.Version(tag[1 : len(tag)-1]), nil
}

// Get implements driver.Backend.Get.
func (b *backend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	resp, err := b.do(ctx, http.MethodGet, objectPath(key), nil, 0, nil, http.StatusOK)
	if err != nil {
		return nil, driver.Attrs{}, err
	}
	v, err := version(resp)
	if err != nil {
		resp.Body.Close()
		return nil, driver.Attrs{}, err
	}
	return resp.Body, driver.Attrs{Version: v, Size: resp.ContentLength}, nil
}

// Stat implements driver.Stater with a HEAD request.
func (b *backend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	resp, err := b.do(ctx, http.MethodHead, objectPath(key), nil, 0, nil, http.StatusOK)
	if err != nil {
		return driver.Attrs{}, err
	}
	resp.Body.Close()
	v, err := version(resp)
	if err != nil {
		return driver.Attrs{}, err
	}
	return driver.Attrs{Version: v, Size: resp.ContentLength}, nil
}

// Put implements driver.Backend.Put. The body streams: with an unknown
// size it is sent chunked.
func (b *backend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	hdr := make(http.Header)
	if opts.IfNoneMatch {
		hdr.Set("If-None-Match", "*")
	}
	if opts.IfMatch != "" {
		hdr.Set("If-Match", `"`+string(opts.IfMatch)+`"`)
	}
	hdr.Set("Content-Type", "application/octet-stream")
	size := opts.Size
	if size < 0 {
		size = -1
	}
	// The transport closes a body that is an io.Closer; the caller's
	// reader is not ours to close. Readers of known types stay as they
	// are, so that the transport can rewind them.
	if _, ok := r.(io.Closer); ok {
		r = struct{ io.Reader }{r}
	}
	resp, err := b.do(ctx, http.MethodPut, objectPath(key), r, size, hdr, http.StatusNoContent, http.StatusOK, http.StatusCreated)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	return version(resp)
}

// Delete implements driver.Backend.Delete.
func (b *backend) Delete(ctx context.Context, key string) error {
	resp, err := b.do(ctx, http.MethodDelete, objectPath(key), nil, 0, nil, http.StatusNoContent, http.StatusOK)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// DeleteMulti implements driver.MultiDeleter with one POST
// /v1/objects:delete. A server without that endpoint (it answers 404 or
// 405) gets one DELETE per key, from then on.
func (b *backend) DeleteMulti(ctx context.Context, keys []string) error {
	if !b.noBatch.Load() {
		data, err := json.Marshal(struct {
			Keys []string `json:"keys"`
		}{keys})
		if err != nil {
			return err
		}
		resp, err := b.do(ctx, http.MethodPost, "/v1/objects:delete", bytes.NewReader(data), int64(len(data)), http.Header{"Content-Type": {"application/json"}}, http.StatusNoContent, http.StatusOK)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		var he *httpError
		if !errors.As(err, &he) || he.status != http.StatusNotFound && he.status != http.StatusMethodNotAllowed {
			return err
		}
		b.noBatch.Store(true)
	}
	for _, k := range keys {
		if err := b.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// List implements driver.Backend.List.
func (b *backend) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	q := url.Values{}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	if startAfter != "" {
		q.Set("start_after", startAfter)
	}
	q.Set("limit", strconv.Itoa(limit))
	resp, err := b.do(ctx, http.MethodGet, "/v1/objects?"+q.Encode(), nil, 0, nil, http.StatusOK)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	var page struct {
		Keys []string `json:"keys"`
		More *bool    `json:"more"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&page); err != nil || page.More == nil {
		return nil, false, fmt.Errorf("%w: rest: list %q: the response is not {\"keys\":[...],\"more\":bool}: %v", queue.ErrCorrupt, prefix, err)
	}
	if len(page.Keys) > limit {
		return nil, false, fmt.Errorf("%w: rest: list %q: %d keys over a limit of %d", queue.ErrCorrupt, prefix, len(page.Keys), limit)
	}
	return page.Keys, *page.More, nil
}

// Ping implements driver.Pinger with a listing of one key, which needs the
// token, unlike /healthz.
func (b *backend) Ping(ctx context.Context) error {
	_, _, err := b.List(ctx, "inc/", "", 1)
	return err
}

// ErrorCode implements driver.Backend.ErrorCode.
func (b *backend) ErrorCode(err error) driver.Code {
	var he *httpError
	if errors.As(err, &he) {
		switch he.code {
		case "not_found":
			return driver.CodeNotFound
		case "exists", "conflict":
			if he.status == http.StatusPreconditionFailed {
				return driver.CodePrecondition
			}
			return driver.CodeUnknown
		case "invalid", "too_large":
			return driver.CodeInvalid
		case "unsupported":
			return driver.CodeUnsupported
		case "corrupt":
			return driver.CodeCorrupt
		case "unavailable", "closed":
			return driver.CodeUnavailable
		case "unauthorized", "internal", "method_not_allowed":
			return driver.CodeUnknown
		}
		switch s := he.status; {
		case s == http.StatusNotFound:
			return driver.CodeNotFound
		case s == http.StatusPreconditionFailed:
			return driver.CodePrecondition
		case s == http.StatusBadRequest || s == http.StatusRequestEntityTooLarge:
			return driver.CodeInvalid
		case s == http.StatusNotImplemented:
			return driver.CodeUnsupported
		case s == http.StatusTooManyRequests || s == http.StatusRequestTimeout || s >= 500:
			return driver.CodeUnavailable
		}
		return driver.CodeUnknown
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return driver.CodeUnknown
	}
	var ne net.Error
	var ue *url.Error
	if errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, io.ErrUnexpectedEOF) {
		return driver.CodeUnavailable
	}
	return driver.CodeUnknown
}

// Close implements driver.Backend.Close. It closes the idle connections of
// the client it made; a client from Options is left alone.
func (b *backend) Close() error {
	if b.own != nil {
		b.own.CloseIdleConnections()
	}
	return nil
}
