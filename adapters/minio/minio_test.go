package minio

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
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
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/signer"

	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// The tests run against the server that MXQ_TEST_MINIO_URL names (see
// scripts/services), under a prefix of their own.
const urlVar = "MXQ_TEST_MINIO_URL"

var (
	runPrefix = func() string {
		var b [6]byte
		rand.Read(b[:])
		return "run-" + hex.EncodeToString(b[:]) + "/"
	}()
	harnesses  atomic.Int64
	testOpener URLOpener
	bucketOnce sync.Map // bucket -> *sync.Once
)

// target returns the client and bucket of MXQ_TEST_MINIO_URL and a fresh
// prefix under it, creating the bucket if needed. It skips the test when
// the variable is unset, unless MXQ_REQUIRE_SERVICES=1.
func target(ctx context.Context, t testing.TB) (*minio.Client, string, string) {
	t.Helper()
	raw := os.Getenv(urlVar)
	if raw == "" {
		if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
			t.Fatalf("%s not set and MXQ_REQUIRE_SERVICES=1; run scripts/services start", urlVar)
		}
		t.Skipf("%s not set; see scripts/services", urlVar)
	}
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%s: %v", urlVar, err)
	}
	client, bucket, prefix, err := testOpener.client(u)
	if err != nil {
		t.Fatalf("%s: %v", urlVar, err)
	}
	o, _ := bucketOnce.LoadOrStore(bucket, new(sync.Once))
	o.(*sync.Once).Do(func() { err = createBucket(ctx, client, bucket) })
	if err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return client, bucket, fmt.Sprintf("%s%s%d/", prefix, runPrefix, harnesses.Add(1))
}

func createBucket(ctx context.Context, client *minio.Client, bucket string) error {
	err := client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
	switch minio.ToErrorResponse(err).Code {
	case "BucketAlreadyOwnedByYou", "BucketAlreadyExists":
		return nil
	}
	return err
}

// cleanup deletes every object under prefix.
func cleanup(client *minio.Client, bucket, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	objs := client.ListObjects(ctx, bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true})
	for res := range client.RemoveObjects(ctx, bucket, objs, minio.RemoveObjectsOptions{}) {
		if res.Err != nil {
			return res.Err
		}
	}
	return ctx.Err()
}

type harness struct {
	t              testing.TB
	client         *minio.Client
	bucket, prefix string
}

func (h *harness) MakeBackend(context.Context) (driver.Backend, error) {
	return openBackend(h.client, h.bucket, &Options{Prefix: h.prefix})
}

func (h *harness) Capabilities() conformance.Capabilities {
	return conformance.Capabilities{IfMatchMissing: driver.CodeNotFound}
}

func (h *harness) Close() {
	if err := cleanup(h.client, h.bucket, h.prefix); err != nil {
		h.t.Errorf("cleanup of %s: %v", h.prefix, err)
	}
}

func newHarness(ctx context.Context, t testing.TB) (conformance.Harness, error) {
	client, bucket, prefix := target(ctx, t)
	return &harness{t: t, client: client, bucket: bucket, prefix: prefix}, nil
}

func TestConformance(t *testing.T) { conformance.Run(t, newHarness) }

func TestConformanceEncrypted(t *testing.T) { conformance.RunEncrypted(t, newHarness) }

func BenchmarkConformance(b *testing.B) { conformance.RunBenchmarks(b, newHarness) }

