// Package s3 stores a queue in an Amazon S3 bucket, or in any server that
// speaks the S3 API well enough (MinIO among them), through aws-sdk-go-v2.
//
// # URLs
//
// s3://bucket/prefix?region=&endpoint=&use_path_style=&disable_https=&profile=
// opens the queue under prefix in bucket. Credentials come from the
// standard AWS chain (environment, shared files, SSO, IMDS, ...) and never
// from the URL. See URLOpener for the parameters.
//
// # Keys
//
// A queue key becomes the object name prefix+key, unchanged: queue keys
// consist of [a-z0-9._-] and "/" only, so nothing needs escaping. The
// prefix is the path of the URL (Options.Prefix), with a "/" added.
//
// Objects of up to Options.PartSize bytes (5 MiB by default, the smallest part S3 accepts) go up in one
// PutObject; larger ones, and streams of unknown length beyond that, as a
// multipart upload that holds at most two parts in memory. A create-only
// write is If-None-Match: * and a compare-and-swap is If-Match: <etag>, on
// PutObject or on CompleteMultipartUpload. The ETag, quotes included, is
// the driver.Version. A failed multipart upload is aborted; should that
// fail too, a bucket lifecycle rule AbortIncompleteMultipartUpload removes
// the parts.
//
// Conditional writes are sent exactly once: the SDK's retries are turned
// off for them. A retried If-None-Match PUT whose first response was lost
// would otherwise meet its own object and fail with 412, reporting a lost
// race that it won. A conditional write that fails on the network is thus
// CodeUnavailable, meaning "outcome unknown", and the Store, which knows
// what the write was for, decides. Other requests use the client's
// retryer.
//
// Deletes are unconditional: the Store never relies on a conditional
// delete (AWS honours If-Match on DeleteObject; MinIO ignores it and
// deletes, see the tests).
//
// # Errors
//
// ErrorCode maps the S3 error code or HTTP status onto queue codes, with
// the table that adapters/minio shares; network errors are transient when
// the SDK's retryer would retry them:
//
//	NoSuchKey, NotFound, 404                     CodeNotFound
//	NoSuchBucket                                 CodeInvalid (see below)
//	PreconditionFailed, 412                      CodePrecondition
//	ConditionalRequestConflict, OperationAborted CodePrecondition (409: a concurrent conditional write won)
//	NotImplemented, 501                          CodeUnsupported
//	408, 429, 5xx, throttling, RequestTimeout    CodeUnavailable
//	network errors the SDK retries               CodeUnavailable
//	other 400 (InvalidArgument, KeyTooLong...)   CodeInvalid
//	403, everything else                         CodeUnknown
//
// A missing bucket is CodeInvalid, not CodeNotFound: the Store reads
// NotFound as "this message is gone", and a misspelt bucket must not look
// like an empty queue; nor is it CodeUnavailable, which would be retried
// in vain. HeadObject and HeadBucket answer 404 without a body, so Stat on
// a missing bucket cannot tell it from a missing key; Ping (HeadBucket)
// reports the bucket by name. Wrong credentials (403: InvalidAccessKeyId,
// SignatureDoesNotMatch, AccessDenied) are CodeUnknown and are reported as
// they are, without retries.
//
// # As
//
// The raw SDK error stays reachable from the Store's errors with
// errors.As, as smithy.APIError (ErrorCode, ErrorMessage) and as
// *awshttp.ResponseError (HTTP status, request ID).
//
// # Findings on MinIO
//
// Observed on MinIO (2026-02) and asserted by the tests of this package:
//
//   - If-Match on a missing key: 404 NoSuchKey (CodeNotFound), as on AWS.
//   - If-None-Match on CompleteMultipartUpload is honoured: 412.
//   - DeleteObject with If-Match of a wrong ETag is ignored: the object is
//     deleted and the answer is 204. Never rely on a conditional delete.
//   - A list page holds at most 1000 keys even when more are asked for.
package s3

