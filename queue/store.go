package queue

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// Options configure a Store. The zero value gives the defaults.
type Options struct {
	// Node names this Store's node in leases and heartbeats. It must pass
	// ValidNodeName. At most one live process may use a name at a time: a
	// process that starts under a name supersedes the earlier ones, whose
	// claims other nodes may then take over (see Heartbeat). A process
	// restarted after its predecessor died keeps the name and should run
	// Owned. Default: "node-" and 8 random hex digits.
	Node string
	// Grace is how old an uncommitted transaction must be before Sweep
	// aborts it. It must exceed the longest transaction, including its
	// request timeouts. Default: 15 minutes.
	Grace time.Duration
	// MaxEnvelopeSize bounds an envelope's data. Default: 64 KiB.
	MaxEnvelopeSize int
	// InlineContent is the largest content, in bytes, that a message of
	// one envelope committed by Tx.CommitContent keeps in its envelope's
	// object, so that its commit writes one object where it would write
	// two. Every due scan and claim of the envelope reads or rewrites
	// that object whole, so this bounds what they carry. Default: 32 KiB;
	// at most MaxInlineContent; negative keeps every content in an
	// object of its own.
	InlineContent int
	// Concurrency bounds the requests one operation runs in parallel.
	// Default: 16.
	Concurrency int
	// Clock returns the current time. Default: time.Now. Tests inject one.
	Clock func() time.Time
	// Rand is the source of message and envelope IDs. Default:
	// crypto/rand. Tests inject one to force collisions.
	Rand io.Reader
	// Blocks is how many blocks of message IDs the Store hands IDs out of
	// at once, in turn, so that its commits spread over as many block
	// records: for stores that allow about one write a second to one
	// object, where one record written by every commit would be the
	// limit. Default: 1; the gs and datastore adapters default to 16.
	Blocks int
	// Prealloc is ignored.
	//
	// Deprecated: Begin makes no request but once per block of 4,096
	// message IDs, so there is nothing left to reserve ahead.
	Prealloc int
	// LeaseDuration is the default length of a claim. Default: 5 minutes.
	LeaseDuration time.Duration
	// HeartbeatInterval is how often RunNode renews this node's
	// heartbeat. Default: 10 seconds.
	HeartbeatInterval time.Duration
	// NodeTTL is how long a heartbeat keeps the node alive. Claims of a
	// node whose heartbeat is older than NodeTTL can be taken over.
	// Default: 3 heartbeat intervals.
	NodeTTL time.Duration
	// SelfScheduled says the MTA schedules the envelopes it commits
	// itself, as OpenSMTPD does: commits write no due pointers, so Due
	// does not see them until Claim.Defer gives them one. Default: false,
	// every committed envelope is due at once.
	SelfScheduled bool
	// Encryption, if set, encrypts message content and envelopes at rest
	// and may compress content, with the keys it holds (see Sealed and
	// docs/encryption.md). The URL parameters key_file, key_env,
	// old_key_files, compress and require_encryption set it for every
	// scheme (see EncryptionFromURL). Default: nil, objects are stored
	// plain, and reading a sealed one fails with ErrCorrupt naming its
	// key ID.
	Encryption *Encryption
	// Retries is how many times a failed idempotent request whose error is
	// classified CodeUnavailable is retried, with exponential backoff from
	// 50ms. Default: 3. Negative: none.
	Retries int
}

// Store is the portable queue that MTAs use. It is safe for concurrent use
// by many goroutines, and any number of Stores in any number of processes
// may share one storage: every operation that must be exclusive is a
// conditional write.
type Store struct {
	b      driver.Backend
	opts   Options
	mu     sync.Mutex
	closed bool
	bg     sync.WaitGroup
	randMu sync.Mutex

	committed cache // messages known to be committed
	blocks    blockCache
	gc        *collector
	inline    inlineCache // inline contents read lately
	claims    claiming    // the envelopes this Store's callers claim
	groups    groupCache  // the due groups read lately
	gone      goneSet     // envelopes deleted or found missing lately
	// noCondDelete is set once the backend has said it has no
	// conditional delete (driver.ConditionalDeleter).
	noCondDelete atomic.Bool

	blkMu   chan struct{} // a lock, held by a send: guards blks, blkTurn and their next IDs
	blks    []*idBlock    // the blocks this Store hands message IDs out of
	blkTurn int           // the index in blks of the next Begin
	// lazy holds the blocks with committed bits that settleLater has
	// not sent yet, for Flush.
	lazyMu sync.Mutex
	lazy   map[*idBlock]bool

	// session is this process's incarnation of the node, 0 until its
	// first heartbeat is written; see heartbeat.
	session atomic.Uint64
	nodes   nodeCache
	beatMu  chan struct{} // a lock held across a heartbeat's requests
	beat    beatState
}

