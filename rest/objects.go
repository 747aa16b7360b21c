package rest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// MaxKeyLength bounds an object key, in bytes: driver.MaxKeyLength.
const MaxKeyLength = driver.MaxKeyLength

// ValidKey reports whether key can name an object, by the rule every
// adapter applies too (driver.ValidKey): 1 to MaxKeyLength bytes of a-z
// 0-9 . _ - and "/", in at least two segments, none empty or starting with
// a dot. Every key that layout.Key produces is valid. The error wraps
// queue.ErrInvalid.
func ValidKey(key string) error {
	return validKey(key, false)
}

// validKey checks a key, or with prefix set, a listing prefix, which may
// also be empty, one segment, or end in "/".
func validKey(key string, prefix bool) error {
	check := key
	if prefix {
		if key == "" {
			return nil
		}
		// A prefix is valid when some valid key could start with it.
		check = strings.TrimSuffix(key, "/")
		if !strings.Contains(check, "/") {
			check += "/x"
		}
	}
	if err := driver.ValidKey(check); err != nil {
		return &apiError{code: CodeInvalid, msg: "object " + strings.TrimPrefix(err.Error(), queue.ErrInvalid.Error()+": ")}
	}
	return nil
}

// ETag returns the entity tag of a version: the version in double quotes
// when it consists of A-Z a-z 0-9 . _ ~ : + / = -, and otherwise "!" and
// the version in unpadded base64url, in double quotes. The mapping is
// one-to-one, so a client can hand the tag back in If-Match.
func ETag(v queue.Version) string {
	s := string(v)
	if s == "" || !safeTag(s) {
		s = "!" + base64.RawURLEncoding.EncodeToString([]byte(v))
	}
	return `"` + s + `"`
}

func safeTag(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._~:+/=-", c) >= 0) {
			return false
		}
	}
	return true
}

// ParseETag is the inverse of ETag. Weak tags, lists and "*" are refused.
func ParseETag(tag string) (queue.Version, error) {
	tag = strings.TrimSpace(tag)
	if len(tag) < 3 || tag[0] != '"' || tag[len(tag)-1] != '"' {
		return "", errf(CodeInvalid, "entity tag %q: want one strong tag in double quotes, as the ETag header gave it", tag)
	}
	s := tag[1 : len(tag)-1]
	if b, ok := strings.CutPrefix(s, "!"); ok {
		v, err := base64.RawURLEncoding.DecodeString(b)
		if err != nil || len(v) == 0 {
			return "", errf(CodeInvalid, "entity tag %q does not decode", tag)
		}
		return queue.Version(v), nil
	}
	if !safeTag(s) {
		return "", errf(CodeInvalid, "entity tag %q: unexpected characters", tag)
	}
	return queue.Version(s), nil
}

func objectKey(r *http.Request) (string, error) {
	key := r.PathValue("key")
	if strings.Contains(r.URL.EscapedPath(), "%") {
		return key, errf(CodeInvalid, "object key %q: percent-escapes are not allowed; keys need none", key)
	}
	return key, validKey(key, false)
}

// backendErr classifies an error of the Store's Backend.
func (h *Handler) backendErr(r *http.Request, key string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	msg := "object " + key + ": " + err.Error()
	switch h.be.ErrorCode(err) {
	case driver.CodeNotFound:
		return &apiError{code: CodeNotFound, msg: msg}
	case driver.CodePrecondition:
		if r.Header.Get("If-None-Match") != "" {
			return &apiError{code: CodeExists, msg: msg}
		}
		return &apiError{code: CodeConflict, msg: msg}
	case driver.CodeInvalid:
		return &apiError{code: CodeInvalid, msg: msg}
	case driver.CodeUnsupported:
		return &apiError{code: CodeUnsupported, msg: msg}
	case driver.CodeUnavailable:
		return &apiError{code: CodeUnavailable, msg: msg}
	case driver.CodeCorrupt:
		return &apiError{code: CodeCorrupt, msg: msg}
	}
	return &apiError{code: CodeInternal, msg: msg}
}

