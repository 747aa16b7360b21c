// Package drivertest holds test helpers that work over any driver.Backend.
//
// Faults is a decorator that injects the failures a real store shows:
// latency, errors by operation and by rate, an outage, a lost answer and
// a crash. It wraps any adapter's Backend, so one test proves the same
// behaviour on mem, file or a real service. It depends only on
// queue/driver, like the adapters it wraps.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
)

// Op names a Backend request, for errors by operation and for counts.
type Op string

// The requests Faults sees. Stat and Ping are counted as themselves even
// when the wrapped Backend lacks them and Faults falls back to Get or List.
const (
	OpGet    Op = "get"
	OpPut    Op = "put"
	OpDelete Op = "delete"
	OpList   Op = "list"
	OpStat   Op = "stat"
	OpPing   Op = "ping"
)

// ErrInjected is wrapped by every error Faults injects; check with
// errors.Is to tell an injected fault from a real one.
var ErrInjected = errors.New("drivertest: injected fault")

// Fault is the error Faults injects. It unwraps to ErrInjected, and
// Faults.ErrorCode classifies it as Code.
type Fault struct {
	Op   Op          // the request that failed
	Key  string      // its key (for list, the prefix)
	Why  string      // "rate", "op", "outage", "lost answer" or "crash"
	Code driver.Code // how Faults.ErrorCode classifies it
}

// Error implements error.
func (e *Fault) Error() string {
	return fmt.Sprintf("drivertest: injected %s fault on %s %q", e.Why, e.Op, e.Key)
}

// Unwrap returns ErrInjected.
func (e *Fault) Unwrap() error { return ErrInjected }

// Faults is a driver.Backend that passes every request to the Backend it
// wraps, injecting the faults it is configured with. It is safe for
// concurrent use, and every setting may change while requests run.
//
// A request goes through these steps, in order: it is counted; it fails
// if the crash point has passed; it fails (or hangs) during an outage;
// it waits for the latency; it fails by operation or by rate; it runs on
// the wrapped Backend; and a request whose answer is to be lost (a write
// under LoseAnswers, any request in flight at a CrashLosingAnswers crash)
// lands and then fails. Injected errors are *Fault values, classified by ErrorCode
// as driver.CodeUnavailable (a transient failure) unless SetCode says
// otherwise; every other error is classified by the wrapped Backend.
//
// Rates draw from a random source seeded by New, so a sequence of
// requests made in the same order fails in the same places. A Store runs
// some requests in parallel and in the background, so their order, and
// with it which of them fail, is only deterministic when one request is
// in flight at a time.
type Faults struct {
	b driver.Backend

	mu       sync.Mutex
	rng      *rand.Rand
	code     driver.Code
	latency  time.Duration
	rate     map[Op]float64
	failNext map[Op]int
	loseNext map[Op]int
	down     bool
	hang     bool
	lifted   chan struct{} // closed when the current outage is lifted
	crashAt  int           // requests allowed before the crash; -1: none
	lose     bool          // the crash loses the answers of the requests in flight
	crashed  bool          // an answer was lost to the crash
	total    int
	counts   map[Op]int
	inflight atomic.Int64 // requests not yet returned
	injected int
}

var (
	_ driver.Backend = (*Faults)(nil)
	_ driver.Stater  = (*Faults)(nil)
	_ driver.Pinger  = (*Faults)(nil)
)

// New returns a Faults over b that injects nothing until configured.
// seed fixes the random source of FailRate.
func New(b driver.Backend, seed uint64) *Faults {
	return &Faults{
		b:        b,
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		code:     driver.CodeUnavailable,
		rate:     map[Op]float64{},
		failNext: map[Op]int{},
		loseNext: map[Op]int{},
		crashAt:  -1,
		counts:   map[Op]int{},
	}
}

// Backend returns the wrapped Backend, which sees no faults.
func (f *Faults) Backend() driver.Backend { return f.b }

// SetCode sets the code ErrorCode gives the faults injected from now on.
// The default is driver.CodeUnavailable.
func (f *Faults) SetCode(c driver.Code) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.code = c
}

