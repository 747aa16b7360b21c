package rest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/mxqueue/mxq/queue"
)

// Code is the stable code in a JSON error body:
//
//	{"error":{"code":"not_found","message":"mxq: load 1a2b3c4d00000001: not found"}}
//
// Codes never change meaning; messages are for people and may change.
type Code string

// The error codes, with their HTTP status.
const (
	CodeNotFound         Code = "not_found"          // 404: queue.ErrNotFound, or no such endpoint
	CodeExists           Code = "exists"             // 412 with If-None-Match, else 409: queue.ErrExists
	CodeConflict         Code = "conflict"           // 412 with If-Match, else 409: queue.ErrConflict
	CodeCorrupt          Code = "corrupt"            // 502: queue.ErrCorrupt, stored data does not verify
	CodeInvalid          Code = "invalid"            // 400 (428 for a missing If-Match): queue.ErrInvalid, a malformed request
	CodeClosed           Code = "closed"             // 503: queue.ErrClosed, the server is shutting down
	CodeUnsupported      Code = "unsupported"        // 501: queue.ErrUnsupported
	CodeUnavailable      Code = "unavailable"        // 503: queue.ErrUnavailable, too many requests, or a timeout
	CodeLeaseLost        Code = "lease_lost"         // 409: queue.ErrLeaseLost
	CodeUnauthorized     Code = "unauthorized"       // 401: missing or wrong bearer token
	CodeTooLarge         Code = "too_large"          // 413: the body exceeds a limit
	CodeMethodNotAllowed Code = "method_not_allowed" // 405: see the Allow header
	CodeInternal         Code = "internal"           // 500: a bug or an unclassified store error
)

// apiError is an error with its code, and a status when the code alone
// does not decide it.
type apiError struct {
	code   Code
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errf(code Code, format string, args ...any) error {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// bodyError is a failure to read the request body: the client sent less
// than it announced, or more than the limit.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// body wraps a request body and remembers how reading it failed, so that
// the store's reaction to a broken body is reported as the body's fault.
type body struct {
	r   io.Reader
	err error
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

var sentinels = []struct {
	err  error
	code Code
}{
	{queue.ErrNotFound, CodeNotFound},
	{queue.ErrExists, CodeExists},
	{queue.ErrConflict, CodeConflict},
	{queue.ErrCorrupt, CodeCorrupt},
	{queue.ErrInvalid, CodeInvalid},
	{queue.ErrClosed, CodeClosed},
	{queue.ErrUnsupported, CodeUnsupported},
	{queue.ErrUnavailable, CodeUnavailable},
	{queue.ErrLeaseLost, CodeLeaseLost},
}

// codeOf classifies an error of a handler.
func codeOf(err error) Code {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.code
	}
	var be *bodyError
	if errors.As(err, &be) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return CodeTooLarge
		}
		return CodeInvalid
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return CodeUnavailable
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			return s.code
		}
	}
	return CodeInternal
}

func status(code Code, r *http.Request) int {
	switch code {
	case CodeNotFound:
		return http.StatusNotFound
	case CodeExists:
		if r.Header.Get("If-None-Match") != "" {
			return http.StatusPreconditionFailed
		}
		return http.StatusConflict
	case CodeConflict:
		if r.Header.Get("If-Match") != "" {
			return http.StatusPreconditionFailed
		}
		return http.StatusConflict
	case CodeCorrupt:
		return http.StatusBadGateway
	case CodeInvalid:
		return http.StatusBadRequest
	case CodeClosed, CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeUnsupported:
		return http.StatusNotImplemented
	case CodeLeaseLost:
		return http.StatusConflict
	case CodeUnauthorized:
		return http.StatusUnauthorized
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	}
	return http.StatusInternalServerError
}

type errorBody struct {
	Error struct {
		Code    Code   `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// fail writes err as a JSON error and returns its code.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, op string, err error) string {
	code := codeOf(err)
	st := status(code, r)
	var ae *apiError
	if errors.As(err, &ae) && ae.status != 0 {
		st = ae.status
	}
	var b errorBody
	b.Error.Code = code
	b.Error.Message = err.Error()
	if code == CodeUnavailable && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		b.Error.Message = "the request was cancelled or timed out: " + err.Error()
	}
	// Missing objects and lost races are routine in the queue protocol;
	// refused requests are worth a line; failures are errors.
	level := slog.LevelInfo
	switch {
	case st >= 500:
		level = slog.LevelError
	case st == http.StatusNotFound || st == http.StatusConflict || st == http.StatusPreconditionFailed:
		level = slog.LevelDebug
	}
	h.log.Log(r.Context(), level, "request failed", "op", op, "method", r.Method, "path", r.URL.Path, "status", st, "code", code, "err", err)
	if st == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="mxq"`)
	}
	if st == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
		// A store that is out or slow, or a server shutting down: the
		// client should come back, not give up.
		w.Header().Set("Retry-After", "1")
	}
	if earlyRefusal(st) && r.ContentLength != 0 {
		// The body was not read, and need not be: answer now and close,
		// rather than let the server read what the client still owes.
		// The past read deadline stops the server's own attempt to
		// drain a small body after the handler returns.
		w.Header().Set("Connection", "close")
		defer http.NewResponseController(w).SetReadDeadline(time.Now())
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(st)
		return string(code)
	}
	writeJSON(w, st, &b)
	return string(code)
}

// earlyRefusal reports whether status refuses a request before its body
// is read.
func earlyRefusal(status int) bool {
	switch status {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusMethodNotAllowed, http.StatusRequestEntityTooLarge:
		return true
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, err = w.Write(append(b, '\n'))
	return err
}
