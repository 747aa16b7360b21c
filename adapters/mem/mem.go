// Package mem is an in-memory queue store, the reference adapter. Stores
// opened with the same name in one process share their data, so that tests
// can run several Stores, like several nodes, over one storage.
//
// # URLs
//
// mem://name opens the shared storage called name; mem:// alone a private
// one. No query parameters are accepted. See URLOpener.
//
// # Keys
//
// Keys are kept as they are in a sorted map; nothing is escaped.
//
// # Errors
//
// Missing keys are driver.CodeNotFound, refused conditional writes
// driver.CodePrecondition. Nothing else fails; a closed Store refuses
// calls with queue.ErrClosed before they reach the adapter.
package mem

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

var (
	errNotFound     = errors.New("mem: key not found")
	errPrecondition = errors.New("mem: precondition failed")
)

// storage is one named key space.
type storage struct {
	mu      sync.RWMutex
	objects map[string]object
	keys    []string // sorted
	seq     uint64
}

type object struct {
	data    []byte
	version driver.Version
}

type backend struct {
	st *storage
}

var _ driver.Backend = (*backend)(nil)
var _ driver.Stater = (*backend)(nil)
var _ driver.MultiDeleter = (*backend)(nil)
var _ driver.ConditionalDeleter = (*backend)(nil)

// Options are the options of Open.
type Options struct {
	// Queue are the options of the Store.
	Queue queue.Options
}

// Open returns a Store over the in-memory storage called name, created if
// needed. An empty name gives a private storage. opts may be nil.
func Open(ctx context.Context, name string, opts *Options) (*queue.Store, error) {
	if opts == nil {
		opts = new(Options)
	}
	return queue.New(OpenBackend(name), &opts.Queue)
}

// OpenBackend returns the Backend over the storage called name, for tests
// that drive a Backend directly. An empty name gives a private storage.
func OpenBackend(name string) driver.Backend {
	if name == "" {
		return &backend{st: newStorage()}
	}
	registry.mu.Lock()
	defer registry.mu.Unlock()
	st := registry.m[name]
	if st == nil {
		st = newStorage()
		registry.m[name] = st
	}
	return &backend{st: st}
}

func newStorage() *storage { return &storage{objects: make(map[string]object)} }

// registry holds the named storages of this process: the state that
// mem:// URLs with the same name share, which is the point of the adapter.
var registry = struct {
	mu sync.Mutex
	m  map[string]*storage
}{m: make(map[string]*storage)}

// Get implements driver.Backend.Get.
func (b *backend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	if err := ctx.Err(); err != nil {
		return nil, driver.Attrs{}, err
	}
	b.st.mu.RLock()
	o, ok := b.st.objects[key]
	b.st.mu.RUnlock()
	if !ok {
		return nil, driver.Attrs{}, errNotFound
	}
	return io.NopCloser(bytes.NewReader(o.data)), driver.Attrs{Version: o.version, Size: int64(len(o.data))}, nil
}

// Stat implements driver.Stater.
func (b *backend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	rc, a, err := b.Get(ctx, key)
	if err == nil {
		rc.Close()
	}
	return a, err
}

// Put implements driver.Backend.Put.
func (b *backend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	data, err := readAll(r, opts.Size)
	if err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	st := b.st
	st.mu.Lock()
	defer st.mu.Unlock()
	old, exists := st.objects[key]
	if opts.IfNoneMatch && exists {
		return "", errPrecondition
	}
	if opts.IfMatch != "" {
		if !exists {
			return "", errNotFound
		}
		if old.version != opts.IfMatch {
			return "", errPrecondition
		}
	}
	st.seq++
	v := driver.Version(strconv.FormatUint(st.seq, 10))
	st.objects[key] = object{data: data, version: v}
	if !exists {
		i, _ := slices.BinarySearch(st.keys, key)
		st.keys = slices.Insert(st.keys, i, key)
	}
	return v, nil
}

// Delete implements driver.Backend.Delete.
func (b *backend) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st := b.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, ok := st.objects[key]; !ok {
		return nil
	}
	delete(st.objects, key)
	if i, ok := slices.BinarySearch(st.keys, key); ok {
		st.keys = slices.Delete(st.keys, i, i+1)
	}
	return nil
}

// DeleteIfMatch implements driver.ConditionalDeleter.
func (b *backend) DeleteIfMatch(ctx context.Context, key string, v driver.Version) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st := b.st
	st.mu.Lock()
	defer st.mu.Unlock()
	old, ok := st.objects[key]
	if !ok {
		return errNotFound
	}
	if old.version != v {
		return errPrecondition
	}
	delete(st.objects, key)
	if i, ok := slices.BinarySearch(st.keys, key); ok {
		st.keys = slices.Delete(st.keys, i, i+1)
	}
	return nil
}

// DeleteMulti implements driver.MultiDeleter.
// It removes every key under one lock, and the keys from the sorted index
// in one pass, as a store answers one request.
func (b *backend) DeleteMulti(ctx context.Context, keys []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st := b.st
	st.mu.Lock()
	defer st.mu.Unlock()
	gone := 0
	for _, k := range keys {
		if _, ok := st.objects[k]; ok {
			delete(st.objects, k)
			gone++
		}
	}
	if gone > 0 {
		st.keys = slices.DeleteFunc(st.keys, func(k string) bool {
			_, ok := st.objects[k]
			return !ok
		})
	}
	return nil
}

// List implements driver.Backend.List.
func (b *backend) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	st := b.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	from := prefix
	if startAfter > from {
		from = startAfter
	}
	i, _ := slices.BinarySearch(st.keys, from)
	var out []string
	for ; i < len(st.keys); i++ {
		k := st.keys[i]
		if !strings.HasPrefix(k, prefix) {
			break
		}
		if k <= startAfter {
			continue
		}
		if len(out) == limit {
			return out, true, nil
		}
		out = append(out, k)
	}
	return out, false, nil
}

// ErrorCode implements driver.Backend.ErrorCode.
func (b *backend) ErrorCode(err error) driver.Code {
	switch {
	case errors.Is(err, errNotFound):
		return driver.CodeNotFound
	case errors.Is(err, errPrecondition):
		return driver.CodePrecondition
	}
	return driver.CodeUnknown
}

// Close implements driver.Backend.Close.
func (b *backend) Close() error { return nil }

// readAll reads r whole. With an unknown size it reads in chunks and
// copies them once into a slice of the exact size, so that a large object
// costs twice its size at the peak rather than the growth of one buffer.
func readAll(r io.Reader, size int64) ([]byte, error) {
	if size >= 0 {
		var buf bytes.Buffer
		buf.Grow(int(size) + 1)
		_, err := buf.ReadFrom(r)
		return buf.Bytes(), err
	}
	var chunks [][]byte
	n := 0
	for {
		c := make([]byte, 1<<20)
		m, err := driver.ReadFull(r, c)
		chunks = append(chunks, c[:m])
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	data := make([]byte, 0, n)
	for _, c := range chunks {
		data = append(data, c...)
	}
	return data, nil
}
