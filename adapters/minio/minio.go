// Package minio stores a queue in a bucket of any S3-compatible server
// through minio-go, the light client for them: MinIO, Ceph RGW, Garage,
// SeaweedFS, Cloudflare R2 and others. Pick it when the store is not AWS,
// or when the AWS SDK is too heavy a dependency; for Amazon S3 itself,
// with its full credential chain (profiles, SSO, instance roles), use
// adapters/s3. Both speak the same protocol and store the same objects,
// so a queue written by one can be read by the other.
//
// # URLs
//
// minio://host:port/bucket/prefix?secure=&region= opens the queue under
// prefix in bucket on the server at host:port. Credentials come from the
// environment, never from the URL: MINIO_ROOT_USER and
// MINIO_ROOT_PASSWORD, MINIO_ACCESS_KEY and MINIO_SECRET_KEY, or
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN).
// See URLOpener.
//
// # Keys
//
// A queue key becomes the object name prefix+key, unchanged: queue keys
// consist of [a-z0-9._-] and "/" only, so nothing needs escaping.
//
// Objects of up to Options.PartSize bytes (5 MiB by default, the smallest part S3 accepts) go up in one
// PUT; larger ones, and streams of unknown length beyond that, as a
// multipart upload that holds at most two parts in memory. (minio-go's own
// PutObject would buffer parts of 16 MiB or more, and drops conditions
// from multipart uploads.) A create-only write is If-None-Match: * and a
// compare-and-swap If-Match: <etag>, on the PUT or on the
// CompleteMultipartUpload. The ETag, without quotes, is the driver.Version.
//
// A conditional PUT is sent exactly once: its body is handed to minio-go
// as a plain reader, which minio-go does not retry. A retried
// If-None-Match PUT whose first answer was lost would otherwise meet its
// own object and report a lost race that it won; instead the network
// error is CodeUnavailable, meaning "outcome unknown", and the Store
// decides. minio-go does retry a CompleteMultipartUpload (its body is
// always seekable). Should the first answer be lost, the retry fails: with
// NoSuchUpload, reported as it is (CodeUnknown), or, since MinIO checks
// conditions before the upload ID, with a failed precondition. So an
// object larger than a part whose Complete answer was lost may be reported
// as a lost create-only write although it landed: for the queue that is a
// temporary failure of the message (the MTA's client retries), never a
// loss, and the rollback removes the stored copy.
//
// Deletes are unconditional: MinIO ignores If-Match on DeleteObject.
//
// # Errors
//
// ErrorCode maps minio.ErrorResponse codes and HTTP statuses onto queue
// codes as adapters/s3 does:
//
//	NoSuchKey, 404                               CodeNotFound
//	NoSuchBucket                                 CodeInvalid (a misspelt bucket must not look like an empty queue)
//	PreconditionFailed, 412                      CodePrecondition
//	ConditionalRequestConflict, OperationAborted CodePrecondition
//	NotImplemented, 501                          CodeUnsupported
//	5xx, SlowDown, RequestTimeout, network       CodeUnavailable
//	other 400                                    CodeInvalid
//	403, everything else                         CodeUnknown
//
// Stat (HEAD) on a missing bucket cannot be told from a missing key; Ping
// reports a missing bucket by name.
//
// # As
//
// The raw error stays reachable from the Store's errors with errors.As as
// minio.ErrorResponse (Code, StatusCode, RequestID).
//
// # Findings on MinIO
//
// As for adapters/s3, and asserted by this package's tests: If-Match on a
// missing key is 404 NoSuchKey; If-None-Match on CompleteMultipartUpload
// is honoured; RemoveObject with If-Match of a wrong ETag deletes anyway;
// a list page holds at most 1000 keys.
package minio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

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

// Open returns a Store over bucket, which must exist, through client.
// opts may be nil.
func Open(ctx context.Context, client *minio.Client, bucket string, opts *Options) (*queue.Store, error) {
	if opts == nil {
		opts = new(Options)
	}
	b, err := openBackend(client, bucket, opts)
	if err != nil {
		return nil, err
	}
	return queue.New(b, &opts.Queue)
}

