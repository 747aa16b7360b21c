package opensmtpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// QueueOptions configure NewQueue. The zero value gives the defaults.
type QueueOptions struct {
	// Logger receives warnings about store failures and recoveries. Nil
	// means text records on os.Stderr, which is smtpd's log.
	Logger *slog.Logger

	// TempDir is where MESSAGE_FD_R copies a message body before handing
	// the descriptor to smtpd; the file is unlinked at once. Empty means
	// os.TempDir().
	TempDir string

	// CacheSize bounds the envelopes remembered with their stored
	// version, so that ENVELOPE_UPDATE usually needs no load first.
	// Zero means 4096.
	CacheSize int

	// SweepInterval is how often Store.Sweep runs in the background to
	// abort transactions abandoned by any process (a crash between
	// MAIL FROM and the end of DATA). Zero means 5 minutes; negative
	// disables it.
	SweepInterval time.Duration

	// Shared makes this instance one of several smtpd instances on one
	// queue. Envelopes are committed claimed by this node (Tx.ClaimOnCommit), the
	// walk yields only this node's envelopes (Store.Owned), updates and
	// deletes go through the claim, and a background loop (Store.RunNode)
	// heartbeats and takes over the envelopes of dead nodes, handing them
	// to smtpd through Discover once the start-up walk is over.
	Shared bool

	// Lease is the length of the claims taken in shared mode. A claim
	// lasts while its node heartbeats, so it only needs to outlive the
	// queue's expiry. Zero means 7 days.
	Lease time.Duration

	// Discover hands an envelope taken over from a dead node to smtpd,
	// normally by running "smtpctl discover <evpid>" (never with a
	// msgid: that crashes smtpd 6.8). It is called from a background
	// goroutine, never during a request. Required in shared mode.
	Discover func(ctx context.Context, id queue.EvpID) error

	// TxMaxAge is how long a transaction of this process may stay open
	// without smtpd committing or rolling it back before it is rolled
	// back. smtpd rolls back every transaction it does not commit, so this
	// only matters when a reply was lost to a timeout. Zero means 30
	// minutes.
	TxMaxAge time.Duration
}

// Queue is a Handler that keeps smtpd's queue in a *queue.Store. See
// NewQueue.
type Queue struct {
	s    *queue.Store
	log  *slog.Logger
	opts QueueOptions

	mu       sync.Mutex
	txs      map[uint32]*openTx // uncommitted messages by msgid
	local    map[queue.EvpID]bool
	walk     *walker
	walkDone bool
	stop     context.CancelFunc // stops maintain; nil before Init
	quit     chan struct{}      // closed by Shutdown
	bg       sync.WaitGroup
	closed   bool

	cache envCache

	discoverMu sync.Mutex
	toDiscover []queue.EvpID
	discoverCh chan struct{}        // wakes the discover loop
	walkOver   chan struct{}        // closed when the start-up walk has ended
	walked     map[queue.EvpID]bool // in shared mode, what the walk gave smtpd; kept for the first hand-over
}

type openTx struct {
	tx      *queue.Tx
	created time.Time
}

var _ Handler = (*Queue)(nil)

// NewQueue returns a Handler that keeps smtpd's queue in s, for Serve.
//
// Operations map onto s as follows. MESSAGE_CREATE begins a transaction
// (Store.Begin); ENVELOPE_CREATE adds to it without I/O (Tx.AddEnvelope),
// or, for a committed message (bounces), stores the envelope at once
// (Store.AddEnvelope). MESSAGE_COMMIT streams the body from smtpd's file
// and commits (Tx.CommitContent: one round of writes for a message of one
// recipient), replying 1 only once the message is durable; when that
// fails or runs out of time, the transaction is rolled back before the
// reply, so that a message smtpd was told failed never becomes visible. MESSAGE_DELETE rolls back.
// MESSAGE_FD_R copies the body, verifying its checksum, into an unlinked
// temporary file; a corrupt body is quarantined. ENVELOPE_LOAD,
// ENVELOPE_UPDATE (a compare-and-swap against the last version seen,
// retried once after a reload) and ENVELOPE_DELETE (which removes the
// message with its last envelope) map onto Load, Update and
// DeleteEnvelope.
//
// ENVELOPE_WALK yields a snapshot of the committed envelopes that
// existed when this process started, grouped by message, each at most
// once: envelopes this process created are excluded, since smtpd already
// scheduled them, and envelopes deleted meanwhile are skipped. The
// listing runs in the background from the first WALK and retries
// transient store errors, so a store outage delays the walk but does not
// end it early: ending it would leave mail unscheduled until the next
// restart.
//
// Store errors are answered with smtpd's temporary failure. The Queue is
// safe for the overlapping calls that Serve makes when a call outlives
// its deadline.
func NewQueue(s *queue.Store, opts *QueueOptions) *Queue {
	q := &Queue{s: s, txs: make(map[uint32]*openTx), local: make(map[queue.EvpID]bool), quit: make(chan struct{}),
		discoverCh: make(chan struct{}, 1), walkOver: make(chan struct{})}
	if opts != nil {
		q.opts = *opts
	}
	o := &q.opts
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 4096
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = 5 * time.Minute
	}
	if o.Lease <= 0 {
		o.Lease = 7 * 24 * time.Hour
	}
	if o.TxMaxAge <= 0 {
		o.TxMaxAge = 30 * time.Minute
	}
	q.log = o.Logger
	q.cache.init(o.CacheSize)
	return q
}