// SetLatency delays every request by d before it runs. A request whose
// ctx is done during the delay fails with ctx's error. Zero removes it.
func (f *Faults) SetLatency(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.latency = d
}

// FailRate makes each request of op fail with probability rate (0 to 1),
// drawn from the seeded source. The request does not reach the wrapped
// Backend.
func (f *Faults) FailRate(op Op, rate float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rate[op] = rate
}

// FailNext makes the next n requests of op fail without reaching the
// wrapped Backend.
func (f *Faults) FailNext(op Op, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext[op] = n
}

// LoseAnswers makes the next n requests of op (OpPut or OpDelete) lose
// their answer: the request runs on the wrapped Backend, and whatever it
// did stays done, but the caller gets an injected error.
func (f *Faults) LoseAnswers(op Op, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loseNext[op] = n
}

// Outage starts an outage: until Lift, every request fails at once, or,
// if hang is set, blocks until its ctx is done (and then fails with ctx's
// error) or the outage is lifted (and then runs).
func (f *Faults) Outage(hang bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.down {
		f.lifted = make(chan struct{})
	}
	f.down, f.hang = true, hang
}

// Lift ends the outage, releasing the requests that hang in it.
func (f *Faults) Lift() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		close(f.lifted)
	}
	f.down, f.hang = false, false
}

// CrashAfter lets n more requests through and fails every one after them,
// as if the process had died: the crash is never lifted. The n requests
// run to the end and answer. n < 0 disarms it.
func (f *Faults) CrashAfter(n int) { f.crashAfter(n, false) }

// CrashLosingAnswers is CrashAfter, except that the process dies with
// requests in flight: the nth request, and any other that has not
// answered by the time it is made, lands on the store, but its caller gets
// an injected error instead of the answer.
func (f *Faults) CrashLosingAnswers(n int) { f.crashAfter(n, true) }

func (f *Faults) crashAfter(n int, lose bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lose, f.crashed = lose, false
	if n < 0 {
		f.crashAt = -1
		return
	}
	f.crashAt = f.total + n
}

// Crashed reports whether the crash has failed a request or lost an
// answer.
func (f *Faults) Crashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashed || f.crashAt >= 0 && f.total > f.crashAt
}

// Requests returns how many requests of op were made (all of them, if op
// is ""), failed or not.
func (f *Faults) Requests(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if op == "" {
		return f.total
	}
	return f.counts[op]
}

// WaitQuiet waits until no request is in flight and none arrived during
// one poll interval: the requests a Store makes in the background are
// done, landed or failed. It reports false if requests still run after
// timeout.
func (f *Faults) WaitQuiet(poll, timeout time.Duration) bool {
	last := -1
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(poll) {
		n := f.Requests("")
		if n == last && f.inflight.Load() == 0 {
			return true
		}
		last = n
	}
	return false
}

// Injected returns how many faults were injected so far, lost answers and
// hung requests included.
func (f *Faults) Injected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected
}

// before runs the steps of a request up to the wrapped Backend's call.
func (f *Faults) before(ctx context.Context, op Op, key string) error {
	f.mu.Lock()
	f.total++
	f.counts[op]++
	fault := func(why string) error {
		f.injected++
		return &Fault{Op: op, Key: key, Why: why, Code: f.code}
	}
	if f.crashAt >= 0 && f.total > f.crashAt {
		err := fault("crash")
		f.mu.Unlock()
		return err
	}
	if f.down && !f.hang {
		err := fault("outage")
		f.mu.Unlock()
		return err
	}
	if f.down {
		f.injected++
		lifted := f.lifted
		f.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-lifted:
		}
		f.mu.Lock()
	}
	latency := f.latency
	f.mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failNext[op] > 0 {
		f.failNext[op]--
		return fault("op")
	}
	if r := f.rate[op]; r > 0 && f.rng.Float64() < r {
		return fault("rate")
	}
	return nil
}

