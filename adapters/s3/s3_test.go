package s3

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/mxqueue/mxq/adapters/internal/s3proto/s3test"
	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// The tests run against the server that MXQ_TEST_S3_URL names (see
// scripts/services), under a prefix of their own.
const urlVar = "MXQ_TEST_S3_URL"

var testOpener URLOpener

// target returns the client and bucket of MXQ_TEST_S3_URL and a fresh
// prefix under it, creating the bucket if needed.
func target(ctx context.Context, t testing.TB) (*awss3.Client, string, string) {
	t.Helper()
	u := s3test.URL(t, urlVar)
	client, bucket, err := testOpener.client(ctx, u)
	if err != nil {
		t.Fatalf("%s: %v", urlVar, err)
	}
	err = s3test.CreateBucket(bucket, func() error {
		_, err := client.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: &bucket})
		return err
	}, apiCode)
	if err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	return client, bucket, s3test.Prefix(u.Path)
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

func newHarness(ctx context.Context, t testing.TB) (conformance.Harness, error) {
	client, bucket, prefix := target(ctx, t)
	srv := &server{client: client, bucket: bucket, prefix: prefix}
	return s3test.NewHarness(t, client, bucket, prefix, srv, openBackend, cleanup, deadClient), nil
}

// deadClient is the s3test.DeadClient of the tests: the endpoint is
// replaced, or the secret key.
func deadClient(ctx context.Context, t testing.TB, d conformance.Dead, addr string) (*awss3.Client, error) {
	u := s3test.URL(t, urlVar)
	q := u.Query()
	switch d {
	case conformance.DeadEndpoint:
		q.Set("endpoint", "http://"+addr)
		u.RawQuery = q.Encode()
	case conformance.DeadCredentials:
		// A fresh opener below, as an opener loads the configuration once.
		t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-key")
	}
	c, _, err := new(URLOpener).client(ctx, u)
	return c, err
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
	s3test.ErrorCode(t, b.ErrorCode, apiErr)
	for _, c := range []struct {
		name string
		err  error
		want driver.Code
	}{
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

// server is the s3test.Server of the tests.
type server struct {
	client         *awss3.Client
	bucket, prefix string
}

func (s *server) Version(etag string) driver.Version { return driver.Version(`"` + etag + `"`) }

func (s *server) DeleteIfMatch(ctx context.Context, key, etag string) (int, error) {
	_, err := s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &s.bucket, Key: aws.String(s.prefix + key), IfMatch: &etag})
	if err == nil {
		return http.StatusNoContent, nil
	}
	if st := httpStatus(err); st != 0 {
		return st, nil
	}
	return 0, err
}

func (s *server) ListRaw(ctx context.Context, prefix string, max int) (int, bool, error) {
	out, err := s.client.ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: aws.String(s.prefix + prefix), MaxKeys: aws.Int32(int32(max))})
	if err != nil {
		return 0, false, err
	}
	return len(out.Contents), aws.ToBool(out.IsTruncated), nil
}

func (s *server) Uploads(ctx context.Context) (int, error) {
	ups, err := s.client.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &s.prefix})
	if err != nil {
		return 0, err
	}
	return len(ups.Uploads), nil
}

// TestFindings records what the server under test does where stores
// differ; the package doc lists the results for MinIO.
func TestFindings(t *testing.T) { s3test.Findings(t, newHarness) }