// Init implements Handler.Init. It checks that the store answers, but a
// store that does not is only logged: smtpd would exit on an error, and
// the store may come back.
func (q *Queue) Init(ctx context.Context, version uint32) error {
	q.mu.Lock()
	if q.stop == nil {
		// The background work lives until Close or Shutdown.
		bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		q.stop = cancel
		q.bg.Add(1)
		go func() {
			defer q.bg.Done()
			q.maintain(bctx)
		}()
		if q.opts.Shared {
			q.bg.Add(2)
			go func() {
				defer q.bg.Done()
				q.s.RunNode(bctx, &queue.NodeOptions{
					OnTakeover: q.takenOver,
					OnError: func(err error) {
						q.log.Warn("mxq: heartbeat or takeover failed", "err", err)
					},
				})
			}()
			go func() {
				defer q.bg.Done()
				q.discoverLoop(bctx)
			}()
		}
	}
	q.mu.Unlock()
	if err := q.s.Ping(ctx); err != nil {
		q.log.Warn("mxq: the queue store does not answer; operations will temp-fail until it does", "err", err)
	}
	return nil
}

// Close implements Handler.Close: it rolls back the open transactions
// and stops the background work.
func (q *Queue) Close(ctx context.Context) error {
	return q.Shutdown(ctx)
}

// Shutdown stops the background work and rolls back the transactions
// smtpd left open. Serve's caller runs it when smtpd went away without
// CLOSE. It may be called more than once.
func (q *Queue) Shutdown(ctx context.Context) error {
	q.mu.Lock()
	if !q.closed {
		close(q.quit)
	}
	q.closed = true
	stop := q.stop
	txs := q.txs
	q.txs = make(map[uint32]*openTx)
	w := q.walk
	q.mu.Unlock()
	if stop != nil {
		stop()
	}
	if w != nil {
		w.cancel()
	}
	var errs []error
	for _, t := range txs {
		if err := t.tx.Rollback(ctx); err != nil && !errors.Is(err, queue.ErrClosed) {
			errs = append(errs, err)
		}
	}
	q.bg.Wait()
	return errors.Join(errs...)
}

// maintain runs the periodic sweep and expires forgotten transactions.
func (q *Queue) maintain(ctx context.Context) {
	every := q.opts.SweepInterval
	if every < 0 {
		every = 5 * time.Minute // still expire transactions
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		q.expireTxs(ctx)
		if q.opts.SweepInterval > 0 {
			sctx, cancel := context.WithTimeout(ctx, every)
			st, err := q.s.Sweep(sctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				q.log.Warn("mxq: sweep failed", "err", err)
			} else if st.Aborted > 0 {
				q.log.Info("mxq: sweep aborted abandoned transactions", "aborted", st.Aborted, "removed", st.Removed)
			}
		}
	}
}

func (q *Queue) expireTxs(ctx context.Context) {
	now := time.Now()
	var old []*openTx
	q.mu.Lock()
	for id, t := range q.txs {
		if now.Sub(t.created) > q.opts.TxMaxAge {
			old = append(old, t)
			delete(q.txs, id)
		}
	}
	q.mu.Unlock()
	for _, t := range old {
		q.log.Warn("mxq: rolling back a transaction smtpd forgot", "msgid", t.tx.ID().String(), "age", now.Sub(t.created).Round(time.Second))
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := t.tx.Rollback(rctx); err != nil {
			q.log.Warn("mxq: rollback failed; the sweep will remove it", "msgid", t.tx.ID().String(), "err", err)
		}
		cancel()
	}
}

