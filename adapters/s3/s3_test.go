package s3

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

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// The tests run against the server that MXQ_TEST_S3_URL names (see
// scripts/services), under a prefix of their own.
const urlVar = "MXQ_TEST_S3_URL"

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

// target returns the client and bucket of MXQ_TEST_S3_URL and a fresh
// prefix under it, creating the bucket if needed. It skips the test when
// the variable is unset, unless MXQ_REQUIRE_SERVICES=1.
func target(ctx context.Context, t testing.TB) (*awss3.Client, string, string) {
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
	client, bucket, err := testOpener.client(ctx, u)
	if err != nil {
		t.Fatalf("%s: %v", urlVar, err)
	}
	o, _ := bucketOnce.LoadOrStore(bucket, new(sync.Once))
	o.(*sync.Once).Do(func() { err = createBucket(ctx, client, bucket) })
	if err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	prefix := strings.TrimLeft(u.Path, "/")
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return client, bucket, fmt.Sprintf("%s%s%d/", prefix, runPrefix, harnesses.Add(1))
}

func createBucket(ctx context.Context, client *awss3.Client, bucket string) error {
	_, err := client.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: &bucket})
	switch apiCode(err) {
	case "BucketAlreadyOwnedByYou", "BucketAlreadyExists":
		return nil
	}
	return err
}

// cleanup deletes every object under prefix.
func cleanup(client *awss3.Client, bucket, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := awss3.NewListObjectsV2Paginator(client, &awss3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		if len(page.Contents) == 0 {
			continue
		}
		var ids []types.ObjectIdentifier
		for _, o := range page.Contents {
			ids = append(ids, types.ObjectIdentifier{Key: o.Key})
		}
		if _, err := client.DeleteObjects(ctx, &awss3.DeleteObjectsInput{Bucket: &bucket, Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)}}); err != nil {
			return err
		}
	}
	return nil
}

type harness struct {
	t              testing.TB
	client         *awss3.Client
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

// isolate keeps the test away from the machine's AWS configuration and
// from the instance metadata service.
func isolate(t *testing.T) {
	t.Setenv("AWS_CONFIG_FILE", os.DevNull)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", os.DevNull)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_PROFILE", "")
}

func TestOpenURL(t *testing.T) {
	isolate(t)
	t.Setenv("AWS_REGION", "eu-west-1")
	for _, c := range []struct {
		name    string
		url     string
		noEnv   bool // without AWS_REGION
		wantErr error
	}{
		{name: "bucket only", url: "s3://bucket"},
		{name: "prefix", url: "s3://bucket/some/prefix/"},
		{name: "all parameters", url: "s3://bucket/p?region=us-east-1&endpoint=http://127.0.0.1:9000&use_path_style=true&disable_https=true"},
		{name: "endpoint without scheme", url: "s3://bucket?endpoint=127.0.0.1:9000&use_path_style=1"},
		{name: "endpoint sets a default region", url: "s3://bucket?endpoint=http://127.0.0.1:9000", noEnv: true},
		{name: "no region", url: "s3://bucket", noEnv: true, wantErr: queue.ErrInvalid},
		{name: "region from the URL", url: "s3://bucket?region=us-west-2", noEnv: true},
		{name: "unknown parameter", url: "s3://bucket?regoin=us-east-1", wantErr: queue.ErrInvalid},
		{name: "prefix as a parameter", url: "s3://bucket?prefix=a/", wantErr: queue.ErrInvalid},
		{name: "repeated parameter", url: "s3://bucket?region=a&region=b", wantErr: queue.ErrInvalid},
		{name: "no bucket", url: "s3:///prefix", wantErr: queue.ErrInvalid},
		{name: "credentials in the URL", url: "s3://key:secret@bucket", wantErr: queue.ErrInvalid},
		{name: "credentials in the endpoint", url: "s3://bucket?endpoint=http://key:secret@127.0.0.1:9000", wantErr: queue.ErrInvalid},
		{name: "endpoint not http", url: "s3://bucket?endpoint=ftp://127.0.0.1", wantErr: queue.ErrInvalid},
		{name: "https endpoint with disable_https", url: "s3://bucket?endpoint=https://127.0.0.1&disable_https=true", wantErr: queue.ErrInvalid},
		{name: "bad use_path_style", url: "s3://bucket?use_path_style=maybe", wantErr: queue.ErrInvalid},
		{name: "bad disable_https", url: "s3://bucket?disable_https=2", wantErr: queue.ErrInvalid},
		{name: "missing profile", url: "s3://bucket?profile=no-such-profile", wantErr: queue.ErrInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.noEnv {
				t.Setenv("AWS_REGION", "")
				t.Setenv("AWS_DEFAULT_REGION", "")
			}
			mux := new(queue.URLMux)
			mux.Register(Scheme, new(URLOpener))
			s, err := mux.Open(t.Context(), c.url)
			if c.wantErr == nil {
				if err != nil {
					t.Fatalf("Open(%s): %v", c.url, err)
				}
				s.Close()
				return
			}
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("Open(%s) = %v, want %v", c.url, err, c.wantErr)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error shows the secret: %v", err)
			}
		})
	}
}

