package gcs

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// testEnv returns the bucket and prefix of MXQ_TEST_GCS_URL, and a client
// for STORAGE_EMULATOR_HOST, with the bucket created if it is missing.
// It skips the test when they are not set, unless MXQ_REQUIRE_SERVICES=1.
func testEnv(t testing.TB) (*storage.Client, string, string) {
	t.Helper()
	raw := os.Getenv("MXQ_TEST_GCS_URL")
	if raw == "" || os.Getenv("STORAGE_EMULATOR_HOST") == "" {
		if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
			t.Fatal("MXQ_TEST_GCS_URL and STORAGE_EMULATOR_HOST must be set (scripts/services env)")
		}
		t.Skip("MXQ_TEST_GCS_URL or STORAGE_EMULATOR_HOST not set")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != Scheme || u.Host == "" {
		t.Fatalf("MXQ_TEST_GCS_URL=%q: want gs://bucket[/prefix]", raw)
	}
	c, err := testClient()
	if err != nil {
		t.Fatal(err)
	}
	ensureBucket(t, c, u.Host)
	var rnd [6]byte
	rand.Read(rnd[:])
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		prefix += "/"
	}
	prefix += fmt.Sprintf("test-%x/", rnd)
	return c, u.Host, prefix
}

// testClient is the client of every test, made once.
var testClient = sync.OnceValues(func() (*storage.Client, error) {
	return storage.NewClient(context.Background())
})

var bucketOnce sync.Map