// background runs fn, bounded by 10 minutes, until it returns or the
// Queue shuts down; Shutdown waits for it.
func (q *Queue) background(ctx context.Context, fn func(ctx context.Context)) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.bg.Add(1)
	quit := q.quit
	q.mu.Unlock()
	go func() {
		defer q.bg.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
		defer cancel()
		go func() {
			select {
			case <-quit:
				cancel()
			case <-ctx.Done():
			}
		}()
		fn(ctx)
	}()
}

// MessageCreate implements Handler.MessageCreate with Store.Begin.
func (q *Queue) MessageCreate(ctx context.Context) (uint32, error) {
	tx, err := q.s.Begin(ctx)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		// Serve has answered (or is answering) temp-fail: smtpd will never
		// name this msgid.
		q.background(ctx, func(ctx context.Context) { tx.Rollback(ctx) })
		return 0, err
	}
	if q.opts.Shared {
		// Before the envelope is written: it carries the claim.
		tx.ClaimOnCommit(q.opts.Lease)
	}
	q.mu.Lock()
	q.txs[uint32(tx.ID())] = &openTx{tx: tx, created: time.Now()}
	q.mu.Unlock()
	return uint32(tx.ID()), nil
}

func (q *Queue) openTx(msgid uint32) *openTx {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.txs[msgid]
}

func (q *Queue) takeTx(msgid uint32) *openTx {
	q.mu.Lock()
	defer q.mu.Unlock()
	t := q.txs[msgid]
	delete(q.txs, msgid)
	return t
}

// MessageDelete implements Handler.MessageDelete: it rolls the
// transaction back. A msgid that is not open (already rolled back after a
// failed commit) is not an error.
func (q *Queue) MessageDelete(ctx context.Context, msgid uint32) error {
	t := q.takeTx(msgid)
	if t == nil {
		return nil
	}
	err := t.tx.Rollback(ctx)
	if err != nil && !errors.Is(err, queue.ErrClosed) {
		return fmt.Errorf("rollback %08x (the sweep will remove it): %w", msgid, err)
	}
	q.log.Debug("mxq: rolled back", "msgid", fmt.Sprintf("%08x", msgid))
	return nil
}

// commitBudget splits the deadline of a MESSAGE_COMMIT: the commit gets
// most of it, and a reserve is kept to roll back a commit that failed or
// ran out of time, so that the call returns, with the message either
// committed or rolled back, before Serve gives up on it. A little is kept
// back from the rollback too.
func commitBudget(ctx context.Context) (commit, rollback time.Time, ok bool) {
	d, ok := ctx.Deadline()
	if !ok {
		return d, d, false
	}
	left := time.Until(d)
	return d.Add(-min(left/4, 3*time.Second)), d.Add(-min(left/20, 250*time.Millisecond)), true
}

// MessageCommit implements Handler.MessageCommit.
func (q *Queue) MessageCommit(ctx context.Context, msgid uint32, f *os.File) error {
	t := q.openTx(msgid)
	if t == nil {
		return fmt.Errorf("commit %08x: no such open message", msgid)
	}
	// The walk must never return these envelopes: smtpd schedules them
	// from this commit. Marked before they become visible.
	q.markLocal(t.tx.Envelopes()...)
	wctx, rctx := ctx, ctx
	if cd, rd, ok := commitBudget(ctx); ok {
		var cancel, rcancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, cd)
		defer cancel()
		rctx, rcancel = context.WithDeadline(ctx, rd)
		defer rcancel()
	}
	_, err := t.tx.CommitContent(wctx, f)
	q.takeTx(msgid)
	if err == nil {
		q.log.Debug("mxq: committed", "msgid", fmt.Sprintf("%08x", msgid), "envelopes", len(t.tx.Envelopes()))
		return nil
	}
	// Failed, or ambiguous after a timeout: roll back, so that the message
	// is gone whether or not the commit landed. smtpd rolls back too and
	// tells its client to retry.
	if rerr := t.tx.Rollback(rctx); rerr != nil && !errors.Is(rerr, queue.ErrClosed) {
		q.log.Warn("mxq: rollback after a failed commit failed; retrying in the background", "msgid", fmt.Sprintf("%08x", msgid), "err", rerr)
		q.background(ctx, func(ctx context.Context) { q.removeMessage(ctx, queue.MsgID(msgid)) })
	}
	return err
}

