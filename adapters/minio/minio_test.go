package minio

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/signer"

	"github.com/mxqueue/mxq/adapters/internal/s3proto/s3test"
	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// The tests run against the server that MXQ_TEST_MINIO_URL names (see
// scripts/services), under a prefix of their own.
const urlVar = "MXQ_TEST_MINIO_URL"

var testOpener URLOpener

// target returns the client and bucket of MXQ_TEST_MINIO_URL and a fresh
// prefix under it, creating the bucket if needed.
func target(ctx context.Context, t testing.TB) (*minio.Client, string, string) {
	t.Helper()
	client, bucket, prefix, err := testOpener.client(s3test.URL(t, urlVar))
	if err != nil {
		t.Fatalf("%s: %v", urlVar, err)
	}
	err = s3test.CreateBucket(bucket, func() error {
		return client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
	}, func(err error) string { return minio.ToErrorResponse(err).Code })
	if err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	return client, bucket, s3test.Prefix(prefix)
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

// deadClient is the s3test.DeadClient of the tests: the server is
// replaced, or the secret key.
func deadClient(ctx context.Context, t testing.TB, d conformance.Dead, addr string) (*minio.Client, error) {
	u := s3test.URL(t, urlVar)
	if d == conformance.DeadEndpoint {
		u.Host = addr
	} else {
		for _, v := range []string{"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} {
			t.Setenv(v, "")
		}
		t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-key")
	}
	c, _, _, err := new(URLOpener).client(u)
	return c, err
}

func newHarness(ctx context.Context, t testing.TB) (conformance.Harness, error) {
	client, bucket, prefix := target(ctx, t)
	srv := &server{client: client, bucket: bucket, prefix: prefix}
	return s3test.NewHarness(t, client, bucket, prefix, srv, openBackend, cleanup, deadClient), nil
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
	s3test.ErrorCode(t, b.ErrorCode, resp)
	for _, c := range []struct {
		name string
		err  error
		want driver.Code
	}{
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

// server is the s3test.Server of the tests.
type server struct {
	client         *minio.Client
	bucket, prefix string
}

func (s *server) Version(etag string) driver.Version { return driver.Version(etag) }

// DeleteIfMatch signs the request itself: minio-go has no If-Match on
// RemoveObject.
func (s *server) DeleteIfMatch(ctx context.Context, key, etag string) (int, error) {
	creds, err := s.client.GetCreds()
	if err != nil {
		return 0, err
	}
	u := *s.client.EndpointURL()
	u.Path = "/" + s.bucket + "/" + s.prefix + key
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.String(), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("If-Match", etag)
	req.Header.Set("X-Amz-Content-Sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
	req = signer.SignV4(*req, creds.AccessKeyID, creds.SecretAccessKey, creds.SessionToken, "us-east-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (s *server) ListRaw(ctx context.Context, prefix string, max int) (int, bool, error) {
	res, err := (minio.Core{Client: s.client}).ListObjectsV2(s.bucket, s.prefix+prefix, "", "", "", max)
	return len(res.Contents), res.IsTruncated, err
}

func (s *server) Uploads(ctx context.Context) (int, error) {
	n := 0
	for up := range s.client.ListIncompleteUploads(ctx, s.bucket, s.prefix, true) {
		if up.Err != nil {
			return n, up.Err
		}
		n++
	}
	return n, nil
}

// TestFindings records what the server under test does where stores
// differ; the package doc lists the results for MinIO.
func TestFindings(t *testing.T) { s3test.Findings(t, newHarness) }

// signedBodies is a transport that checks, for each PUT, that the request
// names the SHA-256 of the body it carries, and counts those it saw.
type signedBodies struct {
	next http.RoundTripper
	mu   sync.Mutex
	puts int
	errs []string
}

func (s *signedBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPut && req.Body != nil {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		sum := sha256.Sum256(body)
		s.mu.Lock()
		s.puts++
		if got := req.Header.Get("X-Amz-Content-Sha256"); got != hex.EncodeToString(sum[:]) {
			s.errs = append(s.errs, fmt.Sprintf("PUT %s of %d bytes: X-Amz-Content-Sha256 %q, Content-Encoding %q", req.URL.Path, len(body), got, req.Header.Get("Content-Encoding")))
		}
		s.mu.Unlock()
	}
	return s.next.RoundTrip(req)
}

// TestPutSignsPayload: a PUT, single or a part of a multipart upload,
// signs its body's SHA-256 in the header rather than as an aws-chunked
// stream, which costs a 64 KiB buffer and a signature per chunk on
// both sides.
func TestPutSignsPayload(t *testing.T) {
	ctx := context.Background()
	_, bucket, prefix := target(ctx, t)
	rec := &signedBodies{next: newTransport()}
	o := new(URLOpener)
	o.once.Do(func() { o.transport = rec })
	client, _, _, err := o.client(s3test.URL(t, urlVar))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanup(client, bucket, prefix) })
	b, err := openBackend(client, bucket, &Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	small := []byte("one small object")
	large := bytes.Repeat([]byte("x"), DefaultPartSize+1)
	for _, c := range []struct {
		data []byte
		opts driver.PutOptions
	}{{small, driver.PutOptions{IfNoneMatch: true}}, {small, driver.PutOptions{}}, {large, driver.PutOptions{IfNoneMatch: true}}} {
		key := fmt.Sprintf("signed/%d-%v", len(c.data), c.opts.IfNoneMatch)
		if _, err := b.Put(ctx, key, bytes.NewReader(c.data), &c.opts); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		r, _, err := b.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, c.data) {
			t.Fatalf("get %s: %d bytes back, %v", key, len(got), err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.puts < 4 { // two single PUTs, two parts
		t.Fatalf("the transport saw %d PUTs, want at least 4", rec.puts)
	}
	for _, e := range rec.errs {
		t.Error(e)
	}
}
