package drivertest_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/driver/drivertest"
)

func put(t *testing.T, b driver.Backend, key, data string) error {
	t.Helper()
	_, err := b.Put(t.Context(), key, strings.NewReader(data), &driver.PutOptions{Size: int64(len(data))})
	return err
}

func get(t *testing.T, b driver.Backend, key string) (string, error) {
	t.Helper()
	rc, _, err := b.Get(t.Context(), key)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	d, err := io.ReadAll(rc)
	return string(d), err
}

// injected fails unless err is an injected fault classified as want.
func injected(t *testing.T, f *drivertest.Faults, what string, err error, want driver.Code) {
	t.Helper()
	if !errors.Is(err, drivertest.ErrInjected) {
		t.Fatalf("%s: %v, want an injected fault", what, err)
	}
	if c := f.ErrorCode(err); c != want {
		t.Fatalf("%s: ErrorCode = %d, want %d", what, c, want)
	}
}

func TestPassThrough(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	if err := put(t, f, "a/b", "x"); err != nil {
		t.Fatal(err)
	}
	if d, err := get(t, f, "a/b"); err != nil || d != "x" {
		t.Fatalf("Get = %q, %v", d, err)
	}
	_, err := get(t, f, "a/missing")
	if f.ErrorCode(err) != driver.CodeNotFound || errors.Is(err, drivertest.ErrInjected) {
		t.Fatalf("Get of a missing key: %v, code %d", err, f.ErrorCode(err))
	}
	if _, err := f.Stat(t.Context(), "a/b"); err != nil {
		t.Fatal(err)
	}
	if err := f.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := f.Requests(""); n != 5 || f.Requests(drivertest.OpGet) != 2 || f.Injected() != 0 {
		t.Fatalf("Requests = %d (get %d), Injected = %d", n, f.Requests(drivertest.OpGet), f.Injected())
	}
}

func TestFailNextAndCode(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	f.FailNext(drivertest.OpPut, 2)
	for i := range 2 {
		injected(t, f, "Put", put(t, f, "a/b", "x"), driver.CodeUnavailable)
		if _, err := get(t, f.Backend(), "a/b"); f.ErrorCode(err) != driver.CodeNotFound {
			t.Fatalf("failed Put %d reached the store: %v", i, err)
		}
	}
	if err := put(t, f, "a/b", "x"); err != nil {
		t.Fatalf("third Put: %v", err)
	}
	f.SetCode(driver.CodeInvalid)
	f.FailNext(drivertest.OpDelete, 1)
	injected(t, f, "Delete", f.Delete(t.Context(), "a/b"), driver.CodeInvalid)
	if _, err := get(t, f, "a/b"); err != nil {
		t.Fatalf("Get after a failed Delete: %v", err)
	}
}

// TestFailRate: the same seed fails the same requests; another seed
// fails others; the rate is roughly kept.
func TestFailRate(t *testing.T) {
	pattern := func(seed uint64) string {
		f := drivertest.New(mem.OpenBackend(""), seed)
		f.FailRate(drivertest.OpList, 0.3)
		var s []byte
		for range 200 {
			_, _, err := f.List(t.Context(), "a/", "", 10)
			switch {
			case err == nil:
				s = append(s, '.')
			case f.ErrorCode(err) == driver.CodeUnavailable:
				s = append(s, 'x')
			default:
				t.Fatal(err)
			}
		}
		if f.Injected() != strings.Count(string(s), "x") {
			t.Fatalf("Injected = %d, failures %d", f.Injected(), strings.Count(string(s), "x"))
		}
		return string(s)
	}
	a, b, c := pattern(7), pattern(7), pattern(8)
	if a != b {
		t.Fatalf("seed 7 twice:\n%s\n%s", a, b)
	}
	if a == c {
		t.Fatal("seeds 7 and 8 fail the same requests")
	}
	if n := strings.Count(a, "x"); n < 30 || n > 90 {
		t.Fatalf("rate 0.3 failed %d of 200", n)
	}
}