func ensureBucket(t testing.TB, c *storage.Client, bucket string) {
	if _, done := bucketOnce.Load(bucket); done {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := c.Bucket(bucket).Create(ctx, "mxq-test", nil)
	var ge *googleapi.Error
	if err != nil && !(errors.As(err, &ge) && ge.Code == http.StatusConflict) {
		t.Fatalf("creating bucket %s: %v", bucket, err)
	}
	bucketOnce.Store(bucket, true)
}

func testBackend(t testing.TB) driver.Backend {
	c, bucket, prefix := testEnv(t)
	b, err := openBackend(t.Context(), c, bucket, prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

type harness struct {
	c              *storage.Client
	bucket, prefix string
}

func (h *harness) MakeBackend(ctx context.Context) (driver.Backend, error) {
	return openBackend(ctx, h.c, h.bucket, h.prefix)
}

func (h *harness) Capabilities() conformance.Capabilities {
	return conformance.Capabilities{IfMatchMissing: driver.CodeNotFound}
}

func (h *harness) Close() {}

func newHarness(ctx context.Context, t testing.TB) (conformance.Harness, error) {
	c, bucket, prefix := testEnv(t)
	return &harness{c: c, bucket: bucket, prefix: prefix}, nil
}

func TestConformance(t *testing.T) { conformance.Run(t, newHarness) }

func TestConformanceEncrypted(t *testing.T) { conformance.RunEncrypted(t, newHarness) }

func BenchmarkConformance(b *testing.B) { conformance.RunBenchmarks(b, newHarness) }

func put(t testing.TB, b driver.Backend, key, data string, opts driver.PutOptions) (driver.Version, error) {
	t.Helper()
	if opts.Size == 0 {
		opts.Size = int64(len(data))
	}
	return b.Put(t.Context(), key, strings.NewReader(data), &opts)
}

func get(t testing.TB, b driver.Backend, key string) (string, driver.Attrs) {
	t.Helper()
	rc, a, err := b.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %s: %v", key, err)
	}
	return string(data), a
}

func TestURLOpener(t *testing.T) {
	c, err := storage.NewClient(t.Context(), option.WithoutAuthentication(), option.WithEndpoint("http://127.0.0.1:1/storage/v1/"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := &URLOpener{Client: c}
	for _, tc := range []struct {
		name, url string
		wantErr   error
	}{
		{"bucket", "gs://bucket", nil},
		{"bucket with prefix", "gs://bucket/mx/1", nil},
		{"trailing slash", "gs://bucket/mx/", nil},
		{"no bucket", "gs:///prefix", queue.ErrInvalid},
		{"unknown parameter", "gs://bucket?prefix=x", queue.ErrInvalid},
		{"endpoint parameter", "gs://bucket?endpoint=http://x", queue.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := url.Parse(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			s, err := o.OpenStoreURL(t.Context(), u, nil)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("OpenStoreURL(%s) = %v, want %v", tc.url, err, tc.wantErr)
			}
			if s != nil {
				s.Close()
			}
		})
	}
}

func TestSchemeRegistered(t *testing.T) {
	if !queue.DefaultURLMux().ValidScheme("gs") || !queue.DefaultURLMux().ValidScheme("GS") {
		t.Fatal("gs is not registered with the default mux")
	}
}

func TestErrorCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want driver.Code
	}{
		{"object not exist", storage.ErrObjectNotExist, driver.CodeNotFound},
		{"wrapped object not exist", fmt.Errorf("x: %w", storage.ErrObjectNotExist), driver.CodeNotFound},
		{"bucket not exist", storage.ErrBucketNotExist, driver.CodeInvalid},
		{"404", &googleapi.Error{Code: 404}, driver.CodeNotFound},
		{"412", &googleapi.Error{Code: 412}, driver.CodePrecondition},
		{"bad version", fmt.Errorf("%w: x", errBadVersion), driver.CodePrecondition},
		{"400", &googleapi.Error{Code: 400}, driver.CodeInvalid},
		{"401 is not guessed", &googleapi.Error{Code: 401}, driver.CodeUnknown},
		{"403 is not guessed", &googleapi.Error{Code: 403}, driver.CodeUnknown},
		{"408", &googleapi.Error{Code: 408}, driver.CodeUnavailable},
		{"429", &googleapi.Error{Code: 429}, driver.CodeUnavailable},
		{"500", &googleapi.Error{Code: 500}, driver.CodeUnavailable},
		{"503", &googleapi.Error{Code: 503}, driver.CodeUnavailable},
		{"501", &googleapi.Error{Code: 501}, driver.CodeUnsupported},
		{"grpc not found", status.Error(codes.NotFound, "x"), driver.CodeNotFound},
		{"grpc failed precondition", status.Error(codes.FailedPrecondition, "x"), driver.CodePrecondition},
		{"grpc unavailable", status.Error(codes.Unavailable, "x"), driver.CodeUnavailable},
		{"connection refused", &url.Error{Op: "Get", URL: "http://x", Err: errors.New("connection refused")}, driver.CodeUnavailable},
		{"unexpected EOF", io.ErrUnexpectedEOF, driver.CodeUnavailable},
		{"closed", errClosed, driver.CodeUnknown},
		{"other", errors.New("x"), driver.CodeUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := errorCode(tc.err); got != tc.want {
				t.Errorf("errorCode(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestPutGetVersions(t *testing.T) {
	b := testBackend(t)
	ctx := t.Context()
	if _, _, err := b.Get(ctx, "inc/00000001"); b.ErrorCode(err) != driver.CodeNotFound {
		t.Fatalf("Get missing: %v (code %v), want NotFound", err, b.ErrorCode(err))
	}
	if _, err := b.(driver.Stater).Stat(ctx, "inc/00000001"); b.ErrorCode(err) != driver.CodeNotFound {
		t.Fatalf("Stat missing: %v, want NotFound", err)
	}
	v1, err := put(t, b, "inc/00000001", "one", driver.PutOptions{IfNoneMatch: true})
	if err != nil {
		t.Fatal(err)
	}
	data, a := get(t, b, "inc/00000001")
	if data != "one" || a.Version != v1 || a.Size != 3 {
		t.Fatalf("Get = %q %+v, want one %s 3", data, a, v1)
	}
	if st, err := b.(driver.Stater).Stat(ctx, "inc/00000001"); err != nil || st != a {
		t.Fatalf("Stat = %+v %v, want %+v", st, err, a)
	}

	t.Run("create-only twice", func(t *testing.T) {
		_, err := put(t, b, "inc/00000001", "again", driver.PutOptions{IfNoneMatch: true})
		if b.ErrorCode(err) != driver.CodePrecondition {
			t.Fatalf("second create = %v (code %v), want Precondition", err, b.ErrorCode(err))
		}
		if data, _ := get(t, b, "inc/00000001"); data != "one" {
			t.Fatalf("refused create wrote %q", data)
		}
	})
	var v2 driver.Version
	t.Run("compare-and-swap", func(t *testing.T) {
		var err error
		v2, err = put(t, b, "inc/00000001", "two", driver.PutOptions{IfMatch: v1})
		if err != nil || v2 == v1 {
			t.Fatalf("CAS = %s %v", v2, err)
		}
		_, err = put(t, b, "inc/00000001", "stale", driver.PutOptions{IfMatch: v1})
		if b.ErrorCode(err) != driver.CodePrecondition {
			t.Fatalf("stale CAS = %v (code %v), want Precondition", err, b.ErrorCode(err))
		}
		if data, a := get(t, b, "inc/00000001"); data != "two" || a.Version != v2 {
			t.Fatalf("after stale CAS: %q %s", data, a.Version)
		}
	})
	t.Run("compare-and-swap on missing", func(t *testing.T) {
		_, err := put(t, b, "inc/00000002", "x", driver.PutOptions{IfMatch: v1})
		if c := b.ErrorCode(err); c != driver.CodeNotFound {
			t.Fatalf("CAS on missing = %v (code %v)", err, c)
		}
		_, err = put(t, b, "inc/00000002", "x", driver.PutOptions{IfMatch: "not-a-generation"})
		if c := b.ErrorCode(err); c != driver.CodePrecondition {
			t.Fatalf("CAS with bad version = %v (code %v)", err, c)
		}
	})
	t.Run("unconditional", func(t *testing.T) {
		v3, err := put(t, b, "inc/00000001", "three", driver.PutOptions{Size: -1})
		if err != nil || v3 == v2 {
			t.Fatalf("Put = %s %v", v3, err)
		}
	})
	t.Run("delete", func(t *testing.T) {
		if err := b.Delete(ctx, "inc/00000001"); err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(ctx, "inc/00000001"); err != nil {
			t.Fatalf("deleting a missing key: %v", err)
		}
		if _, _, err := b.Get(ctx, "inc/00000001"); b.ErrorCode(err) != driver.CodeNotFound {
			t.Fatalf("Get deleted: %v", err)
		}
	})
}

func TestConcurrentCAS(t *testing.T) {
	b := testBackend(t)
	v, err := put(t, b, "evp/00/00000001/0000000100000001", "v0", driver.PutOptions{IfNoneMatch: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := put(t, b, "evp/00/00000001/0000000100000001", fmt.Sprint("w", i), driver.PutOptions{IfMatch: v})
			switch {
			case err == nil:
				wins.Add(1)
			case b.ErrorCode(err) == driver.CodePrecondition:
				conflicts.Add(1)
			default:
				t.Errorf("writer %d: %v (code %v)", i, err, b.ErrorCode(err))
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != n-1 {
		t.Fatalf("%d wins, %d conflicts; want 1 and %d", wins.Load(), conflicts.Load(), n-1)
	}
}

func TestConcurrentCreate(t *testing.T) {
	b := testBackend(t)
	const n = 16
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := put(t, b, "inc/0000000a", fmt.Sprint("w", i), driver.PutOptions{IfNoneMatch: true})
			switch {
			case err == nil:
				wins.Add(1)
			case b.ErrorCode(err) != driver.CodePrecondition:
				t.Errorf("writer %d: %v (code %v)", i, err, b.ErrorCode(err))
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d creators won, want 1", wins.Load())
	}
}

func TestList(t *testing.T) {
	b := testBackend(t)
	ctx := t.Context()
	var want []string
	for i := range 25 {
		k := fmt.Sprintf("evp/%02x/%08x/%016x", i%3, i, i)
		want = append(want, k)
		if _, err := put(t, b, k, "x", driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := put(t, b, "inc/00000001", "x", driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	for _, limit := range []int{1, 2, 7, 25, 1000} {
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) {
			var got []string
			after := ""
			for calls := 0; ; calls++ {
				if calls > 60 {
					t.Fatal("List does not end")
				}
				keys, more, err := b.List(ctx, "evp/", after, limit)
				if err != nil {
					t.Fatal(err)
				}
				if len(keys) > limit {
					t.Fatalf("%d keys for limit %d", len(keys), limit)
				}
				got = append(got, keys...)
				if !more {
					break
				}
				if len(keys) > 0 {
					after = keys[len(keys)-1]
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("listed %q\nwant %q", got, want)
			}
		})
	}
	keys, _, err := b.List(ctx, "evp/01/", "", 1000)
	if err != nil || len(keys) != 8 {
		t.Fatalf("List evp/01/ = %d keys, %v", len(keys), err)
	}
	keys, more, err := b.List(ctx, "nothing/", "", 10)
	if err != nil || len(keys) != 0 || more {
		t.Fatalf("List of empty prefix = %q %v %v", keys, more, err)
	}
}

// pattern is a reader of n bytes of a repeating non-trivial pattern.
type pattern struct{ n, off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n-p.off {
		b = b[:p.n-p.off]
	}
	for i := range b {
		x := p.off + int64(i)
		b[i] = byte(x ^ x>>8 ^ x>>16)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func TestBigObject(t *testing.T) {
	b := testBackend(t)
	ctx := t.Context()
	for _, tc := range []struct {
		name string
		size int64
		opt  int64
	}{
		{"small unknown size", 1000, -1},
		{"at the single-request limit", smallObject, -1},
		{"just over it, unknown size", smallObject + 1, -1},
		{"3 chunks, known size", 2*chunkSize + 12345, 2*chunkSize + 12345},
		{"3 chunks, unknown size", 2*chunkSize + 1, -1},
		{"empty", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := sha256.New()
			io.Copy(h, &pattern{n: tc.size})
			want := h.Sum(nil)
			v, err := b.Put(ctx, "msg/00/00000001", &pattern{n: tc.size}, &driver.PutOptions{Size: tc.opt})
			if err != nil {
				t.Fatal(err)
			}
			rc, a, err := b.Get(ctx, "msg/00/00000001")
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			h.Reset()
			n, err := io.Copy(h, rc)
			if err != nil || n != tc.size || a.Size != tc.size || a.Version != v || !bytes.Equal(h.Sum(nil), want) {
				t.Fatalf("read %d bytes (attrs %+v, put version %s), err %v, checksum match %v", n, a, v, err, bytes.Equal(h.Sum(nil), want))
			}
		})
	}
}

// failingReader fails after n bytes.
type failingReader struct{ n int }

var errReader = errors.New("reader failed")

func (f *failingReader) Read(b []byte) (int, error) {
	if f.n <= 0 {
		return 0, errReader
	}
	if len(b) > f.n {
		b = b[:f.n]
	}
	clear(b)
	f.n -= len(b)
	return len(b), nil
}

func TestPutReaderFails(t *testing.T) {
	b := testBackend(t)
	for _, n := range []int{10, smallObject + 10, chunkSize + 10} {
		_, err := b.Put(t.Context(), "msg/00/00000002", &failingReader{n: n}, &driver.PutOptions{Size: -1, IfNoneMatch: true})
		if !errors.Is(err, errReader) {
			t.Fatalf("Put with a reader failing after %d bytes = %v", n, err)
		}
		if _, _, err := b.Get(t.Context(), "msg/00/00000002"); b.ErrorCode(err) != driver.CodeNotFound {
			t.Fatalf("a failed Put left an object: %v", err)
		}
	}
}

func TestCancelledContext(t *testing.T) {
	b := testBackend(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := b.Put(ctx, "inc/00000003", strings.NewReader("x"), &driver.PutOptions{Size: 1})
	if !errors.Is(err, context.Canceled) && b.ErrorCode(err) != driver.CodeUnavailable {
		t.Errorf("Put: %v", err)
	}
	_, _, err = b.Get(ctx, "inc/00000003")
	if !errors.Is(err, context.Canceled) && b.ErrorCode(err) != driver.CodeUnavailable {
		t.Errorf("Get: %v", err)
	}
	_, _, err = b.List(ctx, "inc/", "", 10)
	if !errors.Is(err, context.Canceled) && b.ErrorCode(err) != driver.CodeUnavailable {
		t.Errorf("List: %v", err)
	}
}

// TestEmulatorDeleteIgnoresGeneration records what fake-gcs-server does
// with a generation precondition on delete: it ignores it. The queue never
// sends one (Backend.Delete is unconditional); this test exists so that
// the finding is checked, not just written down.
func TestEmulatorDeleteIgnoresGeneration(t *testing.T) {
	c, bucket, prefix := testEnv(t)
	ctx := t.Context()
	obj := c.Bucket(bucket).Object(prefix + "stale-delete")
	w := obj.NewWriter(ctx)
	w.Write([]byte("x"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	gen := w.Attrs().Generation
	err := obj.If(storage.Conditions{GenerationMatch: gen + 1}).Delete(ctx)
	_, aerr := obj.Attrs(ctx)
	switch {
	case err == nil && errors.Is(aerr, storage.ErrObjectNotExist):
		t.Logf("emulator ignores ifGenerationMatch on delete (known): deleted with a stale generation")
	case errorCode(err) == driver.CodePrecondition && aerr == nil:
		t.Logf("emulator honours ifGenerationMatch on delete now: %v", err)
	default:
		t.Fatalf("delete with stale generation: %v; object afterwards: %v", err, aerr)
	}
}

func TestPing(t *testing.T) {
	c, bucket, _ := testEnv(t)
	b, _ := openBackend(t.Context(), c, bucket, "")
	if err := b.(driver.Pinger).Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	b, _ = openBackend(t.Context(), c, "no-such-bucket-mxq", "")
	if err := b.(driver.Pinger).Ping(t.Context()); b.ErrorCode(err) != driver.CodeInvalid {
		t.Fatalf("Ping of a missing bucket: %v (code %v)", err, b.ErrorCode(err))
	}
}

// TestDeadEndpoint checks that a store that does not answer gives a clear
// error within the context deadline.
func TestDeadEndpoint(t *testing.T) {
	c, err := storage.NewClient(t.Context(), option.WithoutAuthentication(), option.WithEndpoint("http://127.0.0.1:1/storage/v1/"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := Open(t.Context(), c, "bucket", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err = st.Ping(ctx)
	took := time.Since(start)
	if err == nil || took > 3*time.Second {
		t.Fatalf("Ping of a dead endpoint: %v after %v", err, took)
	}
	if !strings.Contains(err.Error(), "connection refused") && !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("the error does not say why: %v", err)
	}
	t.Logf("after %v: %v", took.Round(time.Millisecond), err)
}
