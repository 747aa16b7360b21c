// Package datastore stores a queue in Google Cloud Datastore, or Firestore
// in Datastore mode, through cloud.google.com/go/datastore.
//
// # URLs
//
// datastore://project/namespace?database=db opens the queue in namespace
// of project's database db. An empty namespace is the default namespace,
// an empty database the default database, and an empty project the one
// that DATASTORE_PROJECT_ID or the credentials name. The client uses
// Application Default Credentials, or, when DATASTORE_EMULATOR_HOST is
// set, the emulator at that address without authentication (the SDK's own
// convention). See URLOpener.
//
// # Keys
//
// A queue key becomes the name of an entity of kind MxqObject in the
// namespace: the head. Queue keys consist of [a-z0-9._-] and "/", so
// nothing is escaped; they never start with "__", and a key longer than
// 1400 bytes (Datastore allows names of up to 1500) is refused as
// invalid. All properties are unindexed: the queue only looks entities up
// by key and lists keys.
//
// An object's data is cut into chunks of 1000 KiB, so that every entity
// stays under Datastore's 1 MiB. The head holds the first chunk, the
// number of chunks, the size, and a random generation, which is the
// object's driver.Version. Every further chunk n is an entity of kind
// MxqChunk named "<key>#<generation>#<n>".
//
// # Writes
//
// Put streams: it reads the data a chunk at a time and writes the extra
// chunks first, four to a commit (under the 10 MiB and 500 entity limits
// of a commit), so that at most five chunks are in memory whatever the
// size of the object. Then it writes the head, which is the commit point:
// the chunks of a generation are only reachable through a head that names
// it, and a reader never sees a partly written object.
//
// A create-only write inserts the head (one non-transactional commit,
// refused with AlreadyExists if the head exists). A compare-and-swap or
// an unconditional write reads and writes the head in one transaction.
// When a transaction is aborted by contention the SDK runs it again, and
// the rerun sees the winner's head and fails the precondition; so of N
// concurrent writers with the same condition one wins and the others get
// driver.CodePrecondition. Should every attempt be aborted, Put reads the
// head once more: if the condition no longer holds the result is
// driver.CodePrecondition, otherwise nothing was written and
// datastore.ErrConcurrentTransaction is returned as
// driver.CodeUnavailable.
//
// The chunks of a replaced or deleted head, and those of a write whose
// head was refused, are deleted right after, best-effort. Chunks of a
// writer that died between its chunks and its head, or whose clean-up
// failed, stay behind as unreachable garbage; they are never read. A
// batch of deletes (driver.MultiDeleter, for the Store's clean-up after
// deliveries) looks the heads up at once and deletes heads and chunks
// with one commit per 500 entities.
//
// Listing is a keys-only query ordered by __key__ with the prefix and the
// start key as key filters, which is a cursor over the key space.
// Firestore in Datastore mode and the emulator run with --consistency=1.0
// answer queries with strong consistency; legacy Cloud Datastore's global
// queries are eventually consistent, and the queue needs strongly
// consistent listing.
//
// # Errors
//
// datastore.ErrNoSuchEntity and gRPC NotFound are driver.CodeNotFound; a
// refused condition (AlreadyExists, or a head of another generation) is
// driver.CodePrecondition; InvalidArgument and datastore.ErrInvalidKey are
// driver.CodeInvalid; Unavailable, DeadlineExceeded, ResourceExhausted,
// Aborted and datastore.ErrConcurrentTransaction are
// driver.CodeUnavailable; Unimplemented is driver.CodeUnsupported; data that
// does not load is driver.CodeCorrupt. FailedPrecondition means a missing
// index or a bad transaction in Datastore, not a failed write condition,
// so it is driver.CodeUnknown like everything else.
//
// # As
//
// The Store's errors unwrap to the SDK's: status.FromError and errors.Is
// with datastore.ErrNoSuchEntity work on them.
//
// # Emulator
//
// Google's Datastore emulator enforces the entity and commit limits less
// strictly than the service; the tests write to both limits' safe side
// and check round trips of many chunks.
package datastore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/datastore"
	"google.golang.org/api/iterator"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