// after turns the answer of a request into a lost one if it is due: a
// lost answer asked for by LoseAnswers (writes only), or the crash point
// of CrashLosingAnswers reached while the request was in flight.
func (f *Faults) after(op Op, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lose && f.crashAt >= 0 && f.total >= f.crashAt {
		f.crashed = true
		f.injected++
		return &Fault{Op: op, Key: key, Why: "crash", Code: f.code}
	}
	if (op == OpPut || op == OpDelete) && f.loseNext[op] > 0 {
		f.loseNext[op]--
		f.injected++
		return &Fault{Op: op, Key: key, Why: "lost answer", Code: f.code}
	}
	return nil
}

// Get implements driver.Backend.
func (f *Faults) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if err := f.before(ctx, OpGet, key); err != nil {
		return nil, driver.Attrs{}, err
	}
	rc, a, err := f.b.Get(ctx, key)
	if err == nil {
		if err = f.after(OpGet, key); err != nil {
			rc.Close()
			return nil, driver.Attrs{}, err
		}
	}
	return rc, a, err
}

// Put implements driver.Backend.
func (f *Faults) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if err := f.before(ctx, OpPut, key); err != nil {
		return "", err
	}
	v, err := f.b.Put(ctx, key, r, opts)
	if err != nil {
		return v, err
	}
	return v, f.after(OpPut, key)
}

// Delete implements driver.Backend.
func (f *Faults) Delete(ctx context.Context, key string) error {
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if err := f.before(ctx, OpDelete, key); err != nil {
		return err
	}
	if err := f.b.Delete(ctx, key); err != nil {
		return err
	}
	return f.after(OpDelete, key)
}

// DeleteIfMatch implements driver.ConditionalDeleter when the wrapped
// Backend does, as a delete; when it does not, it returns
// errors.ErrUnsupported and counts no request.
func (f *Faults) DeleteIfMatch(ctx context.Context, key string, v driver.Version) error {
	if _, ok := f.b.(driver.ConditionalDeleter); !ok {
		return errors.ErrUnsupported
	}
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if err := f.before(ctx, OpDelete, key); err != nil {
		return err
	}
	if err := driver.DeleteIfMatch(ctx, f.b, key, v); err != nil {
		return err
	}
	return f.after(OpDelete, key)
}

// List implements driver.Backend.
func (f *Faults) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if err := f.before(ctx, OpList, prefix); err != nil {
		return nil, false, err
	}
	keys, more, err := f.b.List(ctx, prefix, startAfter, limit)
	if err == nil {
		if err = f.after(OpList, prefix); err != nil {
			return nil, false, err
		}
	}
	return keys, more, err
}

// Stat implements driver.Stater: it calls the wrapped Backend's Stat, or
// Get and Close if the wrapped Backend is not a Stater.
func (f *Faults) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if err := f.before(ctx, OpStat, key); err != nil {
		return driver.Attrs{}, err
	}
	var a driver.Attrs
	var err error
	if s, ok := f.b.(driver.Stater); ok {
		a, err = s.Stat(ctx, key)
	} else {
		var rc io.ReadCloser
		if rc, a, err = f.b.Get(ctx, key); err == nil {
			rc.Close()
		}
	}
	if err == nil {
		if err = f.after(OpStat, key); err != nil {
			return driver.Attrs{}, err
		}
	}
	return a, err
}

// Ping implements driver.Pinger: it calls the wrapped Backend's Ping, or
// lists one key if the wrapped Backend is not a Pinger.
func (f *Faults) Ping(ctx context.Context) error {
	f.inflight.Add(1)
	defer f.inflight.Add(-1)
	if err := f.before(ctx, OpPing, ""); err != nil {
		return err
	}
	if p, ok := f.b.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	_, _, err := f.b.List(ctx, "", "", 1)
	return err
}

// ErrorCode implements driver.Backend: an injected fault has the code it
// was injected with, and every other error the wrapped Backend's code.
func (f *Faults) ErrorCode(err error) driver.Code {
	var ft *Fault
	if errors.As(err, &ft) {
		return ft.Code
	}
	return f.b.ErrorCode(err)
}

// Close implements driver.Backend: it closes the wrapped Backend, whatever
// faults are set.
func (f *Faults) Close() error { return f.b.Close() }
