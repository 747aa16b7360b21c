// Package gcs stores a queue in a Google Cloud Storage bucket, through
// cloud.google.com/go/storage.
//
// # URLs
//
// gs://bucket/prefix opens the queue under prefix in bucket; gs://bucket
// alone uses the whole bucket. No query parameters are accepted. The
// client uses Application Default Credentials, or, when
// STORAGE_EMULATOR_HOST is set, the emulator at that address without
// authentication (the SDK's own convention). The bucket must exist. See
// URLOpener.
//
// # Keys
//
// A queue key becomes the object name prefix+key. Queue keys consist of
// [a-z0-9._-] and "/", so nothing is escaped. Keys spread over the 256
// hashed prefixes that layout.Key produces, and no object is rewritten per
// message, which keeps every object well under GCS's one write per second
// per object name.
//
// # Versions and writes
//
// An object's generation, in decimal, is its driver.Version. A create-only
// write sends ifGenerationMatch=0 and a compare-and-swap
// ifGenerationMatch=<generation>. GCS refuses a compare-and-swap of a
// missing object with the same 412 as a stale one; Put then reads the
// object's attributes and reports a missing one as storage.ErrObjectNotExist
// (driver.CodeNotFound). Deletes are unconditional. With Options.Batch, a
// Store deletes up to 100 objects per request through the JSON API's
// batch endpoint (driver.MultiDeleter), which the SDK does not offer.
//
// Objects of at most 256 KiB are read into memory whole, so that a body
// that breaks off stores nothing, and sent in one request without the
// SDK's buffer (ChunkSize 0), so the SDK does not retry them; a conditional write whose
// response is lost is reported as unavailable rather than blindly retried
// into a spurious precondition failure. Larger objects, and objects of
// unknown size beyond their first 256 KiB, are streamed with a resumable
// upload in chunks of 8 MiB, which the SDK retries chunk by chunk: the
// memory an upload needs is bounded by the chunk size, whatever the size
// of the object.
//
// # Errors
//
// storage.ErrBucketNotExist is driver.CodeInvalid, so that a misspelt
// bucket does not look like an empty queue (Store.Ping reports it).
// storage.ErrObjectNotExist and HTTP 404 are
// driver.CodeNotFound; HTTP 412 (a generation precondition failed) is
// driver.CodePrecondition; 400 is driver.CodeInvalid; 408, 429, 5xx and
// network failures are driver.CodeUnavailable. Everything else, notably 401
// and 403, is driver.CodeUnknown and reported as it is.
//
// # As
//
// The Store's errors unwrap to the SDK's: errors.As with a
// **googleapi.Error or a **apierror.APIError gives the service's answer.
//
// # Emulator
//
// fake-gcs-server (v1.56) honours ifGenerationMatch on writes, both 0 and a
// generation, but ignores generation preconditions on deletes: a delete
// with a stale ifGenerationMatch deletes anyway. The queue never relies on
// conditional deletes, so this does not matter here. It serves the batch
// endpoint, so Options.Batch is tested against it. Uploads only work when
// the server is started with -external-url (and -public-host) set to the
// address that clients use, because resumable uploads follow the Location
// the server returns.
package gcs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

const (
	// smallObject is the size up to which a write is one request, read
	// into memory before it starts.
	smallObject = 256 << 10
	// chunkSize is the resumable upload chunk of larger objects.
	chunkSize = 8 << 20
)

var (
	// errBadVersion is a compare-and-swap against a version that no
	// object of this backend can have.
	errBadVersion = errors.New("gcs: version is not a generation")
)

// Options are the options of Open.
type Options struct {
	// Prefix is put in front of every key, so that several queues can
	// share a bucket. A missing trailing "/" is added.
	Prefix string
	// Batch, if set, is an HTTP client authorised for Cloud Storage's
	// JSON API, with which the Store deletes up to 100 objects per
	// request through the API's batch endpoint: the clean-up that follows
	// deliveries then costs a request per 100 keys rather than one per
	// key (driver.MultiDeleter). The endpoint is the emulator's when
	// STORAGE_EMULATOR_HOST is set, as for the SDK. URLOpener sets it up;
	// without it, every delete is a request of its own.
	Batch *http.Client
	// Queue are the options of the Store.
	Queue queue.Options
}

