package conformance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// env is the world of one subtest: a harness and the Stores over it.
type env struct {
	t     testing.TB
	h     Harness
	ctx   context.Context
	clock *clock
}

func newEnv(t testing.TB, mk HarnessMaker) *env {
	t.Helper()
	ctx := context.Background()
	if tt, ok := t.(interface{ Context() context.Context }); ok {
		ctx = tt.Context()
	}
	h, err := mk(ctx, t)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(h.Close)
	return &env{t: t, h: h, ctx: ctx, clock: &clock{now: time.Now()}}
}

// backend returns a new Backend over the harness's storage, closed at the
// end of the test.
func (e *env) backend() driver.Backend {
	e.t.Helper()
	b, err := e.h.MakeBackend(e.ctx)
	if err != nil {
		e.t.Fatalf("MakeBackend: %v", err)
	}
	return b
}

// store returns a new Store, a node of its own, over the storage. Its clock
// is the env's clock unless opts sets one.
func (e *env) store(opts *queue.Options) *queue.Store {
	e.t.Helper()
	return e.storeOn(e.backend(), opts)
}

func (e *env) storeOn(b driver.Backend, opts *queue.Options) *queue.Store {
	e.t.Helper()
	var o queue.Options
	if opts != nil {
		o = *opts
	}
	if o.Clock == nil {
		o.Clock = e.clock.Now
	}
	if eh, ok := e.h.(encryptedHarness); ok && o.Encryption == nil {
		o.Encryption = eh.encryption()
	}
	s, err := queue.New(b, &o)
	if err != nil {
		e.t.Fatalf("queue.New: %v", err)
	}
	var once sync.Once
	e.t.Cleanup(func() { once.Do(func() { s.Close() }) })
	return s
}

// commit stores a message with the given envelopes and content.
func (e *env) commit(s *queue.Store, content []byte, envs ...string) (queue.MsgID, []queue.EvpID) {
	e.t.Helper()
	tx, err := s.Begin(e.ctx)
	if err != nil {
		e.t.Fatalf("Begin: %v", err)
	}
	var ids []queue.EvpID
	for _, d := range envs {
		id, err := tx.AddEnvelope([]byte(d))
		if err != nil {
			e.t.Fatalf("AddEnvelope: %v", err)
		}
		ids = append(ids, id)
	}
	if _, err := tx.CommitContent(e.ctx, bytes.NewReader(content)); err != nil {
		e.t.Fatalf("CommitContent: %v", err)
	}
	return tx.ID(), ids
}

// rawKeys lists every key under prefix straight from a backend.
func (e *env) rawKeys(b driver.Backend, prefix string) []string {
	e.t.Helper()
	var out []string
	after := ""
	for range 100000 {
		keys, more, err := b.List(e.ctx, prefix, after, 1000)
		if err != nil {
			e.t.Fatalf("List(%q): %v", prefix, err)
		}
		out = append(out, keys...)
		if !more || len(keys) == 0 {
			return out
		}
		after = keys[len(keys)-1]
	}
	e.t.Fatalf("List(%q) does not end", prefix)
	return nil
}

func (e *env) walk(s *queue.Store) []queue.EvpID {
	e.t.Helper()
	var ids []queue.EvpID
	for id, err := range s.Walk(e.ctx) {
		if err != nil {
			e.t.Fatalf("Walk: %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

func (e *env) readContent(s *queue.Store, m queue.MsgID) ([]byte, error) {
	rc, err := s.OpenContent(e.ctx, m)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// wantErr fails unless err wraps want (nil: no error).
func wantErr(t testing.TB, what string, err, want error) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("%s: unexpected error %v", what, err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// scripted is a random source that returns the given 32-bit values first,
// then random ones.
type scripted struct {
	mu   sync.Mutex
	vals []uint32
}

func (r *scripted) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(p) == 4 && len(r.vals) > 0 {
		binary.BigEndian.PutUint32(p, r.vals[0])
		r.vals = r.vals[1:]
		return 4, nil
	}
	return rand.Read(p)
}

// pattern is a deterministic stream of n pseudo-random bytes.
type pattern struct {
	n, off int64
	x      uint64
}

func newPattern(n int64, seed uint64) *pattern { return &pattern{n: n, x: seed | 1} }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n-p.off {
		b = b[:p.n-p.off]
	}
	// Byte i of the stream is byte i%8 of the (i/8+1)th xorshift word, so
	// the stream is the same however the reader slices its reads.
	for i := range b {
		k := (p.off + int64(i)) % 8
		if k == 0 {
			p.x ^= p.x << 13
			p.x ^= p.x >> 7
			p.x ^= p.x << 17
		}
		b[i] = byte(p.x >> (8 * k))
	}
	p.off += int64(len(b))
	return len(b), nil
}

// heapPeak samples the live heap while fn runs and returns the peak growth
// over the heap before it.
func heapPeak(fn func()) (peak uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var max atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapAlloc > max.Load() {
					max.Store(ms.HeapAlloc)
				}
			}
		}
	}()
	fn()
	close(stop)
	<-done
	if m := max.Load(); m > base {
		return m - base
	}
	return 0
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// crashing is a Backend that fails every call once its budget of writes
// (Put and Delete) is spent: a process that died at that point.
type crashing struct {
	driver.Backend
	mu     sync.Mutex
	budget int
	writes int
}

var errCrashed = errors.New("conformance: injected crash")

func (c *crashing) spend() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writes >= c.budget {
		return errCrashed
	}
	c.writes++
	return nil
}

func (c *crashing) dead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes >= c.budget
}

// Writes within the budget run to completion even when the caller gives
// up on them, as a request already sent does: a cancelled write that
// lands later would race the checks that follow the crash.
func (c *crashing) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	if err := c.spend(); err != nil {
		return "", err
	}
	return c.Backend.Put(context.WithoutCancel(ctx), key, r, opts)
}

func (c *crashing) Delete(ctx context.Context, key string) error {
	if err := c.spend(); err != nil {
		return err
	}
	return c.Backend.Delete(context.WithoutCancel(ctx), key)
}

func (c *crashing) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	if c.dead() {
		return nil, driver.Attrs{}, errCrashed
	}
	return c.Backend.Get(ctx, key)
}

func (c *crashing) List(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	if c.dead() {
		return nil, false, errCrashed
	}
	return c.Backend.List(ctx, prefix, after, limit)
}