// openBackend returns the Backend of Open, under opts.Prefix.
func openBackend(client *minio.Client, bucket string, opts *Options) (driver.Backend, error) {
	if client == nil {
		return nil, &queue.Error{Op: "open", Kind: queue.ErrInvalid, Err: errors.New("minio: nil client")}
	}
	if bucket == "" {
		return nil, &queue.Error{Op: "open", Kind: queue.ErrInvalid, Err: errors.New("minio: no bucket")}
	}
	ps := opts.PartSize
	if ps == 0 {
		ps = DefaultPartSize
	}
	if ps < minPartSize {
		return nil, &queue.Error{Op: "open", Kind: queue.ErrInvalid, Err: fmt.Errorf("minio: part size %d is below the minimum of %d", ps, minPartSize)}
	}
	b := &backend{client: client, core: minio.Core{Client: client}, bucket: bucket, partSize: ps}
	return driver.Prefixed(b, opts.Prefix), nil
}

type backend struct {
	client   *minio.Client
	core     minio.Core
	bucket   string
	partSize int64
}

var (
	_ driver.Backend = (*backend)(nil)
	_ driver.Stater  = (*backend)(nil)
	_ driver.Pinger  = (*backend)(nil)
)

// errNoSuchBucket marks a Ping that found no bucket.
var errNoSuchBucket = errors.New("bucket does not exist")

// onlyReader hides the Seek of a body, so that minio-go sends it once.
type onlyReader struct{ io.Reader }

func version(etag string) driver.Version { return driver.Version(strings.Trim(etag, `"`)) }

// Get implements driver.Backend.Get.
func (b *backend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	rc, info, _, err := b.core.GetObject(ctx, b.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, driver.Attrs{}, err
	}
	return rc, driver.Attrs{Version: version(info.ETag), Size: info.Size}, nil
}

// Stat implements driver.Stater with a HEAD request.
func (b *backend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	info, err := b.client.StatObject(ctx, b.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return driver.Attrs{}, err
	}
	return driver.Attrs{Version: version(info.ETag), Size: info.Size}, nil
}

// Ping implements driver.Pinger with BucketExists. A missing bucket is an
// error naming it, which ErrorCode maps to CodeInvalid.
func (b *backend) Ping(ctx context.Context) error {
	ok, err := b.client.BucketExists(ctx, b.bucket)
	if err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusForbidden {
			return fmt.Errorf("minio: access to bucket %q denied (check the credentials): %w", b.bucket, err)
		}
		return err
	}
	if !ok {
		return fmt.Errorf("minio: bucket %q: %w", b.bucket, errNoSuchBucket)
	}
	return nil
}

func conditions(opts *driver.PutOptions) (po minio.PutObjectOptions, conditional bool) {
	if opts.IfNoneMatch {
		po.SetMatchETagExcept("*")
		conditional = true
	}
	if opts.IfMatch != "" {
		po.SetMatchETag(string(opts.IfMatch))
		conditional = true
	}
	return po, conditional
}

// Put implements driver.Backend.Put. Up to partSize bytes go up in one
// PUT; more in a multipart upload.
func (b *backend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	first, last, err := driver.ReadChunk(r, nil, b.partSize, opts.Size)
	if err != nil {
		return "", err
	}
	if !last {
		return b.putMultipart(ctx, key, r, first, opts)
	}
	po, conditional := conditions(opts)
	var body io.Reader = bytes.NewReader(first)
	if conditional {
		body = onlyReader{body}
	}
	info, err := b.core.PutObject(ctx, b.bucket, key, body, int64(len(first)), "", "", po)
	if err != nil {
		return "", err
	}
	return version(info.ETag), nil
}