// Open returns a Store over bucket, using client, which stays the
// caller's: closing the Store does not close it. opts may be nil. Open
// does no I/O; use Store.Ping to check the bucket and the credentials.
func Open(ctx context.Context, client *storage.Client, bucket string, opts *Options) (*queue.Store, error) {
	if opts == nil {
		opts = new(Options)
	}
	b, err := openBackend(ctx, client, bucket, opts.Prefix, opts.Batch)
	if err != nil {
		return nil, err
	}
	qo := opts.Queue
	if qo.Blocks == 0 {
		// One object takes about one write a second: spread the
		// commits over 16 block records.
		qo.Blocks = 16
	}
	return queue.New(b, &qo)
}

// openBackend returns the Backend over bucket under prefix, which deletes
// in batches through batch if it is not nil.
func openBackend(_ context.Context, client *storage.Client, bucket, prefix string, batch *http.Client) (driver.Backend, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: gcs: nil client", queue.ErrInvalid)
	}
	if bucket == "" {
		return nil, fmt.Errorf("%w: gcs: empty bucket name", queue.ErrInvalid)
	}
	b := &backend{bkt: client.Bucket(bucket), name: bucket}
	if batch == nil {
		return driver.Prefixed(b, prefix), nil
	}
	endpoint := batchURL()
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: gcs: batch endpoint %q from STORAGE_EMULATOR_HOST", queue.ErrInvalid, endpoint)
	}
	return driver.Prefixed(&batchBackend{backend: b, client: batch, url: endpoint, host: u.Host}, prefix), nil
}

type backend struct {
	bkt  *storage.BucketHandle
	name string
}

var (
	_ driver.Backend = (*backend)(nil)
	_ driver.Stater  = (*backend)(nil)
	_ driver.Pinger  = (*backend)(nil)
)

func version(gen int64) driver.Version { return driver.Version(strconv.FormatInt(gen, 10)) }

// Get implements driver.Backend.Get. ctx is used for the lifetime of the
// reader, which reads the generation it opened even if the object is
// replaced meanwhile.
func (b *backend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	r, err := b.bkt.Object(key).NewReader(ctx)
	if err != nil {
		return nil, driver.Attrs{}, err
	}
	return r, driver.Attrs{Version: version(r.Attrs.Generation), Size: r.Attrs.Size}, nil
}

// Stat implements driver.Stater.
func (b *backend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	a, err := b.bkt.Object(key).Attrs(ctx)
	if err != nil {
		return driver.Attrs{}, err
	}
	return driver.Attrs{Version: version(a.Generation), Size: a.Size}, nil
}

