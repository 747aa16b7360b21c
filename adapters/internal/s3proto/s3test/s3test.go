// Package s3test holds the tests that the adapters of the S3 protocol
// (adapters/s3 and adapters/minio) share: their conformance harness, the
// cases of ErrorCode, and the findings about the server under test. Only
// their _test.go files import it.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mxqueue/mxq/adapters/internal/s3proto"
	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue/driver"
)

var (
	// runID tells this run's objects and buckets from others'.
	runID = func() string {
		var b [6]byte
		rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	harnesses atomic.Int64
)

// URL returns the URL in the environment variable name, the server that
// the tests run against (see scripts/services). It skips the test when the
// variable is unset, unless MXQ_REQUIRE_SERVICES=1.
func URL(t testing.TB, name string) *url.URL {
	t.Helper()
	raw := os.Getenv(name)
	if raw == "" {
		if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
			t.Fatalf("%s not set and MXQ_REQUIRE_SERVICES=1; run scripts/services start", name)
		}
		t.Skipf("%s not set; see scripts/services", name)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return u
}

// Prefix returns a fresh key prefix under base, one for each harness.
func Prefix(base string) string {
	base = strings.TrimLeft(base, "/")
	if base != "" && !strings.HasSuffix(base, "/") {
		base += "/"
	}
	return fmt.Sprintf("%srun-%s/%d/", base, runID, harnesses.Add(1))
}

// MissingBucket is the name of a bucket that does not exist.
func MissingBucket() string { return "no-such-bucket-" + runID }

// DeadAddr returns an address that nothing listens on.
func DeadAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

var buckets sync.Map // bucket -> *sync.Once

// CreateBucket calls create once for each bucket in this process, and
// takes the answer that the bucket exists already, by its S3 error code
// (code of the error), for success.
func CreateBucket(bucket string, create func() error, code func(error) string) error {
	var err error
	o, _ := buckets.LoadOrStore(bucket, new(sync.Once))
	o.(*sync.Once).Do(func() {
		err = create()
		switch code(err) {
		case "BucketAlreadyOwnedByYou", "BucketAlreadyExists":
			err = nil
		}
	})
	return err
}

// Harness is the conformance harness of the adapters, with C the SDK's
// client.
type Harness[C any] struct {
	t              testing.TB
	client         *C
	bucket, prefix string
	srv            Server
	open           func(*C, string, *s3proto.Options) (driver.Backend, error)
	clean          func(*C, string, string) error
	dead           DeadClient[C]
}

// DeadClient returns a client of a store that fails as d says, for
// conformance.DeadEndpoint (with addr, where nothing listens) and
// conformance.DeadCredentials; a missing bucket needs no client of its
// own.
type DeadClient[C any] func(ctx context.Context, t testing.TB, d conformance.Dead, addr string) (*C, error)

var _ conformance.DeadHarness = (*Harness[int])(nil)

// NewHarness returns the harness of the keys under prefix in bucket,
// through client, with srv the server for Findings. open is the adapter's
// openBackend, clean deletes every object under a prefix of a bucket, and
// dead makes the clients of the dead stores.
func NewHarness[C any](t testing.TB, client *C, bucket, prefix string, srv Server,
	open func(*C, string, *s3proto.Options) (driver.Backend, error), clean func(*C, string, string) error, dead DeadClient[C]) *Harness[C] {
	return &Harness[C]{t: t, client: client, bucket: bucket, prefix: prefix, srv: srv, open: open, clean: clean, dead: dead}
}

// MakeBackend implements conformance.Harness.
func (h *Harness[C]) MakeBackend(context.Context) (driver.Backend, error) {
	return h.open(h.client, h.bucket, &s3proto.Options{Prefix: h.prefix})
}

// Capabilities implements conformance.Harness: If-Match on a missing key
// is 404 NoSuchKey.
func (h *Harness[C]) Capabilities() conformance.Capabilities {
	return conformance.Capabilities{IfMatchMissing: driver.CodeNotFound}
}

// Close implements conformance.Harness.
func (h *Harness[C]) Close() {
	if err := h.clean(h.client, h.bucket, h.prefix); err != nil {
		h.t.Errorf("cleanup of %s: %v", h.prefix, err)
	}
}

// MakeDeadBackend implements conformance.DeadHarness.
func (h *Harness[C]) MakeDeadBackend(ctx context.Context, d conformance.Dead) (driver.Backend, error) {
	opts := &s3proto.Options{Prefix: h.prefix}
	if d == conformance.DeadContainer {
		return h.open(h.client, MissingBucket(), opts)
	}
	addr, err := DeadAddr()
	if err != nil {
		return nil, err
	}
	c, err := h.dead(ctx, h.t, d, addr)
	if err != nil {
		return nil, err
	}
	return h.open(c, h.bucket, opts)
}

// findings returns a backend and the server under it.
func (h *Harness[C]) findings() (driver.Backend, Server, error) {
	b, err := h.MakeBackend(context.Background())
	return b, h.srv, err
}

// ErrorCode checks code, an adapter's ErrorCode, on the errors that
// answer makes of an HTTP status and an S3 error code, as its SDK returns
// them.
func ErrorCode(t *testing.T, code func(error) driver.Code, answer func(status int, code string) error) {
	for _, c := range []struct {
		name   string
		status int
		code   string
		want   driver.Code
	}{
		{"no such key", 404, "NoSuchKey", driver.CodeNotFound},
		{"head 404", 404, "NotFound", driver.CodeNotFound},
		{"404 without a code", 404, "", driver.CodeNotFound},
		{"no such bucket", 404, "NoSuchBucket", driver.CodeInvalid},
		{"precondition failed", 412, "PreconditionFailed", driver.CodePrecondition},
		{"412 without a code", 412, "", driver.CodePrecondition},
		{"conditional request conflict", 409, "ConditionalRequestConflict", driver.CodePrecondition},
		{"operation aborted", 409, "OperationAborted", driver.CodePrecondition},
		{"no such upload", 404, "NoSuchUpload", driver.CodeUnknown},
		{"not implemented", 501, "NotImplemented", driver.CodeUnsupported},
		{"internal error", 500, "InternalError", driver.CodeUnavailable},
		{"slow down", 503, "SlowDown", driver.CodeUnavailable},
		{"request timeout", 400, "RequestTimeout", driver.CodeUnavailable},
		{"throttling", 400, "Throttling", driver.CodeUnavailable},
		{"too many requests", 429, "", driver.CodeUnavailable},
		{"invalid argument", 400, "InvalidArgument", driver.CodeInvalid},
		{"key too long", 400, "KeyTooLongError", driver.CodeInvalid},
		{"access denied", 403, "AccessDenied", driver.CodeUnknown},
		{"bad key id", 403, "InvalidAccessKeyId", driver.CodeUnknown},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := answer(c.status, c.code)
			if got := code(err); got != c.want {
				t.Fatalf("ErrorCode(%v) = %d, want %d", err, got, c.want)
			}
		})
	}
	t.Run("ping on a missing bucket", func(t *testing.T) {
		err := s3proto.PingError("s3", "b", false, 404, answer(404, "NotFound"))
		if got := code(err); got != driver.CodeInvalid || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("ErrorCode(%v) = %d, want CodeInvalid naming the bucket", err, got)
		}
	})
}