// putMultipart uploads first and the rest of r as parts with
// driver.UploadParts, which holds two buffers of partSize bytes, and
// completes the upload under the conditions of opts. A failed upload is
// aborted.
func (b *backend) putMultipart(ctx context.Context, key string, r io.Reader, first []byte, opts *driver.PutOptions) (driver.Version, error) {
	id, err := b.core.NewMultipartUpload(ctx, b.bucket, key, minio.PutObjectOptions{})
	if err != nil {
		return "", err
	}
	var parts []minio.CompletePart // UploadParts runs one part at a time
	err = driver.UploadParts(ctx, r, first, b.partSize, func(ctx context.Context, n int, data []byte) error {
		p, err := b.core.PutObjectPart(ctx, b.bucket, key, id, n, bytes.NewReader(data), int64(len(data)), minio.PutObjectPartOptions{})
		if err != nil {
			return err
		}
		parts = append(parts, minio.CompletePart{
			PartNumber:        p.PartNumber,
			ETag:              p.ETag,
			ChecksumCRC32:     p.ChecksumCRC32,
			ChecksumCRC32C:    p.ChecksumCRC32C,
			ChecksumSHA1:      p.ChecksumSHA1,
			ChecksumSHA256:    p.ChecksumSHA256,
			ChecksumCRC64NVME: p.ChecksumCRC64NVME,
		})
		return nil
	})
	if err == nil {
		po, _ := conditions(opts)
		var info minio.UploadInfo
		if info, err = b.core.CompleteMultipartUpload(ctx, b.bucket, key, id, parts, po); err == nil {
			return version(info.ETag), nil
		}
	}
	// Abort even when ctx is done, but not for long.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	_ = b.core.AbortMultipartUpload(actx, b.bucket, key, id)
	return "", err
}

// Delete implements driver.Backend.Delete. A missing key is success.
func (b *backend) Delete(ctx context.Context, key string) error {
	err := b.client.RemoveObject(ctx, b.bucket, key, minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code == "NoSuchKey" {
		return nil
	}
	return err
}

// List implements driver.Backend.List with one ListObjectsV2 request. As
// minio-go does not tell whether the page was truncated, a full page
// reports more, and the next call may find nothing.
func (b *backend) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	noOwner := false
	var keys []string
	for o := range b.client.ListObjectsIter(ctx, b.bucket, minio.ListObjectsOptions{
		Prefix:     prefix,
		StartAfter: startAfter,
		MaxKeys:    limit,
		Recursive:  true,
		FetchOwner: &noOwner,
	}) {
		if o.Err != nil {
			return nil, false, o.Err
		}
		keys = append(keys, o.Key)
		if len(keys) == limit {
			// Stop before the iterator asks for another page.
			return keys, true, nil
		}
	}
	// The iterator ends quietly when ctx is done.
	if err := ctx.Err(); err != nil {
		return nil, false, err
	}
	return keys, false, nil
}

// ErrorCode implements driver.Backend.ErrorCode. See the package doc for
// the mapping.
func (b *backend) ErrorCode(err error) driver.Code {
	if errors.Is(err, errNoSuchBucket) {
		return driver.CodeInvalid
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		switch er.Code {
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
		switch s := er.StatusCode; {
		case s == http.StatusNotFound:
			return driver.CodeNotFound
		case s == http.StatusPreconditionFailed:
			return driver.CodePrecondition
		case s == http.StatusNotImplemented:
			return driver.CodeUnsupported
		case s == http.StatusTooManyRequests || s >= 500:
			return driver.CodeUnavailable
		case s == http.StatusBadRequest:
			return driver.CodeInvalid
		}
		return driver.CodeUnknown
	}
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound {
		return driver.CodeUnknown // a wrong host name: retrying will not help
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return driver.CodeUnavailable
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return driver.CodeUnavailable
	}
	return driver.CodeUnknown
}

// Close implements driver.Backend.Close. The client is the caller's and
// stays open.
func (b *backend) Close() error { return nil }
