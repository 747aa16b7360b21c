// Package s3proto holds what the adapters that speak the S3 protocol
// share, whatever their SDK: adapters/s3 (aws-sdk-go-v2) and adapters/minio
// (minio-go). It has their options and Open, the checks of a bucket, the
// table that maps S3 error codes and HTTP statuses onto driver codes, the
// way a Put goes up in one request or in a multipart upload, and the
// client settings of their URL openers. Each adapter keeps only what
// differs between the SDKs: the calls themselves, how an SDK's error shows
// its code and status, and which network errors it deems transient.
package s3proto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// DefaultPartSize is the size of the parts of a multipart upload, and the
// size up to which an object goes up in a single PUT.
const DefaultPartSize = 5 << 20

// minPartSize is S3's minimum size of every part but the last.
const minPartSize = 5 << 20

// abortTimeout bounds the abort of a failed multipart upload, which runs
// even when the caller's ctx is done.
const abortTimeout = 10 * time.Second

// The settings of the clients that the URL openers build, so that a dead
// store fails within seconds rather than hangs. A ctx deadline still
// bounds every call.
const (
	// DialTimeout bounds a connect.
	DialTimeout = 5 * time.Second
	// MaxAttempts counts the first try: the SDK retries a transient
	// failure twice before the Store's own retries
	// (queue.Options.Retries) see it. Conditional writes are sent once.
	MaxAttempts = 3
	// MaxBackoff bounds the wait between the SDK's attempts.
	MaxBackoff = 2 * time.Second
)

// Tune sets the TLS handshake and response header timeouts of t (5 s and
// 30 s), and the idle connections it keeps: Store operations run up to
// queue.Options.Concurrency requests each, and many operations run at
// once.
func Tune(t *http.Transport) {
	t.TLSHandshakeTimeout = 5 * time.Second
	t.ResponseHeaderTimeout = 30 * time.Second
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 256
}

// Dialer returns the dialer of the URL openers' clients.
func Dialer() *net.Dialer { return &net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second} }

// Options are the options of Open.
type Options struct {
	// Prefix is put before every key, so that several queues can share a
	// bucket. A missing trailing "/" is added. Default: none.
	Prefix string
	// PartSize is the size of a multipart upload's parts and the largest
	// object written with a single PUT. A Put holds at most two parts in
	// memory. Default and minimum: DefaultPartSize and 5 MiB.
	PartSize int64
	// Queue are the options of the Store.
	Queue queue.Options
}

// Invalid returns the error of an open that cannot work: an
// invalid URL, client or option. It wraps queue.ErrInvalid; id names what
// was opened, without secrets, or is empty.
func Invalid(id string, err error) error {
	return &queue.Error{Op: "open", ID: id, Kind: queue.ErrInvalid, Err: err}
}

// NewBackend makes an adapter's Backend over bucket through client, with
// parts of partSize bytes.
type NewBackend[C any] func(client *C, bucket string, partSize int64) driver.Backend

// Open returns a Store over bucket, which must exist, through client, with
// the Backend that newBackend makes. sdk names the adapter in errors.
// opts may be nil.
func Open[C any](sdk string, client *C, bucket string, opts *Options, newBackend NewBackend[C]) (*queue.Store, error) {
	if opts == nil {
		opts = new(Options)
	}
	b, err := OpenBackend(sdk, client, bucket, opts, newBackend)
	if err != nil {
		return nil, err
	}
	return queue.New(b, &opts.Queue)
}

// OpenBackend returns the Backend of Open, under opts.Prefix, after
// checking the client, the bucket and the part size.
func OpenBackend[C any](sdk string, client *C, bucket string, opts *Options, newBackend NewBackend[C]) (driver.Backend, error) {
	if client == nil {
		return nil, Invalid("", fmt.Errorf("%s: nil client", sdk))
	}
	if bucket == "" {
		return nil, Invalid("", fmt.Errorf("%s: no bucket", sdk))
	}
	ps := opts.PartSize
	if ps == 0 {
		ps = DefaultPartSize
	}
	if ps < minPartSize {
		return nil, Invalid("", fmt.Errorf("%s: part size %d is below the minimum of %d", sdk, ps, minPartSize))
	}
	return driver.Prefixed(newBackend(client, bucket, ps), opts.Prefix), nil
}

// ErrNoSuchBucket marks a Ping that found no bucket.
var ErrNoSuchBucket = errors.New("bucket does not exist")