import (
	"bytes"
	"context"
	"errors"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/mxqueue/mxq/adapters/internal/s3proto"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// DefaultPartSize is the size of the parts of a multipart upload, and the
// size up to which an object goes up in a single PutObject.
const DefaultPartSize = s3proto.DefaultPartSize

// Options are the options of Open: Prefix, put before every key so that
// several queues can share a bucket; PartSize, the size of a multipart
// upload's parts and the largest object written with a single PutObject
// (default and minimum: DefaultPartSize); and Queue, the options of the
// Store. The minio adapter has the same.
type Options = s3proto.Options

// Open returns a Store over bucket, which must exist, through client. The
// client's retryer and HTTP client bound how long a dead store takes to
// fail; see URLOpener for the settings it uses. opts may be nil.
func Open(ctx context.Context, client *awss3.Client, bucket string, opts *Options) (*queue.Store, error) {
	return s3proto.Open("s3", client, bucket, opts, newBackend)
}

// openBackend returns the Backend of Open, under opts.Prefix.
func openBackend(client *awss3.Client, bucket string, opts *Options) (driver.Backend, error) {
	return s3proto.OpenBackend("s3", client, bucket, opts, newBackend)
}

func newBackend(client *awss3.Client, bucket string, partSize int64) driver.Backend {
	return &backend{
		client:   client,
		bucket:   bucket,
		partSize: partSize,
		checksum: client.Options().RequestChecksumCalculation != aws.RequestChecksumCalculationWhenRequired,
	}
}

type backend struct {
	client   *awss3.Client
	bucket   string
	partSize int64
	// checksum: the client adds CRC32 checksums to uploads, so multipart
	// uploads declare the algorithm and pass the parts' checksums on.
	checksum bool
}

var (
	_ driver.Backend                        = (*backend)(nil)
	_ driver.Stater                         = (*backend)(nil)
	_ driver.Pinger                         = (*backend)(nil)
	_ driver.MultiDeleter                   = (*backend)(nil)
	_ s3proto.Uploader[types.CompletedPart] = (*backend)(nil)
)

// once makes a request a single attempt: conditional writes must not be
// retried by the SDK (see the package doc).
func once(o *awss3.Options) { o.RetryMaxAttempts = 1 }

// quiet stops the SDK from logging that it cannot check the checksum of a
// multipart object: adapters do not log, and the Store checks content.
func quiet(o *awss3.Options) { o.DisableLogOutputChecksumValidationSkipped = true }

// Get implements driver.Backend.Get.
func (b *backend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	out, err := b.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &b.bucket, Key: &key}, quiet)
	if err != nil {
		return nil, driver.Attrs{}, err
	}
	return out.Body, driver.Attrs{Version: driver.Version(aws.ToString(out.ETag)), Size: size(out.ContentLength)}, nil
}

func size(n *int64) int64 {
	if n == nil {
		return -1
	}
	return *n
}

// Stat implements driver.Stater with HeadObject.
func (b *backend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	out, err := b.client.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: &b.bucket, Key: &key})
	if err != nil {
		return driver.Attrs{}, err
	}
	return driver.Attrs{Version: driver.Version(aws.ToString(out.ETag)), Size: size(out.ContentLength)}, nil
}

// Ping implements driver.Pinger with HeadBucket. A missing bucket is an
// error naming it, which ErrorCode maps to CodeInvalid; a refused one
// (403: wrong credentials or no permission) says so.
func (b *backend) Ping(ctx context.Context) error {
	_, err := b.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: &b.bucket})
	return s3proto.PingError("s3", b.bucket, false, httpStatus(err), err)
}

// Put implements driver.Backend.Put with s3proto.Put: up to partSize
// bytes go up in one PutObject; more in a multipart upload.
func (b *backend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	return s3proto.Put(ctx, b, b.partSize, key, r, opts)
}

// conditions returns the If-None-Match and If-Match headers of opts, and
// once when there is one (see the package doc).
func conditions(opts *driver.PutOptions) (ifNoneMatch, ifMatch *string, optFns []func(*awss3.Options)) {
	if opts.IfNoneMatch {
		ifNoneMatch = aws.String("*")
	}
	if opts.IfMatch != "" {
		ifMatch = aws.String(string(opts.IfMatch))
	}
	if ifNoneMatch != nil || ifMatch != nil {
		optFns = append(optFns, once)
	}
	return ifNoneMatch, ifMatch, optFns
}

// PutObject implements s3proto.Uploader.
func (b *backend) PutObject(ctx context.Context, key string, data []byte, opts *driver.PutOptions) (driver.Version, error) {
	ifNoneMatch, ifMatch, optFns := conditions(opts)
	out, err := b.client.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: &b.bucket, Key: &key, IfNoneMatch: ifNoneMatch, IfMatch: ifMatch,
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
	}, optFns...)
	if err != nil {
		return "", err
	}
	return driver.Version(aws.ToString(out.ETag)), nil
}

// CreateUpload implements s3proto.Uploader.
func (b *backend) CreateUpload(ctx context.Context, key string) (string, error) {
	in := &awss3.CreateMultipartUploadInput{Bucket: &b.bucket, Key: &key}
	if b.checksum {
		in.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32
	}
	out, err := b.client.CreateMultipartUpload(ctx, in)
	if err != nil {
		return "", err
	}
	return aws.ToString(out.UploadId), nil
}