func TestOpenURL(t *testing.T) {
	for _, v := range []string{"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "AWS_SESSION_TOKEN"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "access")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret-key")
	for _, c := range []struct {
		name       string
		url        string
		env        map[string]string
		wantBucket string
		wantPrefix string
		wantErr    error
	}{
		{name: "bucket only", url: "minio://127.0.0.1:9000/bucket", wantBucket: "bucket"},
		{name: "prefix", url: "minio://127.0.0.1:9000/bucket/some/prefix/", wantBucket: "bucket", wantPrefix: "some/prefix/"},
		{name: "all parameters", url: "minio://localhost:9000/bucket/p?secure=false&region=us-east-1", wantBucket: "bucket", wantPrefix: "p"},
		{name: "minio root credentials", url: "minio://127.0.0.1:9000/bucket", env: map[string]string{"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "password"}, wantBucket: "bucket"},
		{name: "minio access key", url: "minio://127.0.0.1:9000/bucket", env: map[string]string{"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "MINIO_ACCESS_KEY": "u", "MINIO_SECRET_KEY": "password"}, wantBucket: "bucket"},
		{name: "no credentials", url: "minio://127.0.0.1:9000/bucket", env: map[string]string{"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, wantErr: queue.ErrInvalid},
		{name: "unknown parameter", url: "minio://127.0.0.1:9000/bucket?endpoint=x", wantErr: queue.ErrInvalid},
		{name: "repeated parameter", url: "minio://127.0.0.1:9000/bucket?secure=true&secure=false", wantErr: queue.ErrInvalid},
		{name: "bad secure", url: "minio://127.0.0.1:9000/bucket?secure=perhaps", wantErr: queue.ErrInvalid},
		{name: "no bucket", url: "minio://127.0.0.1:9000/", wantErr: queue.ErrInvalid},
		{name: "no host", url: "minio:///bucket", wantErr: queue.ErrInvalid},
		{name: "credentials in the URL", url: "minio://key:secret@127.0.0.1:9000/bucket", wantErr: queue.ErrInvalid},
		{name: "invalid bucket name", url: "minio://127.0.0.1:9000/Bad_Bucket", wantErr: queue.ErrInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			u, err := url.Parse(c.url)
			if err != nil {
				t.Fatal(err)
			}
			mux := new(queue.URLMux)
			mux.Register(Scheme, new(URLOpener))
			s, err := mux.Open(t.Context(), c.url)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("Open(%s) = %v, want %v", c.url, err, c.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Fatalf("error shows the secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%s): %v", c.url, err)
			}
			s.Close()
			_, bucket, prefix, err := new(URLOpener).client(u)
			if err != nil || bucket != c.wantBucket || prefix != c.wantPrefix {
				t.Fatalf("bucket %q prefix %q (%v), want %q and %q", bucket, prefix, err, c.wantBucket, c.wantPrefix)
			}
		})
	}
}

func TestRegistered(t *testing.T) {
	if !queue.DefaultURLMux().ValidScheme(Scheme) {
		t.Fatalf("scheme %q is not registered", Scheme)
	}
}

func TestErrorCode(t *testing.T) {
	b := new(backend)
	resp := func(status int, code string) error {
		return minio.ErrorResponse{StatusCode: status, Code: code, Message: code}
	}
	for _, c := range []struct {
		name string
		err  error
		want driver.Code
	}{
		{"no such key", resp(404, "NoSuchKey"), driver.CodeNotFound},
		{"404 without a code", resp(404, ""), driver.CodeNotFound},
		{"no such bucket", resp(404, "NoSuchBucket"), driver.CodeInvalid},
		{"ping on a missing bucket", fmt.Errorf("minio: bucket %q: %w", "b", errNoSuchBucket), driver.CodeInvalid},
		{"precondition failed", resp(412, "PreconditionFailed"), driver.CodePrecondition},
		{"412 without a code", resp(412, ""), driver.CodePrecondition},
		{"conditional request conflict", resp(409, "ConditionalRequestConflict"), driver.CodePrecondition},
		{"not implemented", resp(501, "NotImplemented"), driver.CodeUnsupported},
		{"internal error", resp(500, "InternalError"), driver.CodeUnavailable},
		{"slow down", resp(503, "SlowDown"), driver.CodeUnavailable},
		{"request timeout", resp(400, "RequestTimeout"), driver.CodeUnavailable},
		{"too many requests", resp(429, ""), driver.CodeUnavailable},
		{"invalid argument", resp(400, "InvalidArgument"), driver.CodeInvalid},
		{"access denied", resp(403, "AccessDenied"), driver.CodeUnknown},
		{"no such upload", resp(404, "NoSuchUpload"), driver.CodeUnknown},
		{"wrapped", fmt.Errorf("x: %w", resp(412, "PreconditionFailed")), driver.CodePrecondition},
		{"connection refused", &url.Error{Op: "Get", URL: "http://x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}, driver.CodeUnavailable},
		{"unexpected EOF", io.ErrUnexpectedEOF, driver.CodeUnavailable},
		{"no such host", &url.Error{Op: "Get", URL: "http://x", Err: &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}}, driver.CodeUnknown},
		{"other", errors.New("boom"), driver.CodeUnknown},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := b.ErrorCode(c.err); got != c.want {
				t.Fatalf("ErrorCode(%v) = %d, want %d", c.err, got, c.want)
			}
		})
	}
}

// TestFindings records what the server under test does where stores
// differ; the package doc lists the results for MinIO.
func TestFindings(t *testing.T) {
	ctx := t.Context()
	client, bucket, prefix := target(ctx, t)
	t.Cleanup(func() { cleanup(client, bucket, prefix) })
	b, err := openBackend(client, bucket, &Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	put := func(key, data string, o driver.PutOptions) (driver.Version, error) {
		o.Size = int64(len(data))
		return b.Put(ctx, key, strings.NewReader(data), &o)
	}

	t.Run("IfMatchMissingKey", func(t *testing.T) {
		_, err := put("inc/0000000a", "x", driver.PutOptions{IfMatch: "0123456789abcdef0123456789abcdef"})
		t.Logf("If-Match on a missing key: %v (%+v)", err, minio.ToErrorResponse(err))
		if got := b.ErrorCode(err); got != driver.CodeNotFound {
			t.Fatalf("code %d, want CodeNotFound: %v", got, err)
		}
	})

	t.Run("ConditionalDelete", func(t *testing.T) {
		// A finding about the server, not a requirement: MinIO deletes in
		// spite of a wrong If-Match, AWS and some other servers answer
		// 412 and keep the object. Only an answer that contradicts the
		// outcome fails.
		// minio-go has no If-Match on RemoveObject: sign the request here.
		key := "inc/0000000b"
		if _, err := put(key, "x", driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		creds, err := client.GetCreds()
		if err != nil {
			t.Fatal(err)
		}
		u := *client.EndpointURL()
		u.Path = "/" + bucket + "/" + prefix + key
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("If-Match", `"0123456789abcdef0123456789abcdef"`)
		req.Header.Set("X-Amz-Content-Sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
		req = signer.SignV4(*req, creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken, "us-east-1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		_, _, gerr := b.Get(ctx, key)
		deleted := b.ErrorCode(gerr) == driver.CodeNotFound
		switch {
		case resp.StatusCode == http.StatusNoContent && deleted:
			t.Logf("finding: DELETE with a wrong If-Match is ignored; the object is deleted (as MinIO does)")
		case resp.StatusCode == http.StatusPreconditionFailed && !deleted:
			t.Logf("finding: DELETE with a wrong If-Match is refused (412); the object stays (as AWS does)")
		default:
			t.Fatalf("DELETE with a wrong If-Match: %s, object deleted %v: the answer contradicts the outcome", resp.Status, deleted)
		}
	})

	t.Run("ListPageCap", func(t *testing.T) {
		const n = 1005
		sem := make(chan struct{}, 32)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if _, err := put(fmt.Sprintf("due/000000000001/%016x", i+1), "", driver.PutOptions{}); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		res, err := (minio.Core{Client: client}).ListObjectsV2(bucket, prefix+"due/", "", "", "", 5000)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("ListObjectsV2 max-keys=5000 over %d keys: %d keys, truncated %v", n, len(res.Contents), res.IsTruncated)
		if len(res.Contents) != 1000 || !res.IsTruncated {
			t.Fatalf("got %d keys, truncated %v; want 1000 and truncated", len(res.Contents), res.IsTruncated)
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
		const size = 2*DefaultPartSize + 12345
		data := make([]byte, size)
		rand.Read(data)
		stream := func() io.Reader { return io.MultiReader(bytes.NewReader(data)) } // hides the length
		key := "msg/00/0000000c"
		v1, err := b.Put(ctx, key, stream(), &driver.PutOptions{IfNoneMatch: true, Size: -1})
		if err != nil {
			t.Fatalf("create-only multipart: %v", err)
		}
		if !strings.HasSuffix(string(v1), "-3") {
			t.Errorf("version %s: want the ETag of a 3-part upload", v1)
		}
		_, err = b.Put(ctx, key, stream(), &driver.PutOptions{IfNoneMatch: true, Size: -1})
		t.Logf("create-only multipart over an existing key: %v", err)
		if got := b.ErrorCode(err); got != driver.CodePrecondition {
			t.Fatalf("second create-only multipart: code %d, want CodePrecondition: %v", got, err)
		}
		_, err = b.Put(ctx, key, stream(), &driver.PutOptions{IfMatch: "0123456789abcdef0123456789abcdef-3", Size: size})
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
		for up := range client.ListIncompleteUploads(ctx, bucket, prefix, true) {
			t.Fatalf("multipart upload left behind: %+v", up)
		}
	})

	t.Run("PartBoundaries", func(t *testing.T) {
		for _, n := range []int{0, 1, DefaultPartSize - 1, DefaultPartSize, DefaultPartSize + 1, 2 * DefaultPartSize} {
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

// TestDeadStore checks that a store that cannot work fails clearly and in
// time.
func TestDeadStore(t *testing.T) {
	_, bucket, _ := target(t.Context(), t)
	u, _ := url.Parse(os.Getenv(urlVar))

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := l.Addr().String()
	l.Close()

	withHost := func(host string) string { c := *u; c.Host = host; return c.String() }
	for _, c := range []struct {
		name  string
		url   string
		env   map[string]string
		check func(t *testing.T, err error)
	}{
		{
			name: "wrong endpoint",
			url:  withHost(deadAddr),
			check: func(t *testing.T, err error) {
				if !errors.Is(err, queue.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("want ErrUnavailable or the deadline: %v", err)
				}
			},
		},
		{
			name: "wrong credentials",
			url:  u.String(),
			env:  map[string]string{"MINIO_ROOT_USER": "", "MINIO_ROOT_PASSWORD": "", "MINIO_ACCESS_KEY": "", "MINIO_SECRET_KEY": "", "AWS_SECRET_ACCESS_KEY": "wrong-secret-key"},
			check: func(t *testing.T, err error) {
				if errors.Is(err, queue.ErrNotFound) || errors.Is(err, queue.ErrUnavailable) {
					t.Fatalf("want neither ErrNotFound nor ErrUnavailable: %v", err)
				}
				var er minio.ErrorResponse
				if !errors.As(err, &er) || er.StatusCode != http.StatusForbidden {
					t.Fatalf("want the 403 reachable: %v", err)
				}
			},
		},
		{
			name: "missing bucket",
			url:  strings.Replace(u.String(), "/"+bucket, "/no-such-bucket-"+strings.TrimSuffix(runPrefix[4:], "/"), 1),
			check: func(t *testing.T, err error) {
				if !errors.Is(err, queue.ErrInvalid) || !strings.Contains(err.Error(), "does not exist") {
					t.Fatalf("want ErrInvalid naming the bucket: %v", err)
				}
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			mux := new(queue.URLMux)
			mux.Register(Scheme, new(URLOpener))
			const deadline = 10 * time.Second
			ctx, cancel := context.WithTimeout(t.Context(), deadline)
			defer cancel()
			start := time.Now()
			s, err := mux.Open(ctx, c.url)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			err = s.Ping(ctx)
			took := time.Since(start)
			t.Logf("Ping after %v: %v", took.Round(time.Millisecond), err)
			if err == nil {
				t.Fatal("Ping succeeded")
			}
			if took > deadline+time.Second {
				t.Fatalf("Ping took %v, past the deadline of %v", took, deadline)
			}
			c.check(t, err)
		})
	}
}