// removeMessage deletes a message that smtpd does not know, retrying
// until it succeeds or ctx ends.
func (q *Queue) removeMessage(ctx context.Context, m queue.MsgID) {
	delay := time.Second
	for {
		err := q.s.DeleteMessage(ctx, m)
		if err == nil {
			q.log.Info("mxq: removed the message of a failed commit", "msgid", m.String())
			return
		}
		select {
		case <-ctx.Done():
			q.log.Warn("mxq: could not remove the message of a failed commit; it may be delivered on the next start", "msgid", m.String(), "err", err)
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
}

// MessageFdR implements Handler.MessageFdR.
func (q *Queue) MessageFdR(ctx context.Context, msgid uint32) (*os.File, error) {
	m := queue.MsgID(msgid)
	rc, err := q.s.OpenContent(ctx, m)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	f, err := os.CreateTemp(q.opts.TempDir, "mxq-body-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	_, err = io.Copy(f, driver.ContextReader(ctx, rc))
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, queue.ErrCorrupt) {
			q.log.Error("mxq: message body is corrupt; quarantining it", "msgid", m.String(), "err", err)
			if qerr := q.s.Quarantine(ctx, m, err.Error()); qerr != nil {
				q.log.Warn("mxq: quarantine failed", "msgid", m.String(), "err", qerr)
			}
		}
		return nil, err
	}
	return f, nil
}

// EnvelopeCreate implements Handler.EnvelopeCreate.
func (q *Queue) EnvelopeCreate(ctx context.Context, msgid uint32, data []byte) (uint64, error) {
	if t := q.openTx(msgid); t != nil {
		// No Prepare: smtpd does not tell the message's size here, and
		// a message of one envelope and small content commits as one
		// object, the envelope with the content in it, which is as
		// quick as the content written after a prepared envelope and
		// half the writes.
		id, err := t.tx.AddEnvelope(data)
		return uint64(id), err
	}
	id, err := q.s.AddEnvelope(ctx, queue.MsgID(msgid), data)
	if err != nil {
		return 0, err
	}
	q.markLocal(id)
	if q.opts.Shared {
		// Unclaimed, no node would ever schedule it.
		if _, err := q.s.Claim(ctx, id, q.opts.Lease); err != nil {
			q.s.DeleteEnvelope(context.WithoutCancel(ctx), id)
			return 0, err
		}
	}
	return uint64(id), nil
}

// EnvelopeDelete implements Handler.EnvelopeDelete.
func (q *Queue) EnvelopeDelete(ctx context.Context, evpid uint64) error {
	id := queue.EvpID(evpid)
	q.cache.drop(id)
	if !q.opts.Shared {
		return q.s.DeleteEnvelope(ctx, id)
	}
	c, err := q.s.Resume(ctx, id)
	if err == nil {
		err = c.Delete(ctx)
	}
	switch {
	case errors.Is(err, queue.ErrNotFound):
		return nil
	case errors.Is(err, queue.ErrLeaseLost):
		// Another node took it over, believing this one dead; it
		// schedules it now, so it may be delivered twice.
		q.log.Warn("mxq: envelope taken over by another node; leaving it to that node", "evpid", id.String(), "err", err)
		return nil
	}
	return err
}

// EnvelopeLoad implements Handler.EnvelopeLoad.
func (q *Queue) EnvelopeLoad(ctx context.Context, evpid uint64) ([]byte, error) {
	e, err := q.s.Load(ctx, queue.EvpID(evpid))
	if err != nil {
		return nil, err
	}
	q.cache.put(e)
	return e.Data, nil
}

// EnvelopeUpdate implements Handler.EnvelopeUpdate: a compare-and-swap
// against the version last seen, retried once after reloading. smtpd is
// the only writer of its envelopes, so a conflict means the cached
// version was stale, not that someone else's change is lost.
func (q *Queue) EnvelopeUpdate(ctx context.Context, evpid uint64, data []byte) error {
	id := queue.EvpID(evpid)
	if q.opts.Shared {
		c, err := q.s.Resume(ctx, id)
		if err != nil {
			return err
		}
		return c.Update(ctx, data)
	}
	e := q.cache.get(id)
	var err error
	for attempt := 0; ; attempt++ {
		if e == nil {
			if e, err = q.s.Load(ctx, id); err != nil {
				q.cache.drop(id)
				return err
			}
		}
		e.Data = data
		err = q.s.Update(ctx, e)
		if err == nil {
			q.cache.put(e)
			return nil
		}
		q.cache.drop(id)
		if attempt > 0 || !errors.Is(err, queue.ErrConflict) {
			return err
		}
		e = nil
	}
}
