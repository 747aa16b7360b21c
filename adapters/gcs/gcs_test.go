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
	"strings"
	"sync"
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
	b, err := openBackend(t.Context(), c, bucket, prefix, &http.Client{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

type harness struct {
	c              *storage.Client
	bucket, prefix string
	closers        []func() error
}

func (h *harness) MakeBackend(ctx context.Context) (driver.Backend, error) {
	return openBackend(ctx, h.c, h.bucket, h.prefix, &http.Client{})
}

func (h *harness) Capabilities() conformance.Capabilities {
	return conformance.Capabilities{IfMatchMissing: driver.CodeNotFound}
}

func (h *harness) Close() {
	for _, c := range h.closers {
		c()
	}
}

// MakeDeadBackend implements conformance.DeadHarness. The emulator takes
// any credentials, so there is no store that refuses them.
func (h *harness) MakeDeadBackend(ctx context.Context, d conformance.Dead) (driver.Backend, error) {
	switch d {
	case conformance.DeadEndpoint:
		c, err := storage.NewClient(ctx, option.WithoutAuthentication(), option.WithEndpoint("http://127.0.0.1:1/storage/v1/"))
		if err != nil {
			return nil, err
		}
		h.closers = append(h.closers, c.Close)
		return openBackend(ctx, c, h.bucket, h.prefix, nil)
	case conformance.DeadContainer:
		return openBackend(ctx, h.c, "no-such-bucket-"+strings.TrimSuffix(strings.ReplaceAll(h.prefix, "/", "-"), "-"), "", nil)
	}
	return nil, nil
}

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
		{"other", errors.New("x"), driver.CodeUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := errorCode(tc.err); got != tc.want {
				t.Errorf("errorCode(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestBadVersion: a compare-and-swap against a version that is not a
// generation is a refused condition, whether or not the key exists.
func TestBadVersion(t *testing.T) {
	b := testBackend(t)
	for _, key := range []string{"inc/00000001", "inc/00000002"} {
		if key == "inc/00000001" {
			if _, err := put(t, b, key, "x", driver.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		_, err := put(t, b, key, "y", driver.PutOptions{IfMatch: "not-a-generation"})
		if c := b.ErrorCode(err); c != driver.CodePrecondition {
			t.Fatalf("CAS of %s with a bad version = %v (code %v), want CodePrecondition", key, err, c)
		}
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
