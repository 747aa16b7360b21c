package minio

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/mxqueue/mxq/adapters/internal/s3proto"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Scheme is the URL scheme that minio registers with queue.DefaultURLMux.
const Scheme = "minio"

func init() { queue.DefaultURLMux().Register(Scheme, new(URLOpener)) }

// URLOpener opens minio URLs:
//
//	minio://host:port/bucket/prefix?secure=&region=
//
// The host is the server, the first path segment the bucket, the rest the
// key prefix (Options.Prefix). The query parameters, both optional:
//
//   - secure: false to talk plain HTTP. Default: true (HTTPS).
//   - region: the bucket's region. Default: asked from the server once
//     per bucket.
//
// Any other parameter is an error wrapping queue.ErrInvalid. Credentials
// come from the environment, in this order: MINIO_ROOT_USER and
// MINIO_ROOT_PASSWORD, MINIO_ACCESS_KEY and MINIO_SECRET_KEY,
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN).
// They are read when a request needs them, not at import; a URL opened
// with none set is an error wrapping queue.ErrInvalid.
//
// The clients share one HTTP transport, made on the first open, with a 5 s
// connect and TLS handshake timeout and a 30 s wait for response headers,
// and try a request at most 3 times (conditional PUTs once).
type URLOpener struct {
	once      sync.Once
	transport http.RoundTripper
}

// OpenStoreURL implements queue.URLOpener.
func (o *URLOpener) OpenStoreURL(ctx context.Context, u *url.URL, qopts *queue.Options) (*queue.Store, error) {
	client, bucket, prefix, err := o.client(u)
	if err != nil {
		return nil, err
	}
	opts := &Options{Prefix: prefix}
	if qopts != nil {
		opts.Queue = *qopts
	}
	return Open(ctx, client, bucket, opts)
}

// client returns a client for u, and the bucket and prefix u names.
func (o *URLOpener) client(u *url.URL) (*minio.Client, string, string, error) {
	p, err := driver.URLParams(u, "secure", "region")
	if err != nil {
		return nil, "", "", err
	}
	id := (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	bad := func(err error) error { return s3proto.Invalid(id, err) }
	if u.User != nil {
		return nil, "", "", bad(errors.New("minio: credentials do not belong in the URL; set MINIO_ROOT_USER and MINIO_ROOT_PASSWORD or the AWS variables"))
	}
	if u.Host == "" {
		return nil, "", "", bad(errors.New("minio: no server: want minio://host:port/bucket/prefix"))
	}
	bucket, prefix, _ := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if bucket == "" {
		return nil, "", "", bad(errors.New("minio: no bucket: want minio://host:port/bucket/prefix"))
	}
	if err := s3utils.CheckValidBucketNameStrict(bucket); err != nil {
		return nil, "", "", bad(fmt.Errorf("minio: %w", err))
	}
	secure, err := driver.ParseBool("secure", p["secure"], true)
	if err != nil {
		return nil, "", "", bad(err)
	}
	creds := credentials.NewChainCredentials([]credentials.Provider{&credentials.EnvMinio{}, &credentials.EnvAWS{}})
	if v, err := creds.GetWithContext(nil); err != nil || v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, "", "", bad(errors.New("minio: no credentials: set MINIO_ROOT_USER and MINIO_ROOT_PASSWORD, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))
	}
	o.once.Do(func() { o.transport = newTransport() })
	client, err := minio.New(u.Host, &minio.Options{
		Creds:      creds,
		Secure:     secure,
		Region:     p["region"],
		Transport:  o.transport,
		MaxRetries: s3proto.MaxAttempts,
	})
	if err != nil {
		return nil, "", "", bad(err)
	}
	return client, bucket, prefix, nil
}

func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = s3proto.Dialer().DialContext
	s3proto.Tune(t)
	// minio-go checks content itself; compressed answers would hide sizes.
	t.DisableCompression = true
	return t
}
