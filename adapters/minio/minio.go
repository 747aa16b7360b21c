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
// codes with the table that adapters/s3 shares; errors without an answer
// are transient when they are network errors, but for a host name that
// does not resolve:
//
//	NoSuchKey, 404                               CodeNotFound
//	NoSuchBucket                                 CodeInvalid (a misspelt bucket must not look like an empty queue)
//	PreconditionFailed, 412                      CodePrecondition
//	ConditionalRequestConflict, OperationAborted CodePrecondition
//	NotImplemented, 501                          CodeUnsupported
//	408, 429, 5xx, SlowDown, RequestTimeout      CodeUnavailable
//	network errors, but an unknown host          CodeUnavailable
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
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/mxqueue/mxq/adapters/internal/s3proto"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// DefaultPartSize is the size of the parts of a multipart upload, and the
// size up to which an object goes up in a single PUT.
const DefaultPartSize = s3proto.DefaultPartSize

// Options are the options of Open: Prefix, put before every key so that
// several queues can share a bucket; PartSize, the size of a multipart
// upload's parts and the largest object written with a single PUT
// (default and minimum: DefaultPartSize); and Queue, the options of the
// Store. The s3 adapter has the same.
type Options = s3proto.Options

// Open returns a Store over bucket, which must exist, through client.
// opts may be nil.
func Open(ctx context.Context, client *minio.Client, bucket string, opts *Options) (*queue.Store, error) {
	return s3proto.Open("minio", client, bucket, opts, newBackend)
}

// openBackend returns the Backend of Open, under opts.Prefix.
func openBackend(client *minio.Client, bucket string, opts *Options) (driver.Backend, error) {
	return s3proto.OpenBackend("minio", client, bucket, opts, newBackend)
}

func newBackend(client *minio.Client, bucket string, partSize int64) driver.Backend {
	return &backend{client: client, core: minio.Core{Client: client}, bucket: bucket, partSize: partSize}
}

type backend struct {
	client   *minio.Client
	core     minio.Core
	bucket   string
	partSize int64
}

var (
	_ driver.Backend                       = (*backend)(nil)
	_ driver.Stater                        = (*backend)(nil)
	_ driver.Pinger                        = (*backend)(nil)
	_ driver.MultiDeleter                  = (*backend)(nil)
	_ s3proto.Uploader[minio.CompletePart] = (*backend)(nil)
)

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
// error naming it, which ErrorCode maps to CodeInvalid; a refused one
// (403: wrong credentials or no permission) says so.
func (b *backend) Ping(ctx context.Context) error {
	ok, err := b.client.BucketExists(ctx, b.bucket)
	return s3proto.PingError("minio", b.bucket, err == nil && !ok, minio.ToErrorResponse(err).StatusCode, err)
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

// Put implements driver.Backend.Put with s3proto.Put: up to partSize
// bytes go up in one PUT; more in a multipart upload.
func (b *backend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	return s3proto.Put(ctx, b, b.partSize, key, r, opts)
}

// PutObject implements s3proto.Uploader. A conditional PUT's body is a
// plain reader, which minio-go sends once.
//
// The body is in memory, so its SHA-256 is signed in the request's
// header (payloadHash). minio-go would otherwise sign it as an aws-chunked
// stream on a plain-HTTP endpoint: a chunk buffer of 64 KiB allocated per
// request and a signature per chunk for the server to check, which cost
// more CPU on both sides than the one hash.
func (b *backend) PutObject(ctx context.Context, key string, data []byte, opts *driver.PutOptions) (driver.Version, error) {
	po, conditional := conditions(opts)
	var body io.Reader = bytes.NewReader(data)
	if conditional {
		body = onlyReader{body}
	}
	po.DisableContentSha256 = true
	info, err := b.core.PutObject(ctx, b.bucket, key, body, int64(len(data)), "", payloadHash(data), po)
	if err != nil {
		return "", err
	}
	return version(info.ETag), nil
}

// payloadHash is the hex SHA-256 that a request signed with AWS
// Signature Version 4 names for its body.
func payloadHash(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// CreateUpload implements s3proto.Uploader.
func (b *backend) CreateUpload(ctx context.Context, key string) (string, error) {
	return b.core.NewMultipartUpload(ctx, b.bucket, key, minio.PutObjectOptions{})
}

// UploadPart implements s3proto.Uploader.
func (b *backend) UploadPart(ctx context.Context, key, id string, n int, data []byte) (minio.CompletePart, error) {
	p, err := b.core.PutObjectPart(ctx, b.bucket, key, id, n, bytes.NewReader(data), int64(len(data)), minio.PutObjectPartOptions{Sha256Hex: payloadHash(data), DisableContentSha256: true})
	if err != nil {
		return minio.CompletePart{}, err
	}
	return minio.CompletePart{
		PartNumber:        p.PartNumber,
		ETag:              p.ETag,
		ChecksumCRC32:     p.ChecksumCRC32,
		ChecksumCRC32C:    p.ChecksumCRC32C,
		ChecksumSHA1:      p.ChecksumSHA1,
		ChecksumSHA256:    p.ChecksumSHA256,
		ChecksumCRC64NVME: p.ChecksumCRC64NVME,
	}, nil
}

// CompleteUpload implements s3proto.Uploader.
func (b *backend) CompleteUpload(ctx context.Context, key, id string, parts []minio.CompletePart, opts *driver.PutOptions) (driver.Version, error) {
	po, _ := conditions(opts)
	info, err := b.core.CompleteMultipartUpload(ctx, b.bucket, key, id, parts, po)
	if err != nil {
		return "", err
	}
	return version(info.ETag), nil
}

// AbortUpload implements s3proto.Uploader.
func (b *backend) AbortUpload(ctx context.Context, key, id string) {
	_ = b.core.AbortMultipartUpload(ctx, b.bucket, key, id)
}

// Delete implements driver.Backend.Delete. A missing key is success.
func (b *backend) Delete(ctx context.Context, key string) error {
	err := b.client.RemoveObject(ctx, b.bucket, key, minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code == "NoSuchKey" {
		return nil
	}
	return err
}

// DeleteMulti implements driver.MultiDeleter with one multi-object
// delete request (minio-go sends up to 1,000 keys in each).
func (b *backend) DeleteMulti(ctx context.Context, keys []string) error {
	objs := make(chan minio.ObjectInfo, len(keys))
	for _, k := range keys {
		objs <- minio.ObjectInfo{Key: k}
	}
	close(objs)
	var first error
	for r := range b.client.RemoveObjectsWithResult(ctx, b.bucket, objs, minio.RemoveObjectsOptions{}) {
		if r.Err != nil && first == nil && minio.ToErrorResponse(r.Err).Code != "NoSuchKey" {
			first = r.Err
		}
	}
	return first
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

// ErrorCode implements driver.Backend.ErrorCode with s3proto.ErrorCode,
// on the code and status of a minio.ErrorResponse. See the package doc for
// the mapping.
func (b *backend) ErrorCode(err error) driver.Code {
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return s3proto.ErrorCode(err, er.Code, er.StatusCode, nil)
	}
	return s3proto.ErrorCode(err, "", 0, transient)
}

// transient reports whether err, which came without an answer, is a
// network failure that may pass. A wrong host name is not: retrying will
// not help.
func transient(err error) bool {
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound {
		return false
	}
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// Close implements driver.Backend.Close. The client is the caller's and
// stays open.
func (b *backend) Close() error { return nil }