const (
	// HeadKind is the entity kind of an object's head.
	headKind = "MxqObject"
	// ChunkKind is the entity kind of an object's further chunks.
	chunkKind = "MxqChunk"
	// chunkData is the data of one chunk: 1000 KiB, which leaves room for
	// the key and the properties under the 1 MiB entity limit.
	chunkData = 1000 << 10
	// chunksPerCommit bounds a commit of chunks to about 4 MB.
	chunksPerCommit = 4
	// maxKey is the longest queue key, leaving room for the chunk suffix
	// under Datastore's 1500 bytes.
	maxKey = 1400
	// cleanupTimeout bounds the best-effort deletion of old chunks.
	cleanupTimeout = 30 * time.Second
)

var (
	errPrecondition = errors.New("datastore: precondition failed")
	errCorrupt      = errors.New("datastore: stored object is inconsistent")
	errInvalidKey   = errors.New("datastore: key cannot be an entity name")
)

// head is the entity of an object's head.
type head struct {
	Gen  string `datastore:"g,noindex"`
	N    int64  `datastore:"n,noindex"` // chunks, including the head's
	Size int64  `datastore:"s,noindex"`
	Data []byte `datastore:"d,noindex"`
}

// chunk is the entity of a further chunk.
type chunk struct {
	Data []byte `datastore:"d,noindex"`
}

// Options are the options of Open.
type Options struct {
	// Namespace is the Datastore namespace of the queue's entities;
	// several queues can share a database in different namespaces.
	// Empty is the default namespace.
	Namespace string
	// Queue are the options of the Store.
	Queue queue.Options
}

// Open returns a Store over client's database, using client, which stays
// the caller's: closing the Store does not close it. opts may be nil. Open
// does no I/O; use Store.Ping to check the database and the credentials.
func Open(ctx context.Context, client *datastore.Client, opts *Options) (*queue.Store, error) {
	if opts == nil {
		opts = new(Options)
	}
	b, err := openBackend(ctx, client, opts.Namespace)
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

// openBackend returns the Backend over namespace.
func openBackend(_ context.Context, client *datastore.Client, namespace string) (*backend, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: datastore: nil client", queue.ErrInvalid)
	}
	if err := validNamespace(namespace); err != nil {
		return nil, err
	}
	return &backend{c: client, ns: namespace}, nil
}

// validNamespace checks Datastore's rule for namespaces: up to 100
// characters of [A-Za-z0-9._-], not of the reserved form __*__.
func validNamespace(ns string) error {
	bad := len(ns) > 100 || strings.HasPrefix(ns, "__") && strings.HasSuffix(ns, "__")
	for _, c := range ns {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			bad = true
		}
	}
	if bad {
		return fmt.Errorf("%w: datastore: namespace %q: want up to 100 characters of A-Z a-z 0-9 . _ -", queue.ErrInvalid, ns)
	}
	return nil
}

type backend struct {
	c  *datastore.Client
	ns string
}

var (
	_ driver.Backend = (*backend)(nil)
	_ driver.Stater  = (*backend)(nil)
	_ driver.Pinger  = (*backend)(nil)

	_ driver.ConditionalDeleter = (*backend)(nil)
	_ driver.MultiDeleter       = (*backend)(nil)
)

func (b *backend) headKey(key string) *datastore.Key {
	k := datastore.NameKey(headKind, key, nil)
	k.Namespace = b.ns
	return k
}

func (b *backend) chunkKey(key, gen string, n int64) *datastore.Key {
	k := datastore.NameKey(chunkKind, key+"#"+gen+"#"+strconv.FormatInt(n, 10), nil)
	k.Namespace = b.ns
	return k
}