// New returns a Store over b. opts may be nil. The Store owns b and closes
// it in Close.
func New(b driver.Backend, opts *Options) (*Store, error) {
	s := &Store{b: b, beatMu: make(chan struct{}, 1), gc: newCollector()}
	if opts != nil {
		s.opts = *opts
	}
	o := &s.opts
	if o.Grace <= 0 {
		o.Grace = 15 * time.Minute
	}
	if o.Blocks <= 0 {
		o.Blocks = 1
	}
	s.blks = make([]*idBlock, o.Blocks)
	s.blkMu = make(chan struct{}, 1)
	if o.MaxEnvelopeSize <= 0 {
		o.MaxEnvelopeSize = 64 << 10
	}
	switch {
	case o.InlineContent == 0:
		o.InlineContent = 32 << 10
	case o.InlineContent > MaxInlineContent:
		o.InlineContent = MaxInlineContent
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.LeaseDuration <= 0 {
		o.LeaseDuration = 5 * time.Minute
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 10 * time.Second
	}
	if o.NodeTTL <= 0 {
		o.NodeTTL = 3 * o.HeartbeatInterval
	}
	if o.Retries == 0 {
		o.Retries = 3
	}
	if o.Node == "" {
		var b [4]byte
		if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
			return nil, err
		}
		o.Node = fmt.Sprintf("node-%x", b)
	}
	if err := ValidNodeName(o.Node); err != nil {
		return nil, &Error{Op: "new", Kind: ErrInvalid, Err: err}
	}
	sb, err := Sealed(s.b, o.Encryption)
	if err != nil {
		return nil, err
	}
	s.b = sb
	s.committed.max = 1 << 14
	return s, nil
}

// InlineContent returns the largest content that a message of one
// envelope keeps in its envelope (Options.InlineContent), or 0 if none.
func (s *Store) InlineContent() int { return max(s.opts.InlineContent, 0) }

// MaxEnvelopeSize returns the largest envelope the Store accepts.
func (s *Store) MaxEnvelopeSize() int { return s.opts.MaxEnvelopeSize }

// Node returns the name of this Store's node.
func (s *Store) Node() string { return s.opts.Node }

// Backend returns the Backend under s, for tools and tests that need raw
// access to the storage. It is the Sealed decorator over the adapter's
// Backend: objects read and write through it as the Store sees them,
// encrypted in the store when Options.Encryption says so.
func (s *Store) Backend() driver.Backend { return s.b }

// Close waits for background work and closes the backend. Calls after
// Close return ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return &Error{Op: "close", Kind: ErrClosed}
	}
	s.closed = true
	s.mu.Unlock()
	s.stopCollector()
	s.bg.Wait()
	return s.b.Close()
}

func (s *Store) check(op string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return &Error{Op: op, Kind: ErrClosed}
	}
	return nil
}

// Ping checks that the store answers, so that a tool can report a bad
// endpoint, bad credentials or a missing bucket before doing work.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.check("ping"); err != nil {
		return err
	}
	err := s.retry(ctx, func() error {
		if p, ok := s.b.(driver.Pinger); ok {
			return p.Ping(ctx)
		}
		_, _, err := s.b.List(ctx, layout.Key(layout.Handle{Kind: layout.Reservation}), "", 1)
		return err
	})
	return s.wrap("ping", "", err, nil)
}

func (s *Store) now() time.Time { return s.opts.Clock() }

func (s *Store) rand64() (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b[:]) | 1, nil
}

func (s *Store) rand32() (uint32, error) {
	var b [4]byte
	s.randMu.Lock()
	_, err := io.ReadFull(s.opts.Rand, b[:])
	s.randMu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("random source: %w", err)
	}
	return binary.BigEndian.Uint32(b[:]), nil
}

// retry runs fn until it succeeds, fails with an error that is not
// transient, ctx is done, or the retries are used up.
func (s *Store) retry(ctx context.Context, fn func() error) error {
	delay := 50 * time.Millisecond
	var last error // the last transient error, kept as the reason
	for i := 0; ; i++ {
		err := fn()
		if err != nil && last != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			return fmt.Errorf("%w; last error: %w", err, last)
		}
		if err == nil || i >= s.opts.Retries || ctx.Err() != nil {
			return err
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || s.b.ErrorCode(err) != driver.CodeUnavailable {
			return err
		}
		last = err
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w; last error: %w", ctx.Err(), err)
		case <-t.C:
		}
		delay *= 2
	}
}