func TestRegistered(t *testing.T) {
	if !queue.DefaultURLMux().ValidScheme(Scheme) {
		t.Fatalf("scheme %q is not registered", Scheme)
	}
}

// apiErr builds the error the SDK returns for an S3 error response.
func apiErr(status int, code string) error {
	return &smithy.OperationError{
		ServiceID: "S3", OperationName: "PutObject",
		Err: &awshttp.ResponseError{
			ResponseError: &smithyhttp.ResponseError{
				Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
				Err:      &smithy.GenericAPIError{Code: code, Message: code},
			},
			RequestID: "req",
		},
	}
}

func TestErrorCode(t *testing.T) {
	b := new(backend)
	for _, c := range []struct {
		name string
		err  error
		want driver.Code
	}{
		{"no such key", apiErr(404, "NoSuchKey"), driver.CodeNotFound},
		{"head 404", apiErr(404, "NotFound"), driver.CodeNotFound},
		{"404 without a code", apiErr(404, ""), driver.CodeNotFound},
		{"no such bucket", apiErr(404, "NoSuchBucket"), driver.CodeInvalid},
		{"ping on a missing bucket", fmt.Errorf("s3: bucket %q: %w: %w", "b", errNoSuchBucket, apiErr(404, "NotFound")), driver.CodeInvalid},
		{"precondition failed", apiErr(412, "PreconditionFailed"), driver.CodePrecondition},
		{"412 without a code", apiErr(412, ""), driver.CodePrecondition},
		{"conditional request conflict", apiErr(409, "ConditionalRequestConflict"), driver.CodePrecondition},
		{"operation aborted", apiErr(409, "OperationAborted"), driver.CodePrecondition},
		{"no such upload", apiErr(404, "NoSuchUpload"), driver.CodeUnknown},
		{"not implemented", apiErr(501, "NotImplemented"), driver.CodeUnsupported},
		{"internal error", apiErr(500, "InternalError"), driver.CodeUnavailable},
		{"slow down", apiErr(503, "SlowDown"), driver.CodeUnavailable},
		{"request timeout", apiErr(400, "RequestTimeout"), driver.CodeUnavailable},
		{"throttling", apiErr(400, "Throttling"), driver.CodeUnavailable},
		{"invalid argument", apiErr(400, "InvalidArgument"), driver.CodeInvalid},
		{"key too long", apiErr(400, "KeyTooLongError"), driver.CodeInvalid},
		{"access denied", apiErr(403, "AccessDenied"), driver.CodeUnknown},
		{"bad key id", apiErr(403, "InvalidAccessKeyId"), driver.CodeUnknown},
		{"connection refused", &smithy.OperationError{Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}, driver.CodeUnavailable},
		{"connection reset", &url.Error{Op: "Put", URL: "http://x", Err: errors.New("read: connection reset by peer")}, driver.CodeUnavailable},
		{"no such host", &net.DNSError{Err: "no such host", Name: "nohost.invalid", IsNotFound: true}, driver.CodeUnknown},
		{"other", errors.New("boom"), driver.CodeUnknown},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := b.ErrorCode(c.err); got != c.want {
				t.Fatalf("ErrorCode(%v) = %d, want %d", c.err, got, c.want)
			}
		})
	}
}