func validKey(key string) error {
	if key == "" || len(key) > maxKey || strings.HasPrefix(key, "__") || strings.Contains(key, "#") {
		return fmt.Errorf("%w: %q", errInvalidKey, key)
	}
	return nil
}

// getHead reads the head of key.
func (b *backend) getHead(ctx context.Context, key string) (*head, error) {
	if err := validKey(key); err != nil {
		return nil, err
	}
	h := new(head)
	if err := b.c.Get(ctx, b.headKey(key), h); err != nil {
		return nil, err
	}
	if h.N < 1 || h.Gen == "" || int64(len(h.Data)) > h.Size {
		return nil, fmt.Errorf("%w: head of %s", errCorrupt, key)
	}
	return h, nil
}

// Get implements driver.Backend.Get. The head is read at once, the further
// chunks one at a time as the reader reaches them; ctx is used for the
// lifetime of the reader. If the object is replaced or deleted while it is
// being read, the reader fails with an error that ErrorCode maps to
// CodeNotFound, as the chunks it needs are gone.
func (b *backend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	h, err := b.getHead(ctx, key)
	if err != nil {
		return nil, driver.Attrs{}, ctxErr(ctx, err)
	}
	r := &reader{ctx: ctx, b: b, key: key, h: h, buf: h.Data, next: 1, read: int64(len(h.Data))}
	return r, driver.Attrs{Version: driver.Version(h.Gen), Size: h.Size}, nil
}

type reader struct {
	ctx  context.Context
	b    *backend
	key  string
	h    *head
	buf  []byte
	next int64 // the next chunk to fetch
	read int64 // bytes fetched so far
	err  error
}

func (r *reader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.next >= r.h.N {
			if r.read != r.h.Size {
				r.err = fmt.Errorf("%w: %s has %d bytes, its head says %d", errCorrupt, r.key, r.read, r.h.Size)
			} else {
				r.err = io.EOF
			}
			return 0, r.err
		}
		var c chunk
		if err := r.b.c.Get(r.ctx, r.b.chunkKey(r.key, r.h.Gen, r.next), &c); err != nil {
			if errors.Is(err, datastore.ErrNoSuchEntity) {
				err = fmt.Errorf("datastore: %s was replaced or deleted while being read: %w", r.key, err)
			}
			r.err = ctxErr(r.ctx, err)
			return 0, r.err
		}
		r.next++
		r.read += int64(len(c.Data))
		if len(c.Data) == 0 || r.read > r.h.Size {
			r.err = fmt.Errorf("%w: chunk %d of %s", errCorrupt, r.next-1, r.key)
			return 0, r.err
		}
		r.buf = c.Data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *reader) Close() error {
	r.buf = nil
	if r.err == nil {
		r.err = errors.New("datastore: read after Close")
	}
	return nil
}

// Stat implements driver.Stater. It reads the head.
func (b *backend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	h, err := b.getHead(ctx, key)
	if err != nil {
		return driver.Attrs{}, ctxErr(ctx, err)
	}
	return driver.Attrs{Version: driver.Version(h.Gen), Size: h.Size}, nil
}