func (h *Handler) objectGet(w http.ResponseWriter, r *http.Request) error {
	key, err := objectKey(r)
	if err != nil {
		return err
	}
	var a driver.Attrs
	var rc io.ReadCloser
	if r.Method == http.MethodHead {
		if st, ok := h.be.(driver.Stater); ok {
			a, err = st.Stat(r.Context(), key)
		} else if rc, a, err = h.be.Get(r.Context(), key); err == nil {
			rc.Close()
			rc = nil
		}
	} else {
		rc, a, err = h.be.Get(r.Context(), key)
	}
	if err != nil {
		return h.backendErr(r, key, err)
	}
	if rc != nil {
		defer rc.Close()
	}
	hd := w.Header()
	hd.Set("ETag", ETag(a.Version))
	hd.Set("Content-Type", "application/octet-stream")
	if a.Size >= 0 {
		hd.Set("Content-Length", strconv.FormatInt(a.Size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if rc == nil {
		return nil
	}
	if _, err := io.Copy(w, rc); err != nil {
		return err
	}
	return nil
}

// limitBody bounds r's body by max and wraps it to tell a broken body
// from a failing store.
func limitBody(w http.ResponseWriter, r *http.Request, max int64) (*body, error) {
	if r.ContentLength > max {
		return nil, errf(CodeTooLarge, "request body of %d bytes exceeds the limit of %d", r.ContentLength, max)
	}
	return &body{r: http.MaxBytesReader(w, r.Body, max)}, nil
}

func (b *body) check() error {
	if b.err != nil {
		return &bodyError{b.err}
	}
	return nil
}

func (h *Handler) objectPut(w http.ResponseWriter, r *http.Request) error {
	key, err := objectKey(r)
	if err != nil {
		return err
	}
	opts := &driver.PutOptions{Size: r.ContentLength}
	if opts.Size < 0 {
		opts.Size = -1
	}
	inm, im := r.Header.Get("If-None-Match"), r.Header.Get("If-Match")
	if inm != "" && im != "" {
		return errf(CodeInvalid, "If-None-Match and If-Match together")
	}
	if inm != "" {
		if inm != "*" {
			return errf(CodeInvalid, "If-None-Match must be *")
		}
		opts.IfNoneMatch = true
	}
	if im != "" {
		if opts.IfMatch, err = ParseETag(im); err != nil {
			return err
		}
	}
	b, err := limitBody(w, r, h.opts.MaxBodySize)
	if err != nil {
		return err
	}
	v, err := h.be.Put(r.Context(), key, b, opts)
	if err := b.check(); err != nil {
		return err
	}
	if err != nil {
		return h.backendErr(r, key, err)
	}
	w.Header().Set("ETag", ETag(v))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) objectDelete(w http.ResponseWriter, r *http.Request) error {
	key, err := objectKey(r)
	if err != nil {
		return err
	}
	if err := h.be.Delete(r.Context(), key); err != nil {
		return h.backendErr(r, key, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// DeleteBatch is the body of POST /v1/objects:delete: the keys to remove,
// 1 to driver.MaxMultiDelete of them. Missing keys are not an error.
type DeleteBatch struct {
	Keys []string `json:"keys"`
}

// objectDeleteBatch removes many objects with one request, with the
// store's multi-object delete where it has one (driver.DeleteMulti).
func (h *Handler) objectDeleteBatch(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	data, err := readSmall(w, r, int64(driver.MaxMultiDelete)*(MaxKeyLength+8)+64)
	if err != nil {
		return err
	}
	var req DeleteBatch
	if err := json.Unmarshal(data, &req); err != nil {
		return errf(CodeInvalid, "body: want {\"keys\":[...]}: %v", err)
	}
	if n := len(req.Keys); n < 1 || n > driver.MaxMultiDelete {
		return errf(CodeInvalid, "%d keys: want 1 to %d", n, driver.MaxMultiDelete)
	}
	for _, k := range req.Keys {
		if err := validKey(k, false); err != nil {
			return err
		}
	}
	if err := driver.DeleteMulti(r.Context(), h.be, req.Keys); err != nil {
		return h.backendErr(r, req.Keys[0]+" (in a batch of "+strconv.Itoa(len(req.Keys))+")", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ListPage is the body of GET /v1/objects.
type ListPage struct {
	// Keys in byte order, never null.
	Keys []string `json:"keys"`
	// More reports whether keys may remain after the last one.
	More bool `json:"more"`
}

func (h *Handler) objectList(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "prefix", "start_after", "limit")
	if err != nil {
		return err
	}
	prefix, after := q["prefix"], q["start_after"]
	if err := validKey(prefix, true); err != nil {
		return err
	}
	if after != "" {
		if err := validKey(after, false); err != nil {
			return err
		}
	}
	limit := 1000
	if s, ok := q["limit"]; ok {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 1000 {
			return errf(CodeInvalid, "limit %q: want an integer from 1 to 1000", s)
		}
	}
	keys, more, err := h.be.List(r.Context(), prefix, after, limit)
	if err != nil {
		return h.backendErr(r, prefix, err)
	}
	if keys == nil {
		keys = []string{}
	}
	return writeJSON(w, http.StatusOK, &ListPage{Keys: keys, More: more})
}

// query returns the query parameters of r, refusing unknown and repeated
// ones.
func query(r *http.Request, allowed ...string) (map[string]string, error) {
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, errf(CodeInvalid, "query does not parse: %v", err)
	}
	out := make(map[string]string)
	for k, v := range vals {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return nil, errf(CodeInvalid, "unknown query parameter %q: none are allowed here", k)
			}
			return nil, errf(CodeInvalid, "unknown query parameter %q; allowed: %s", k, strings.Join(allowed, ", "))
		}
		if len(v) != 1 {
			return nil, errf(CodeInvalid, "query parameter %q given %d times", k, len(v))
		}
		out[k] = v[0]
	}
	return out, nil
}