// UploadPart implements s3proto.Uploader. With checksums on, the part
// declares its algorithm and passes its checksums on to the completion.
func (b *backend) UploadPart(ctx context.Context, key, id string, n int, data []byte) (types.CompletedPart, error) {
	in := &awss3.UploadPartInput{
		Bucket: &b.bucket, Key: &key, UploadId: &id, PartNumber: aws.Int32(int32(n)),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
	}
	if b.checksum {
		in.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32
	}
	out, err := b.client.UploadPart(ctx, in)
	if err != nil {
		return types.CompletedPart{}, err
	}
	return types.CompletedPart{
		PartNumber:        aws.Int32(int32(n)),
		ETag:              out.ETag,
		ChecksumCRC32:     out.ChecksumCRC32,
		ChecksumCRC32C:    out.ChecksumCRC32C,
		ChecksumCRC64NVME: out.ChecksumCRC64NVME,
		ChecksumSHA1:      out.ChecksumSHA1,
		ChecksumSHA256:    out.ChecksumSHA256,
	}, nil
}

// CompleteUpload implements s3proto.Uploader.
func (b *backend) CompleteUpload(ctx context.Context, key, id string, parts []types.CompletedPart, opts *driver.PutOptions) (driver.Version, error) {
	in := &awss3.CompleteMultipartUploadInput{
		Bucket: &b.bucket, Key: &key, UploadId: &id,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	}
	var optFns []func(*awss3.Options)
	in.IfNoneMatch, in.IfMatch, optFns = conditions(opts)
	out, err := b.client.CompleteMultipartUpload(ctx, in, optFns...)
	if err != nil {
		return "", err
	}
	return driver.Version(aws.ToString(out.ETag)), nil
}

// AbortUpload implements s3proto.Uploader.
func (b *backend) AbortUpload(ctx context.Context, key, id string) {
	_, _ = b.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: &b.bucket, Key: &key, UploadId: &id})
}

// Delete implements driver.Backend.Delete. S3 answers 204 for a missing
// key; a 404 from a server that does not is success too.
func (b *backend) Delete(ctx context.Context, key string) error {
	_, err := b.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &b.bucket, Key: &key})
	if err != nil && apiCode(err) == "NoSuchKey" {
		return nil
	}
	return err
}

// DeleteMulti implements driver.MultiDeleter with one DeleteObjects
// request, in quiet mode: the answer lists only the keys that failed.
func (b *backend) DeleteMulti(ctx context.Context, keys []string) error {
	ids := make([]types.ObjectIdentifier, len(keys))
	for i := range keys {
		ids[i] = types.ObjectIdentifier{Key: &keys[i]}
	}
	out, err := b.client.DeleteObjects(ctx, &awss3.DeleteObjectsInput{
		Bucket: &b.bucket,
		Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
	})
	if err != nil {
		return err
	}
	for _, e := range out.Errors {
		if aws.ToString(e.Code) == "NoSuchKey" {
			continue
		}
		return &smithy.GenericAPIError{Code: aws.ToString(e.Code), Message: aws.ToString(e.Key) + ": " + aws.ToString(e.Message)}
	}
	return nil
}

// List implements driver.Backend.List with one ListObjectsV2 request.
func (b *backend) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	in := &awss3.ListObjectsV2Input{
		Bucket:  &b.bucket,
		Prefix:  &prefix,
		MaxKeys: aws.Int32(int32(limit)),
	}
	if startAfter != "" {
		in.StartAfter = &startAfter
	}
	out, err := b.client.ListObjectsV2(ctx, in)
	if err != nil {
		return nil, false, err
	}
	keys := make([]string, 0, len(out.Contents))
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	return keys, aws.ToBool(out.IsTruncated), nil
}

// ErrorCode implements driver.Backend.ErrorCode with s3proto.ErrorCode;
// errors without an answer are transient when the SDK's retryer would
// retry them. See the package doc for the mapping.
func (b *backend) ErrorCode(err error) driver.Code {
	return s3proto.ErrorCode(err, apiCode(err), httpStatus(err), transient)
}

// transient reports whether the SDK's standard retryer deems err
// retryable or a throttle.
func transient(err error) bool {
	return retry.IsErrorRetryables(retry.DefaultRetryables).IsErrorRetryable(err) == aws.TrueTernary ||
		retry.IsErrorThrottles(retry.DefaultThrottles).IsErrorThrottle(err) == aws.TrueTernary
}

// apiCode returns the S3 error code of err, or "".
func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// httpStatus returns the HTTP status of the response that err came with,
// or 0.
func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// Close implements driver.Backend.Close. The client is the caller's and
// stays open.
func (b *backend) Close() error { return nil }