// readChunk reads up to chunkData bytes of r. It returns fewer only at the
// end of r, and then done.
func readChunk(r io.Reader, sizeHint int64) (data []byte, done bool, err error) {
	var buf bytes.Buffer
	if sizeHint >= 0 {
		buf.Grow(int(min(sizeHint+1, chunkData)))
	}
	n, err := io.CopyN(&buf, r, chunkData)
	if err == io.EOF {
		return buf.Bytes(), true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return buf.Bytes()[:n], false, nil
}

func newGeneration() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// Put implements driver.Backend.Put. See the package documentation for how
// it streams and where it commits.
func (b *backend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (_ driver.Version, err error) {
	defer func() { err = ctxErr(ctx, err) }()
	if err := validKey(key); err != nil {
		return "", err
	}
	gen, err := newGeneration()
	if err != nil {
		return "", err
	}
	first, done, err := readChunk(r, opts.Size)
	if err != nil {
		return "", err
	}
	h := &head{Gen: gen, N: 1, Size: int64(len(first)), Data: first}

	// The further chunks, written before the head.
	var written []*datastore.Key
	var keys []*datastore.Key
	var batch []*chunk
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if _, err := b.c.PutMulti(ctx, keys, batch); err != nil {
			return err
		}
		written = append(written, keys...)
		keys, batch = nil, nil
		return nil
	}
	for !done {
		var data []byte
		data, done, err = readChunk(r, opts.Size-h.Size)
		if err == nil && len(data) > 0 {
			keys = append(keys, b.chunkKey(key, gen, h.N))
			batch = append(batch, &chunk{Data: data})
			h.N++
			h.Size += int64(len(data))
			if len(batch) == chunksPerCommit {
				err = flush()
			}
		}
		if err == nil && done {
			err = flush()
		}
		if err != nil {
			b.cleanup(ctx, written)
			return "", err
		}
	}

	old, err := b.putHead(ctx, key, h, opts)
	if err != nil {
		// The head may have landed although its answer did not (a
		// cancelled or failed commit): its chunks must then stay. They go
		// only when the stored head is another generation.
		if len(written) > 0 {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			cur, herr := b.getHead(rctx, key)
			cancel()
			if herr == nil && cur.Gen == gen {
				return driver.Version(gen), nil
			}
			if herr == nil || errors.Is(herr, datastore.ErrNoSuchEntity) {
				b.cleanup(ctx, written)
			}
		}
		return "", err
	}
	if old != nil && old.N > 1 {
		b.cleanup(ctx, b.chunkKeys(key, old))
	}
	return driver.Version(gen), nil
}

// putHead writes the head h of key under the condition of opts, and
// returns the head it replaced, if any.
func (b *backend) putHead(ctx context.Context, key string, h *head, opts *driver.PutOptions) (*head, error) {
	hk := b.headKey(key)
	if opts.IfNoneMatch {
		_, err := b.c.Mutate(ctx, datastore.NewInsert(hk, h))
		return nil, unwrapMulti(err)
	}
	var old *head
	_, err := b.c.RunInTransaction(ctx, func(tx *datastore.Transaction) error {
		old = new(head)
		err := tx.Get(hk, old)
		switch {
		case errors.Is(err, datastore.ErrNoSuchEntity):
			old = nil
			if opts.IfMatch != "" {
				return err
			}
		case err != nil:
			return err
		case opts.IfMatch != "" && driver.Version(old.Gen) != opts.IfMatch:
			return errPrecondition
		}
		_, err = tx.Put(hk, h)
		return err
	}, datastore.BeginLater)
	if errors.Is(err, datastore.ErrConcurrentTransaction) && opts.IfMatch != "" {
		// Every attempt lost to contention. If someone else's write won,
		// the condition fails now, and that is the answer; otherwise
		// nothing happened and the caller may try again.
		cur := new(head)
		gerr := b.c.Get(ctx, hk, cur)
		switch {
		case errors.Is(gerr, datastore.ErrNoSuchEntity):
			return nil, gerr
		case gerr == nil && driver.Version(cur.Gen) != opts.IfMatch:
			return nil, fmt.Errorf("%w (after %w)", errPrecondition, err)
		}
	}
	return old, err
}

// unwrapMulti returns the error of a single mutation.
func unwrapMulti(err error) error {
	var me datastore.MultiError
	if errors.As(err, &me) && len(me) == 1 {
		return me[0]
	}
	return err
}

func (b *backend) chunkKeys(key string, h *head) []*datastore.Key {
	keys := make([]*datastore.Key, 0, h.N-1)
	for n := int64(1); n < h.N; n++ {
		keys = append(keys, b.chunkKey(key, h.Gen, n))
	}
	return keys
}

// cleanup deletes chunks, best-effort: a failure leaves unreachable
// garbage, never a wrong answer. It runs on after ctx is cancelled, for a
// bounded time.
func (b *backend) cleanup(ctx context.Context, keys []*datastore.Key) {
	if len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	for len(keys) > 0 {
		n := min(len(keys), maxMutations)
		if err := b.c.DeleteMulti(ctx, keys[:n]); err != nil {
			return
		}
		keys = keys[n:]
	}
}

// Delete implements driver.Backend.Delete. It deletes the head in a
// transaction that learns its chunks, then the chunks.
func (b *backend) Delete(ctx context.Context, key string) error {
	return b.deleteHead(ctx, key, "")
}

// maxMutations is the most entities one commit may write or delete.
const maxMutations = 500

// DeleteMulti implements driver.MultiDeleter: one lookup of the keys'
// heads, to learn which objects have chunks beyond the head, then one
// commit per 500 entities that deletes the heads, then the chunks. Unlike
// Delete, the lookup and the deletes are not one transaction: an object
// written again between them loses its new head, as an unconditional
// delete may, and leaves its new chunks as unreachable garbage; the
// Store's batches delete objects that nothing writes again.
func (b *backend) DeleteMulti(ctx context.Context, keys []string) (err error) {
	defer func() { err = ctxErr(ctx, err) }()
	hks := make([]*datastore.Key, len(keys))
	for i, k := range keys {
		if err := validKey(k); err != nil {
			return err
		}
		hks[i] = b.headKey(k)
	}
	heads := make([]head, len(keys))
	err = b.c.GetMulti(ctx, hks, heads)
	var me datastore.MultiError
	switch {
	case err == nil:
		me = make(datastore.MultiError, len(keys))
	case !errors.As(err, &me) || len(me) != len(keys):
		return err
	}
	var del, chunks []*datastore.Key
	for i, e := range me {
		switch {
		case errors.Is(e, datastore.ErrNoSuchEntity):
			continue
		case e != nil:
			return e
		}
		del = append(del, hks[i])
		if heads[i].N > 1 {
			chunks = append(chunks, b.chunkKeys(keys[i], &heads[i])...)
		}
	}
	del = append(del, chunks...)
	for len(del) > 0 {
		n := min(len(del), maxMutations)
		if err := b.c.DeleteMulti(ctx, del[:n]); err != nil {
			return err
		}
		del = del[n:]
	}
	return nil
}

// DeleteIfMatch implements driver.ConditionalDeleter: Delete, with a
// transaction that compares the head's generation with v as well.
func (b *backend) DeleteIfMatch(ctx context.Context, key string, v driver.Version) error {
	return b.deleteHead(ctx, key, v)
}

// deleteHead deletes the head of key in a transaction that learns its
// chunks, then the chunks. Unless v is empty, the head must exist with
// generation v.
func (b *backend) deleteHead(ctx context.Context, key string, v driver.Version) (err error) {
	defer func() { err = ctxErr(ctx, err) }()
	if err := validKey(key); err != nil {
		return err
	}
	hk := b.headKey(key)
	var old *head
	_, err = b.c.RunInTransaction(ctx, func(tx *datastore.Transaction) error {
		old = new(head)
		err := tx.Get(hk, old)
		switch {
		case errors.Is(err, datastore.ErrNoSuchEntity) && v == "":
			old = nil
			return nil
		case err != nil:
			return err
		case v != "" && driver.Version(old.Gen) != v:
			return errPrecondition
		}
		return tx.Delete(hk)
	}, datastore.BeginLater)
	if v != "" && errors.Is(err, datastore.ErrConcurrentTransaction) {
		// Every attempt lost to contention: if another write won, the
		// condition fails now, and that is the answer.
		cur := new(head)
		gerr := b.c.Get(ctx, hk, cur)
		switch {
		case errors.Is(gerr, datastore.ErrNoSuchEntity):
			return gerr
		case gerr == nil && driver.Version(cur.Gen) != v:
			return fmt.Errorf("%w (after %w)", errPrecondition, err)
		}
	}
	if err != nil {
		return err
	}
	if old != nil && old.N > 1 {
		b.cleanup(ctx, b.chunkKeys(key, old))
	}
	return nil
}

// prefixEnd returns the least string greater than every string with the
// given prefix, or "" if there is none.
func prefixEnd(prefix string) string {
	p := []byte(prefix)
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] < 0xff {
			p[i]++
			return string(p[:i+1])
		}
	}
	return ""
}

