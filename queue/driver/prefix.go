package driver

import (
	"context"
	"io"
	"strings"
)

// Prefixed returns a Backend that stores every key of b under prefix.
// Adapters use it for the path part of their URLs, so that many queues can
// share one bucket. An empty prefix returns b itself; otherwise a missing
// trailing "/" is added.
func Prefixed(b Backend, prefix string) Backend {
	prefix = strings.TrimLeft(prefix, "/")
	if prefix == "" {
		return b
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &prefixed{b: b, p: prefix}
}

type prefixed struct {
	b Backend
	p string
}

var _ Backend = (*prefixed)(nil)

func (p *prefixed) Get(ctx context.Context, key string) (io.ReadCloser, Attrs, error) {
	return p.b.Get(ctx, p.p+key)
}

func (p *prefixed) Put(ctx context.Context, key string, r io.Reader, opts *PutOptions) (Version, error) {
	return p.b.Put(ctx, p.p+key, r, opts)
}

func (p *prefixed) Delete(ctx context.Context, key string) error { return p.b.Delete(ctx, p.p+key) }

func (p *prefixed) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	if startAfter != "" {
		startAfter = p.p + startAfter
	}
	keys, more, err := p.b.List(ctx, p.p+prefix, startAfter, limit)
	for i, k := range keys {
		keys[i] = strings.TrimPrefix(k, p.p)
	}
	return keys, more, err
}

func (p *prefixed) Stat(ctx context.Context, key string) (Attrs, error) {
	if st, ok := p.b.(Stater); ok {
		return st.Stat(ctx, p.p+key)
	}
	rc, a, err := p.b.Get(ctx, p.p+key)
	if err == nil {
		rc.Close()
	}
	return a, err
}

func (p *prefixed) Ping(ctx context.Context) error {
	if pg, ok := p.b.(Pinger); ok {
		return pg.Ping(ctx)
	}
	_, _, err := p.b.List(ctx, p.p, "", 1)
	return err
}

// DeleteMulti implements MultiDeleter, with one request per batch if the
// wrapped Backend is a MultiDeleter and one per key if not.
func (p *prefixed) DeleteMulti(ctx context.Context, keys []string) error {
	full := make([]string, len(keys))
	for i, k := range keys {
		full[i] = p.p + k
	}
	return DeleteMulti(ctx, p.b, full)
}

// DeleteIfMatch implements ConditionalDeleter when the wrapped Backend
// does; otherwise it returns errors.ErrUnsupported.
func (p *prefixed) DeleteIfMatch(ctx context.Context, key string, v Version) error {
	return DeleteIfMatch(ctx, p.b, p.p+key, v)
}

func (p *prefixed) ErrorCode(err error) Code { return p.b.ErrorCode(err) }
func (p *prefixed) Close() error             { return p.b.Close() }

// Unwrap returns the wrapped Backend, so that optional capabilities can be
// found through the prefix.
func (p *prefixed) Unwrap() Backend { return p.b }