func TestOutage(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	if err := put(t, f, "a/b", "x"); err != nil {
		t.Fatal(err)
	}
	f.Outage(false)
	_, err := get(t, f, "a/b")
	injected(t, f, "Get in an outage", err, driver.CodeUnavailable)
	injected(t, f, "Put in an outage", put(t, f, "a/c", "y"), driver.CodeUnavailable)
	_, err = f.Stat(t.Context(), "a/b")
	injected(t, f, "Stat in an outage", err, driver.CodeUnavailable)
	injected(t, f, "Ping in an outage", f.Ping(t.Context()), driver.CodeUnavailable)
	f.Lift()
	if d, err := get(t, f, "a/b"); err != nil || d != "x" {
		t.Fatalf("Get after the outage: %q, %v", d, err)
	}

	// A hanging outage holds a request until its ctx is done...
	f.Outage(true)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := f.List(ctx, "a/", "", 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("List in a hanging outage: %v", err)
	}
	// ...or until it is lifted, and then runs.
	done := make(chan error, 1)
	go func() { _, err := get(t, f, "a/b"); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("Get returned in a hanging outage: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	f.Lift()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Get released by Lift: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Lift did not release a hanging Get")
	}
}

func TestLostAnswer(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	f.LoseAnswers(drivertest.OpPut, 1)
	injected(t, f, "Put with a lost answer", put(t, f, "a/b", "x"), driver.CodeUnavailable)
	if d, err := get(t, f, "a/b"); err != nil || d != "x" {
		t.Fatalf("the write whose answer was lost did not land: %q, %v", d, err)
	}
	if err := put(t, f, "a/c", "y"); err != nil {
		t.Fatalf("next Put: %v", err)
	}
	f.LoseAnswers(drivertest.OpDelete, 1)
	injected(t, f, "Delete with a lost answer", f.Delete(t.Context(), "a/b"), driver.CodeUnavailable)
	if _, err := get(t, f, "a/b"); f.ErrorCode(err) != driver.CodeNotFound {
		t.Fatalf("the delete whose answer was lost did not land: %v", err)
	}
}

func TestCrashAfter(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	if err := put(t, f, "a/a", "x"); err != nil {
		t.Fatal(err)
	}
	f.CrashAfter(2)
	if err := put(t, f, "a/b", "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, f, "a/b"); err != nil {
		t.Fatal(err)
	}
	if f.Crashed() {
		t.Fatal("crashed within the budget")
	}
	injected(t, f, "Put after the crash", put(t, f, "a/c", "x"), driver.CodeUnavailable)
	_, _, err := f.List(t.Context(), "a/", "", 10)
	injected(t, f, "List after the crash", err, driver.CodeUnavailable)
	if !f.Crashed() {
		t.Fatal("Crashed = false")
	}
	if keys, _, err := f.Backend().List(t.Context(), "a/", "", 10); err != nil || len(keys) != 2 {
		t.Fatalf("storage after the crash: %v, %v", keys, err)
	}
}

func TestLatency(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	f.SetLatency(30 * time.Millisecond)
	start := time.Now()
	if err := put(t, f, "a/b", "x"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("Put took %v with 30ms of latency", d)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Millisecond)
	defer cancel()
	if _, _, err := f.Get(ctx, "a/b"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get whose ctx ends during the latency: %v", err)
	}
}

func TestCrashLosingAnswers(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	f.CrashLosingAnswers(2)
	if err := put(t, f, "a/a", "x"); err != nil {
		t.Fatal(err)
	}
	if f.Crashed() {
		t.Fatal("crashed within the budget")
	}
	// The second request is the last: it lands, and its answer is lost.
	injected(t, f, "Put at the crash", put(t, f, "a/b", "y"), driver.CodeUnavailable)
	if !f.Crashed() {
		t.Fatal("Crashed = false after a lost answer")
	}
	injected(t, f, "Delete after the crash", f.Delete(t.Context(), "a/a"), driver.CodeUnavailable)
	if keys, _, err := f.Backend().List(t.Context(), "a/", "", 10); err != nil || len(keys) != 2 {
		t.Fatalf("storage after the crash: %v, %v (want a/a and a/b)", keys, err)
	}
}
