package bench

import (
	"context"
	"io"
	"sync/atomic"

	"github.com/mxqueue/mxq/queue/driver"
)

// Counts are the requests a Backend received, by kind.
type Counts struct {
	Get, Put, Delete, List, Stat, Ping int64
}

// Total is the number of requests of every kind.
func (c Counts) Total() int64 { return c.Get + c.Put + c.Delete + c.List + c.Stat + c.Ping }

// Sub returns the requests of c that came after base.
func (c Counts) Sub(base Counts) Counts {
	return Counts{c.Get - base.Get, c.Put - base.Put, c.Delete - base.Delete, c.List - base.List, c.Stat - base.Stat, c.Ping - base.Ping}
}

// Counter counts the requests made to a Backend. Its Backend passes every
// request on unchanged and offers the optional interfaces (driver.Stater,
// driver.Pinger) exactly when the wrapped Backend does (a
// driver.MultiDeleter always, counted as the requests it makes), so a Store over it
// makes the same requests it makes over the store itself. Request counts
// are deterministic where timings are not: tests may assert them.
type Counter struct {
	get, put, del, list, stat, ping atomic.Int64
	b                               driver.Backend
	wrapped                         driver.Backend
}

// Count returns a Counter of the requests made through its Backend to b.
// Closing that Backend does not close b: whoever opened b closes it, so
// that several Stores, one after the other, can be measured over one
// connection.
func Count(b driver.Backend) *Counter {
	c := &Counter{b: b}
	base := &counted{c: c}
	_, stater := b.(driver.Stater)
	_, pinger := b.(driver.Pinger)
	switch {
	case stater && pinger:
		c.wrapped = struct {
			*counted
			countedStat
			countedPing
		}{base, countedStat{base}, countedPing{base}}
	case stater:
		c.wrapped = struct {
			*counted
			countedStat
		}{base, countedStat{base}}
	case pinger:
		c.wrapped = struct {
			*counted
			countedPing
		}{base, countedPing{base}}
	default:
		c.wrapped = base
	}
	return c
}

// Backend returns the counting Backend.
func (c *Counter) Backend() driver.Backend { return c.wrapped }

// Counts returns the requests made so far.
func (c *Counter) Counts() Counts {
	return Counts{c.get.Load(), c.put.Load(), c.del.Load(), c.list.Load(), c.stat.Load(), c.ping.Load()}
}

type counted struct{ c *Counter }

func (x *counted) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	x.c.get.Add(1)
	return x.c.b.Get(ctx, key)
}

func (x *counted) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	x.c.put.Add(1)
	return x.c.b.Put(ctx, key, r, opts)
}

func (x *counted) Delete(ctx context.Context, key string) error {
	x.c.del.Add(1)
	return x.c.b.Delete(ctx, key)
}

// DeleteMulti counts one delete per batch when the wrapped Backend is a
// driver.MultiDeleter, and one per key when it is not.
func (x *counted) DeleteMulti(ctx context.Context, keys []string) error {
	if md, ok := x.c.b.(driver.MultiDeleter); ok && native[driver.MultiDeleter](x.c.b) {
		x.c.del.Add(1)
		return md.DeleteMulti(ctx, keys)
	}
	for _, k := range keys {
		if err := x.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// DeleteIfMatch counts one delete when the wrapped Backend is a
// driver.ConditionalDeleter, and none when it is not: then it makes no
// request.
func (x *counted) DeleteIfMatch(ctx context.Context, key string, v driver.Version) error {
	if native[driver.ConditionalDeleter](x.c.b) {
		x.c.del.Add(1)
	}
	return driver.DeleteIfMatch(ctx, x.c.b, key, v)
}

// native reports whether the backend under b's wrappers (driver.Prefixed,
// encryption), which offer every capability and fall back when the
// backend they wrap lacks it, has the capability T.
func native[T any](b driver.Backend) bool {
	for {
		u, ok := b.(interface{ Unwrap() driver.Backend })
		if !ok {
			_, has := b.(T)
			return has
		}
		b = u.Unwrap()
	}
}

func (x *counted) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	x.c.list.Add(1)
	return x.c.b.List(ctx, prefix, startAfter, limit)
}

func (x *counted) ErrorCode(err error) driver.Code { return x.c.b.ErrorCode(err) }

// Close does not close the wrapped Backend; see Count.
func (x *counted) Close() error { return nil }

type countedStat struct{ x *counted }

func (s countedStat) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	s.x.c.stat.Add(1)
	return s.x.c.b.(driver.Stater).Stat(ctx, key)
}

type countedPing struct{ x *counted }

func (p countedPing) Ping(ctx context.Context) error {
	p.x.c.ping.Add(1)
	return p.x.c.b.(driver.Pinger).Ping(ctx)
}