// raw returns the backend's object name for key.
func raw(prefix, key string) *string { return aws.String(prefix + key) }

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
		// MinIO and AWS: 404 NoSuchKey, so CodeNotFound.
		_, err := put("inc/0000000a", "x", driver.PutOptions{IfMatch: `"0123456789abcdef0123456789abcdef"`})
		t.Logf("If-Match on a missing key: %v", err)
		if got := b.ErrorCode(err); got != driver.CodeNotFound {
			t.Fatalf("code %d, want CodeNotFound: %v", got, err)
		}
	})

	t.Run("ConditionalDelete", func(t *testing.T) {
		// A finding about the server, not a requirement: MinIO deletes in
		// spite of a wrong If-Match, AWS and some other servers answer
		// 412 and keep the object. The adapter relies on neither; only an
		// answer that contradicts the outcome fails.
		key := "inc/0000000b"
		if _, err := put(key, "x", driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &bucket, Key: raw(prefix, key), IfMatch: aws.String(`"0123456789abcdef0123456789abcdef"`)})
		_, _, gerr := b.Get(ctx, key)
		deleted := b.ErrorCode(gerr) == driver.CodeNotFound
		switch {
		case err == nil && deleted:
			t.Logf("finding: DeleteObject with a wrong If-Match is ignored; the object is deleted (as MinIO does)")
		case err != nil && b.ErrorCode(err) == driver.CodePrecondition && !deleted:
			t.Logf("finding: DeleteObject with a wrong If-Match is refused (412); the object stays (as AWS does)")
		default:
			t.Fatalf("DeleteObject with a wrong If-Match: err %v, object deleted %v: the answer contradicts the outcome", err, deleted)
		}
	})

	t.Run("ListPageCap", func(t *testing.T) {
		// A page holds at most 1000 keys even when more are asked for.
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
		out, err := client.ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: &bucket, Prefix: raw(prefix, "due/"), MaxKeys: aws.Int32(5000)})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("ListObjectsV2 MaxKeys=5000 over %d keys: %d keys, truncated %v", n, len(out.Contents), aws.ToBool(out.IsTruncated))
		if len(out.Contents) != 1000 || !aws.ToBool(out.IsTruncated) {
			t.Fatalf("got %d keys, truncated %v; want 1000 and truncated", len(out.Contents), aws.ToBool(out.IsTruncated))
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
		if !strings.HasSuffix(string(v1), `-3"`) {
			t.Errorf("version %s: want the ETag of a 3-part upload", v1)
		}
		_, err = b.Put(ctx, key, stream(), &driver.PutOptions{IfNoneMatch: true, Size: -1})
		t.Logf("create-only multipart over an existing key: %v", err)
		if got := b.ErrorCode(err); got != driver.CodePrecondition {
			t.Fatalf("second create-only multipart: code %d, want CodePrecondition: %v", got, err)
		}
		_, err = b.Put(ctx, key, stream(), &driver.PutOptions{IfMatch: `"0123456789abcdef0123456789abcdef-3"`, Size: size})
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
		ups, err := client.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: &bucket, Prefix: raw(prefix, "")})
		if err != nil {
			t.Fatal(err)
		}
		if len(ups.Uploads) != 0 {
			t.Fatalf("%d multipart uploads left behind", len(ups.Uploads))
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
	raw := os.Getenv(urlVar)
	client, bucket, _ := target(t.Context(), t)
	_ = client
	u, _ := url.Parse(raw)

	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := l.Addr().String()
	l.Close()

	with := func(u *url.URL, f func(q url.Values)) string {
		c := *u
		q := c.Query()
		f(q)
		c.RawQuery = q.Encode()
		return c.String()
	}
	for _, c := range []struct {
		name  string
		url   string
		env   map[string]string
		check func(t *testing.T, err error)
	}{
		{
			name: "wrong endpoint",
			url:  with(u, func(q url.Values) { q.Set("endpoint", "http://"+deadAddr) }),
			check: func(t *testing.T, err error) {
				if !errors.Is(err, queue.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("want ErrUnavailable or the deadline: %v", err)
				}
			},
		},
		{
			name: "wrong credentials",
			url:  u.String(),
			env:  map[string]string{"AWS_SECRET_ACCESS_KEY": "wrong-secret-key"},
			check: func(t *testing.T, err error) {
				if errors.Is(err, queue.ErrNotFound) || errors.Is(err, queue.ErrUnavailable) {
					t.Fatalf("want neither ErrNotFound nor ErrUnavailable: %v", err)
				}
				if httpStatus(err) != http.StatusForbidden {
					t.Fatalf("want the 403 reachable: %v", err)
				}
			},
		},
		{
			name: "missing bucket",
			url:  strings.Replace(u.String(), "//"+bucket, "//no-such-bucket-"+strings.TrimSuffix(runPrefix[4:], "/"), 1),
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