// PingError returns the error of a Ping whose bucket check ended with err
// and HTTP status: a missing bucket (missing, or 404) is an error naming
// it that ErrorCode maps to CodeInvalid, and a refused one (403: wrong
// credentials or no permission) says so, since a HEAD answer carries no
// error code. Any other err is returned as it is.
func PingError(sdk, bucket string, missing bool, status int, err error) error {
	switch {
	case missing && err == nil:
		return fmt.Errorf("%s: bucket %q: %w", sdk, bucket, ErrNoSuchBucket)
	case missing || status == http.StatusNotFound:
		return fmt.Errorf("%s: bucket %q: %w: %w", sdk, bucket, ErrNoSuchBucket, err)
	case status == http.StatusForbidden:
		return fmt.Errorf("%s: access to bucket %q denied (check the credentials): %w", sdk, bucket, err)
	}
	return err
}

// ErrorCode maps an error of an S3 request onto a driver code: by its S3
// error code (empty when the error has none), then by transient, the
// SDK's judgement of errors without an answer (network, throttling), then
// by the HTTP status (0 without an answer) as driver.HTTPCode does:
//
//	NoSuchKey, NotFound, 404                     CodeNotFound
//	NoSuchBucket, ErrNoSuchBucket                CodeInvalid
//	PreconditionFailed, 412                      CodePrecondition
//	ConditionalRequestConflict, OperationAborted CodePrecondition
//	NotImplemented, 501                          CodeUnsupported
//	NoSuchUpload                                 CodeUnknown
//	SlowDown, RequestTimeout, Throttling...      CodeUnavailable
//	transient, 408, 429, 5xx                     CodeUnavailable
//	other 400                                    CodeInvalid
//	403, everything else                         CodeUnknown
func ErrorCode(err error, code string, status int, transient func(error) bool) driver.Code {
	if errors.Is(err, ErrNoSuchBucket) {
		return driver.CodeInvalid
	}
	switch code {
	case "NoSuchKey", "NotFound":
		return driver.CodeNotFound
	case "NoSuchBucket":
		return driver.CodeInvalid
	case "PreconditionFailed", "ConditionalRequestConflict", "OperationAborted":
		return driver.CodePrecondition
	case "NotImplemented":
		return driver.CodeUnsupported
	case "NoSuchUpload":
		// A multipart upload vanished: aborted, or completed by an
		// attempt whose answer was lost. Not a missing key.
		return driver.CodeUnknown
	case "SlowDown", "SlowDownRead", "SlowDownWrite", "RequestTimeout", "Throttling", "ThrottlingException",
		"ServiceUnavailable", "InternalError", "XMinioServerNotInitialized":
		return driver.CodeUnavailable
	}
	if transient != nil && transient(err) {
		return driver.CodeUnavailable
	}
	return driver.HTTPCode(status)
}

// Uploader is what an SDK does for Put, with P the SDK's record of an
// uploaded part.
type Uploader[P any] interface {
	// PutObject stores data under key in one request, under the
	// conditions of opts, sent once when there is one.
	PutObject(ctx context.Context, key string, data []byte, opts *driver.PutOptions) (driver.Version, error)
	// CreateUpload starts a multipart upload and returns its ID.
	CreateUpload(ctx context.Context, key string) (string, error)
	// UploadPart uploads part n, counted from 1.
	UploadPart(ctx context.Context, key, id string, n int, data []byte) (P, error)
	// CompleteUpload completes the upload under the conditions of opts.
	CompleteUpload(ctx context.Context, key, id string, parts []P, opts *driver.PutOptions) (driver.Version, error)
	// AbortUpload aborts the upload; its error is of no use.
	AbortUpload(ctx context.Context, key, id string)
}

// Put implements driver.Backend.Put on u: up to partSize bytes go up in
// one PutObject; more in a multipart upload of parts of partSize bytes,
// which holds at most two of them in memory (driver.UploadParts) and is
// completed under the conditions of opts. A failed upload is aborted,
// even when ctx is done, but not for long.
func Put[P any](ctx context.Context, u Uploader[P], partSize int64, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	first, last, err := driver.ReadChunk(r, nil, partSize, opts.Size)
	if err != nil {
		return "", err
	}
	if last {
		return u.PutObject(ctx, key, first, opts)
	}
	id, err := u.CreateUpload(ctx, key)
	if err != nil {
		return "", err
	}
	var parts []P // UploadParts runs one part at a time
	err = driver.UploadParts(ctx, r, first, partSize, func(ctx context.Context, n int, data []byte) error {
		p, err := u.UploadPart(ctx, key, id, n, data)
		if err == nil {
			parts = append(parts, p)
		}
		return err
	})
	if err == nil {
		var v driver.Version
		if v, err = u.CompleteUpload(ctx, key, id, parts, opts); err == nil {
			return v, nil
		}
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	u.AbortUpload(actx, key, id)
	return "", err
}