// List implements driver.Backend.List with one keys-only query.
func (b *backend) List(ctx context.Context, prefix, startAfter string, limit int) (_ []string, _ bool, err error) {
	defer func() { err = ctxErr(ctx, err) }()
	q := datastore.NewQuery(headKind).Namespace(b.ns).KeysOnly().Order("__key__").Limit(limit + 1)
	if startAfter != "" && startAfter >= prefix {
		q = q.FilterField("__key__", ">", b.headKey(startAfter))
	} else if prefix != "" {
		q = q.FilterField("__key__", ">=", b.headKey(prefix))
	}
	if end := prefixEnd(prefix); end != "" {
		q = q.FilterField("__key__", "<", b.headKey(end))
	}
	it := b.c.Run(ctx, q)
	keys := make([]string, 0, min(limit, 64))
	for {
		k, err := it.Next(nil)
		if err == iterator.Done {
			return keys, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if len(keys) == limit {
			return keys, true, nil
		}
		keys = append(keys, k.Name)
	}
}

// Ping implements driver.Pinger: it looks up an entity that never exists.
func (b *backend) Ping(ctx context.Context) (err error) {
	defer func() { err = ctxErr(ctx, err) }()
	err = b.c.Get(ctx, b.headKey(".ping"), new(head))
	if errors.Is(err, datastore.ErrNoSuchEntity) {
		return nil
	}
	return err
}

// ctxErr makes an error that gRPC reports for a done ctx (status Canceled
// or DeadlineExceeded, which do not match the context errors) satisfy
// errors.Is(err, ctx.Err()), so that the Store passes it through as the
// Backend contract asks. The gRPC error stays reachable.
func ctxErr(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil || errors.Is(err, ctx.Err()) {
		return err
	}
	if c := status.Code(unwrapMulti(err)); c == codes.Canceled || c == codes.DeadlineExceeded {
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return err
}

// ErrorCode implements driver.Backend.ErrorCode.
func (b *backend) ErrorCode(err error) driver.Code { return errorCode(err) }

func errorCode(err error) driver.Code {
	err = unwrapMulti(err)
	var fm *datastore.ErrFieldMismatch
	switch {
	case errors.Is(err, errPrecondition):
		return driver.CodePrecondition
	case errors.Is(err, datastore.ErrNoSuchEntity):
		return driver.CodeNotFound
	case errors.Is(err, errCorrupt), errors.As(err, &fm):
		return driver.CodeCorrupt
	case errors.Is(err, errInvalidKey), errors.Is(err, datastore.ErrInvalidKey), errors.Is(err, datastore.ErrInvalidEntityType):
		return driver.CodeInvalid
	case errors.Is(err, datastore.ErrConcurrentTransaction):
		return driver.CodeUnavailable
	}
	s, ok := status.FromError(err)
	if !ok {
		return driver.CodeUnknown
	}
	switch s.Code() {
	case codes.NotFound:
		return driver.CodeNotFound
	case codes.AlreadyExists:
		return driver.CodePrecondition
	case codes.InvalidArgument:
		return driver.CodeInvalid
	case codes.Unimplemented:
		return driver.CodeUnsupported
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Canceled:
		return driver.CodeUnavailable
	}
	// FailedPrecondition is a missing index or a bad transaction, not a
	// refused condition of ours: reported as it is.
	return driver.CodeUnknown
}

// Close implements driver.Backend.Close. It does not close the client.
func (b *backend) Close() error { return nil }
