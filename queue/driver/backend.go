package driver

import (
	"context"
	"io"
)

// Version identifies one stored version of an object: an ETag, a GCS
// generation, a counter. It is opaque to everything but the Backend that
// produced it. The empty Version means "no version".
type Version string

// Attrs describe a stored object.
type Attrs struct {
	// Version of the object as read.
	Version Version
	// Size in bytes, or -1 when the backend does not know it up front.
	Size int64
}

// PutOptions are the conditions of a Backend.Put. At most one of IfNoneMatch
// and IfMatch is set; the Store guarantees it.
type PutOptions struct {
	// IfNoneMatch makes the write create-only: if the key exists, Put must
	// fail with an error that ErrorCode maps to CodePrecondition and write
	// nothing.
	IfNoneMatch bool
	// IfMatch makes the write a compare-and-swap: unless the key exists
	// with exactly this version, Put must fail with an error that ErrorCode
	// maps to CodePrecondition (or CodeNotFound when the key is missing)
	// and write nothing. Of concurrent writers with the same IfMatch, at
	// most one may succeed.
	IfMatch Version
	// Size is the length of the data if known, or -1. A backend may use it
	// to pick a single-request upload over a multipart one.
	Size int64
}

// Backend is the driver interface that adapters implement: a flat key
// space of objects with conditional writes. It knows nothing of messages;
// the Store builds the queue on top of it.
//
// The Store validates everything before calling a Backend: keys are
// those produced by layout.Key (optionally under a prefix), opts are
// non-nil.
// All methods must be safe for concurrent use and must honour ctx: once
// ctx is done they return promptly with an error for which
// errors.Is(err, ctx.Err()) holds or that ErrorCode maps to
// CodeUnavailable. Methods return the store's raw error; the Store
// classifies it with ErrorCode and wraps it exactly once. Adapters do not
// log and do not retry beyond what their SDK does by itself.
type Backend interface {
	// Get opens the object at key for reading. If it does not exist, Get
	// returns an error that ErrorCode maps to CodeNotFound. The reader
	// must be closed by the caller and may fail mid-stream.
	Get(ctx context.Context, key string) (io.ReadCloser, Attrs, error)

	// Put writes the object at key from r, streaming: the backend must not
	// buffer all of r in memory for large objects. On success the object
	// is durable and visible to every reader, and Put returns its new
	// version. On failure nothing is visible: readers see the old object or
	// none. See PutOptions for the conditions.
	Put(ctx context.Context, key string, r io.Reader, opts *PutOptions) (Version, error)

	// Delete removes the object at key. Deleting a missing key is not an
	// error. Delete is unconditional: the Store never depends on a
	// conditional delete, because several stores ignore the condition.
	Delete(ctx context.Context, key string) error

	// List returns, in byte order, up to limit keys that start with prefix
	// and sort after startAfter (every key, when startAfter is ""). more
	// reports whether keys may remain; a backend may return fewer than
	// limit keys with more set. limit is between 1 and 1000.
	List(ctx context.Context, prefix, startAfter string, limit int) (keys []string, more bool, err error)

	// ErrorCode classifies an error returned by this backend.
	ErrorCode(err error) Code

	// Close releases the backend's resources. Calls after Close may fail.
	Close() error
}

// Stater is an optional Backend capability: the attributes of an object
// without its data. If a Backend does not implement it, the Store calls Get
// and closes the reader at once.
type Stater interface {
	// Stat returns the attributes of the object at key, or an error that
	// ErrorCode maps to CodeNotFound if it does not exist.
	Stat(ctx context.Context, key string) (Attrs, error)
}

// Pinger is an optional Backend capability: a cheap request that proves
// the store answers and the credentials work. If a Backend does not
// implement it, queue.Store.Ping lists one key under the reservation prefix.
type Pinger interface {
	// Ping returns nil if the store can be used.
	Ping(ctx context.Context) error
}