// Put implements driver.Backend.Put.
func (b *backend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	obj := b.bkt.Object(key)
	switch {
	case opts.IfNoneMatch:
		obj = obj.If(storage.Conditions{DoesNotExist: true})
	case opts.IfMatch != "":
		gen, err := strconv.ParseInt(string(opts.IfMatch), 10, 64)
		if err != nil || gen <= 0 {
			// No object has this version, so the write must fail.
			return "", fmt.Errorf("%w: %q", errBadVersion, opts.IfMatch)
		}
		obj = obj.If(storage.Conditions{GenerationMatch: gen})
	}
	// A small object goes in one request, and so does one of unknown size
	// that turns out small, from memory: the whole body is read before the
	// upload starts, so that a body that breaks off stores nothing.
	// Streamed, the upload could see the end of its pipe (closed by
	// w.Close after the break) before the cancelled context, and store
	// the bytes that had arrived.
	single := false
	if opts.Size <= smallObject { // or unknown, -1
		var head bytes.Buffer
		head.Grow(int(max(opts.Size, 0)))
		_, err := io.CopyN(&head, r, smallObject+1)
		switch {
		case err == io.EOF:
			single = true
		case err != nil:
			return "", err
		}
		if single {
			r = &head
		} else {
			r = io.MultiReader(&head, r)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // aborts the upload if we return early
	w := obj.NewWriter(ctx)
	w.ContentType = "application/octet-stream"
	if single {
		w.ChunkSize = 0
	} else {
		w.ChunkSize = chunkSize
	}
	if _, err := io.Copy(w, r); err != nil {
		cancel()
		w.Close()
		return "", err
	}
	if err := w.Close(); err != nil {
		if opts.IfMatch != "" && errorCode(err) == driver.CodePrecondition {
			// GCS answers a generation match on a missing object with
			// 412 too; tell the two apart, as the queue reports them
			// differently.
			if _, aerr := b.bkt.Object(key).Attrs(ctx); errors.Is(aerr, storage.ErrObjectNotExist) {
				return "", fmt.Errorf("%w (%w)", aerr, err)
			}
		}
		return "", err
	}
	return version(w.Attrs().Generation), nil
}

// Delete implements driver.Backend.Delete. It is unconditional.
func (b *backend) Delete(ctx context.Context, key string) error {
	err := b.bkt.Object(key).Delete(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return nil
	}
	return err
}

// List implements driver.Backend.List with one objects.list request.
// StartOffset is inclusive, so the page asks for one key more than limit
// and skips startAfter itself; as a page holds at most 1000 keys, a List
// after a key with limit 1000 returns 999 keys and more.
func (b *backend) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	q := &storage.Query{Prefix: prefix}
	page := limit
	if startAfter >= prefix {
		q.StartOffset = startAfter
		page = min(limit+1, 1000)
	}
	if err := q.SetAttrSelection([]string{"Name"}); err != nil {
		return nil, false, err
	}
	var objs []*storage.ObjectAttrs
	tok, err := iterator.NewPager(b.bkt.Objects(ctx, q), page, "").NextPage(&objs)
	if err != nil {
		return nil, false, err
	}
	keys := make([]string, 0, len(objs))
	for _, o := range objs {
		if o.Name <= startAfter || !strings.HasPrefix(o.Name, prefix) {
			continue
		}
		if len(keys) == limit {
			return keys, true, nil
		}
		keys = append(keys, o.Name)
	}
	return keys, tok != "", nil
}

// Ping implements driver.Pinger: it reads the bucket's attributes.
func (b *backend) Ping(ctx context.Context) error {
	_, err := b.bkt.Attrs(ctx)
	return err
}

// ErrorCode implements driver.Backend.ErrorCode.
func (b *backend) ErrorCode(err error) driver.Code {
	return errorCode(err)
}

func errorCode(err error) driver.Code {
	switch {
	case errors.Is(err, storage.ErrBucketNotExist):
		// A misspelt bucket must not look like an empty queue.
		return driver.CodeInvalid
	case errors.Is(err, storage.ErrObjectNotExist):
		return driver.CodeNotFound
	case errors.Is(err, errBadVersion):
		return driver.CodePrecondition
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		return driver.HTTPCode(ge.Code)
	}
	// The gRPC transport reports status codes.
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		switch s.Code() {
		case codes.NotFound:
			return driver.CodeNotFound
		case codes.FailedPrecondition:
			return driver.CodePrecondition
		case codes.InvalidArgument:
			return driver.CodeInvalid
		case codes.Unimplemented:
			return driver.CodeUnsupported
		case codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Aborted, codes.Internal:
			return driver.CodeUnavailable
		}
		return driver.CodeUnknown
	}
	var ne net.Error
	var ue *url.Error
	switch {
	case errors.As(err, &ne), errors.As(err, &ue),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, io.ErrUnexpectedEOF):
		return driver.CodeUnavailable
	}
	return driver.CodeUnknown
}

// Close implements driver.Backend.Close. It does not close the client.
func (b *backend) Close() error { return nil }