// Server gives Findings the server under a Backend. Keys are the
// Backend's, without its prefix.
type Server interface {
	// Version returns the driver.Version of an object with ETag etag.
	Version(etag string) driver.Version
	// DeleteIfMatch deletes key with If-Match: etag past the Backend, and
	// returns the HTTP status of the answer.
	DeleteIfMatch(ctx context.Context, key, etag string) (int, error)
	// ListRaw lists the keys under prefix asking for up to max of them,
	// and returns how many came and whether the answer says there are
	// more.
	ListRaw(ctx context.Context, prefix string, max int) (int, bool, error)
	// Uploads returns how many multipart uploads are under way.
	Uploads(ctx context.Context) (int, error)
}

// Findings records what the server under the Harness that mk makes does
// where stores differ; the adapters' package docs list the results for
// MinIO.
func Findings(t *testing.T, mk conformance.HarnessMaker) {
	h, err := mk(t.Context(), t)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	b, srv, err := h.(interface {
		findings() (driver.Backend, Server, error)
	}).findings()
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	put := func(key, data string, o driver.PutOptions) (driver.Version, error) {
		o.Size = int64(len(data))
		return b.Put(ctx, key, strings.NewReader(data), &o)
	}

	t.Run("IfMatchMissingKey", func(t *testing.T) {
		// MinIO and AWS: 404 NoSuchKey, so CodeNotFound.
		_, err := put("inc/0000000a", "x", driver.PutOptions{IfMatch: srv.Version("0123456789abcdef0123456789abcdef")})
		t.Logf("If-Match on a missing key: %v", err)
		if got := b.ErrorCode(err); got != driver.CodeNotFound {
			t.Fatalf("code %d, want CodeNotFound: %v", got, err)
		}
	})

	t.Run("ConditionalDelete", func(t *testing.T) {
		// A finding about the server, not a requirement: MinIO deletes in
		// spite of a wrong If-Match, AWS and some other servers answer
		// 412 and keep the object. The adapters rely on neither; only an
		// answer that contradicts the outcome fails.
		key := "inc/0000000b"
		if _, err := put(key, "x", driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		status, err := srv.DeleteIfMatch(ctx, key, `"0123456789abcdef0123456789abcdef"`)
		if err != nil {
			t.Fatal(err)
		}
		_, _, gerr := b.Get(ctx, key)
		deleted := b.ErrorCode(gerr) == driver.CodeNotFound
		switch {
		case status == http.StatusNoContent && deleted:
			t.Logf("finding: DELETE with a wrong If-Match is ignored; the object is deleted (as MinIO does)")
		case status == http.StatusPreconditionFailed && !deleted:
			t.Logf("finding: DELETE with a wrong If-Match is refused (412); the object stays (as AWS does)")
		default:
			t.Fatalf("DELETE with a wrong If-Match: %d, object deleted %v: the answer contradicts the outcome", status, deleted)
		}
	})

	t.Run("ListPageCap", func(t *testing.T) {
		// A page holds at most 1000 keys even when more are asked for.
		const n = 1005
		sem := make(chan struct{}, 32)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if _, err := put(fmt.Sprintf("due/000000000001/%016x", i+1), "", driver.PutOptions{}); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		got, truncated, err := srv.ListRaw(ctx, "due/", 5000)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("list of max 5000 keys over %d keys: %d keys, truncated %v", n, got, truncated)
		if got != 1000 || !truncated {
			t.Fatalf("got %d keys, truncated %v; want 1000 and truncated", got, truncated)
		}
		keys, more, err := b.List(ctx, "due/", "", 1000)
		if err != nil || len(keys) != 1000 || !more {
			t.Fatalf("List limit 1000 = %d keys, more %v, %v", len(keys), more, err)
		}
		keys, more, err = b.List(ctx, "due/", keys[999], 1000)
		if err != nil || len(keys) != 5 || more {
			t.Fatalf("second page = %d keys, more %v, %v", len(keys), more, err)
		}
	})

	t.Run("Multipart", func(t *testing.T) {
		const size = 2*s3proto.DefaultPartSize + 12345
		data := make([]byte, size)
		rand.Read(data)
		stream := func() io.Reader { return io.MultiReader(bytes.NewReader(data)) } // hides the length
		key := "msg/00/0000000c"
		v1, err := b.Put(ctx, key, stream(), &driver.PutOptions{IfNoneMatch: true, Size: -1})
		if err != nil {
			t.Fatalf("create-only multipart: %v", err)
		}
		if !strings.HasSuffix(strings.Trim(string(v1), `"`), "-3") {
			t.Errorf("version %s: want the ETag of a 3-part upload", v1)
		}
		_, err = b.Put(ctx, key, stream(), &driver.PutOptions{IfNoneMatch: true, Size: -1})
		t.Logf("create-only multipart over an existing key: %v", err)
		if got := b.ErrorCode(err); got != driver.CodePrecondition {
			t.Fatalf("second create-only multipart: code %d, want CodePrecondition: %v", got, err)
		}
		_, err = b.Put(ctx, key, stream(), &driver.PutOptions{IfMatch: srv.Version("0123456789abcdef0123456789abcdef-3"), Size: size})
		if got := b.ErrorCode(err); got != driver.CodePrecondition {
			t.Fatalf("multipart CAS with a stale version: code %d, want CodePrecondition: %v", got, err)
		}
		v2, err := b.Put(ctx, key, stream(), &driver.PutOptions{IfMatch: v1, Size: size})
		if err != nil {
			t.Fatalf("multipart CAS: %v", err)
		}
		rc, a, err := b.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) || a.Size != size || a.Version != v2 {
			t.Fatalf("read back %d bytes (equal %v), attrs %+v, want %d bytes version %s: %v", len(got), bytes.Equal(got, data), a, size, v2, err)
		}
		// No upload is left behind by the refused ones.
		if n, err := srv.Uploads(ctx); err != nil || n != 0 {
			t.Fatalf("%d multipart uploads left behind (%v)", n, err)
		}
	})

	t.Run("PartBoundaries", func(t *testing.T) {
		const ps = s3proto.DefaultPartSize
		for _, n := range []int{0, 1, ps - 1, ps, ps + 1, 2 * ps} {
			data := bytes.Repeat([]byte{'x'}, n)
			for _, hint := range []int64{-1, int64(n), 10} {
				key := fmt.Sprintf("msg/01/%08x", n)
				if _, err := b.Put(ctx, key, io.MultiReader(bytes.NewReader(data)), &driver.PutOptions{Size: hint}); err != nil {
					t.Fatalf("Put %d bytes, hint %d: %v", n, hint, err)
				}
				if a, err := b.(driver.Stater).Stat(ctx, key); err != nil || a.Size != int64(n) {
					t.Fatalf("Stat after Put of %d bytes, hint %d: %+v, %v", n, hint, a, err)
				}
			}
		}
	})
}