// getBytes reads a small object whole.
func (s *Store) getBytes(ctx context.Context, key string, max int64) ([]byte, driver.Attrs, error) {
	var data []byte
	var attrs driver.Attrs
	err := s.retry(ctx, func() error {
		rc, a, err := s.b.Get(ctx, key)
		if err != nil {
			return err
		}
		defer rc.Close()
		data, err = io.ReadAll(io.LimitReader(rc, max+1))
		if err != nil {
			return err
		}
		if int64(len(data)) > max {
			return fmt.Errorf("%w: object %s is larger than %d bytes", ErrCorrupt, key, max)
		}
		attrs = a
		return nil
	})
	return data, attrs, err
}

// putBytes writes a small object. Unconditional writes are retried.
func (s *Store) putBytes(ctx context.Context, key string, data []byte, opts driver.PutOptions) (Version, error) {
	opts.Size = int64(len(data))
	if opts.IfNoneMatch || opts.IfMatch != "" {
		return s.b.Put(ctx, key, bytes.NewReader(data), &opts)
	}
	var v Version
	err := s.retry(ctx, func() error {
		var err error
		v, err = s.b.Put(ctx, key, bytes.NewReader(data), &opts)
		return err
	})
	return v, err
}

func (s *Store) stat(ctx context.Context, key string) (driver.Attrs, error) {
	var a driver.Attrs
	err := s.retry(ctx, func() error {
		var err error
		if st, ok := s.b.(driver.Stater); ok {
			a, err = st.Stat(ctx, key)
			return err
		}
		var rc io.ReadCloser
		rc, a, err = s.b.Get(ctx, key)
		if err == nil {
			rc.Close()
		}
		return err
	})
	return a, err
}

func (s *Store) del(ctx context.Context, key string) error {
	return s.retry(ctx, func() error { return s.b.Delete(ctx, key) })
}

// cleanup deletes key, the leftover of a request that failed, within ctx
// if it can. If ctx ends first, the delete finishes in the background
// (see background), so that the caller returns by its deadline however
// long the store hangs.
func (s *Store) cleanup(ctx context.Context, key string) {
	if err := s.del(ctx, key); err != nil && ctx.Err() != nil {
		s.background(ctx, func(ctx context.Context) { s.del(ctx, key) })
	}
}

// list calls fn for every key under prefix, a page at a time.
func (s *Store) list(ctx context.Context, prefix string, fn func(keys []string) error) error {
	return s.listFrom(ctx, prefix, "", fn)
}

// listFrom is list from the first key after the given one.
func (s *Store) listFrom(ctx context.Context, prefix, after string, fn func(keys []string) error) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var keys []string
		var more bool
		err := s.retry(ctx, func() error {
			var err error
			keys, more, err = s.b.List(ctx, prefix, after, 1000)
			return err
		})
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			if err := fn(keys); err != nil {
				return err
			}
			after = keys[len(keys)-1]
		}
		if !more || len(keys) == 0 {
			return nil
		}
	}
}

func (s *Store) isNotFound(err error) bool {
	return err != nil && (errors.Is(err, ErrNotFound) || s.b.ErrorCode(err) == driver.CodeNotFound)
}

func (s *Store) isPrecondition(err error) bool {
	return err != nil && s.b.ErrorCode(err) == driver.CodePrecondition
}

// parallel runs fn for every index below n with at most the configured
// concurrency, and returns the first error.
func (s *Store) parallel(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	if n == 1 {
		return fn(ctx, 0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, s.opts.Concurrency)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, i); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// background runs fn after the caller returns, bounded by timeout, and
// Close waits for it. It is for cleanup that may fail harmlessly. It
// reports whether fn was started: after Close, it is not.
func (s *Store) background(ctx context.Context, fn func(ctx context.Context)) bool {
	s.mu.Lock()
	if s.closed {
		// Close is waiting, or done: the clean-up is best effort.
		s.mu.Unlock()
		return false
	}
	s.bg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.bg.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		fn(ctx)
	}()
	return true
}

// cache is a bounded set of committed transactions: message IDs with
// their transaction nonces.
type cache struct {
	mu  sync.Mutex
	m   map[MsgID]uint64
	max int
}

func (c *cache) has(m MsgID, nonce uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.m[m]
	return ok && n == nonce
}

func (c *cache) add(m MsgID, nonce uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= c.max {
		c.m = make(map[MsgID]uint64)
	}
	c.m[m] = nonce
}

func (c *cache) remove(m MsgID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, m)
}
