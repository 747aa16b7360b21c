package opensmtpd

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/mxqueue/mxq/queue"
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
	// queue. Envelopes are committed claimed by this node (Tx.Claim), the
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

// walkPoll bounds how long one ENVELOPE_WALK call waits for the store
// before it answers "skip" and lets smtpd ask again: the queue process is
// blocked meanwhile, so a slow store must not hold it for a whole OpTimeout.
const walkPoll = 250 * time.Millisecond

// walkAhead is how many envelopes the walk loads ahead, in parallel.
const walkAhead = 16

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
// and commits (Tx.WriteContent, Tx.Commit), replying 1 only once the
// message is durable; when that fails or runs out of time, the
// transaction is rolled back before the reply, so that a message smtpd
// was told failed never becomes visible. MESSAGE_DELETE rolls back.
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
	if q.opts.Shared {
		t.tx.Claim(q.opts.Lease)
	}
	wctx, rctx := ctx, ctx
	if cd, rd, ok := commitBudget(ctx); ok {
		var cancel, rcancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, cd)
		defer cancel()
		rctx, rcancel = context.WithDeadline(ctx, rd)
		defer rcancel()
	}
	_, err := t.tx.WriteContent(wctx, f)
	if err == nil {
		err = t.tx.Commit(wctx)
	}
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
	_, err = io.Copy(f, ctxReader{ctx, rc})
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

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// EnvelopeCreate implements Handler.EnvelopeCreate.
func (q *Queue) EnvelopeCreate(ctx context.Context, msgid uint32, data []byte) (uint64, error) {
	if t := q.openTx(msgid); t != nil {
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
	c, err := q.s.ClaimOf(ctx, id)
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
		c, err := q.s.ClaimOf(ctx, id)
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

func (q *Queue) markLocal(ids ...queue.EvpID) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.walkDone {
		return
	}
	for _, id := range ids {
		q.local[id] = true
	}
}

func (q *Queue) isLocal(id queue.EvpID) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.local[id]
}

// walker lists the snapshot in the background and loads envelopes ahead.
type walker struct {
	cancel context.CancelFunc
	out    chan *walkItem

	mu       sync.Mutex // serialises EnvelopeWalk calls that overlap after a timeout
	cur      *walkItem
	last     queue.EvpID          // the last evpid returned; the walk only goes up
	returned map[queue.EvpID]bool // in shared mode, whose walk is not in ID order
}

type walkItem struct {
	id       queue.EvpID
	res      chan loadResult
	resolved bool
	warned   bool
	env      *queue.Envelope
	err      error
}

type loadResult struct {
	env *queue.Envelope
	err error
}

func (q *Queue) walker(ctx context.Context) *walker {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.walkDone {
		return nil
	}
	if q.walk == nil {
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		w := &walker{cancel: cancel, out: make(chan *walkItem, 4*walkAhead), returned: make(map[queue.EvpID]bool)}
		q.walk = w
		q.bg.Add(1)
		go func() {
			defer q.bg.Done()
			if q.opts.Shared {
				q.listOwned(wctx, w)
			} else {
				q.list(wctx, w)
			}
		}()
	}
	return q.walk
}

// list feeds w.out with the committed envelopes in ID order, starting
// their loads, until the end of the listing (then it closes w.out) or ctx
// ends. Failed listings are retried with backoff.
func (q *Queue) list(ctx context.Context, w *walker) {
	sem := make(chan struct{}, walkAhead)
	cursor := ""
	delay := 100 * time.Millisecond
	failing := false
	for {
		lctx, cancel := context.WithTimeout(ctx, time.Minute)
		page, err := q.s.WalkPage(lctx, cursor, 1000)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !failing {
				q.log.Warn("mxq: walk: listing failed; retrying until the store answers", "err", err)
			}
			failing = true
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, 5*time.Second)
			continue
		}
		if failing {
			q.log.Info("mxq: walk: listing resumed")
		}
		failing, delay = false, 100*time.Millisecond
		for _, id := range page.IDs {
			if q.isLocal(id) {
				continue
			}
			if !q.push(ctx, w, sem, id) {
				return
			}
		}
		if page.Cursor == "" {
			close(w.out)
			return
		}
		cursor = page.Cursor
	}
}

// push starts loading id and queues it for EnvelopeWalk. It reports false
// when ctx ended.
func (q *Queue) push(ctx context.Context, w *walker, sem chan struct{}, id queue.EvpID) bool {
	it := &walkItem{id: id, res: make(chan loadResult, 1)}
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	go func() {
		defer func() { <-sem }()
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		e, err := q.s.Load(lctx, id)
		it.res <- loadResult{e, err}
	}()
	select {
	case w.out <- it:
		return true
	case <-ctx.Done():
		return false
	}
}

// listOwned is list for shared mode: the envelopes this node holds, which
// Store.Owned claims again for this process. A failed listing starts over;
// what was listed already is not listed twice.
func (q *Queue) listOwned(ctx context.Context, w *walker) {
	sem := make(chan struct{}, walkAhead)
	listed := make(map[queue.EvpID]bool)
	delay := 100 * time.Millisecond
	for {
		var failed error
		for id, err := range q.s.Owned(ctx) {
			if err != nil {
				failed = err
				break
			}
			if listed[id] || q.isLocal(id) {
				continue
			}
			listed[id] = true
			if !q.push(ctx, w, sem, id) {
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		if failed == nil {
			close(w.out)
			return
		}
		q.log.Warn("mxq: walk: listing this node's envelopes failed; starting over", "err", failed)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// takenOver is RunNode's OnTakeover: the envelopes are this node's now
// and go to smtpd through Discover once the start-up walk is over (an
// envelope discovered and then walked would be a duplicate).
func (q *Queue) takenOver(ids []queue.EvpID) {
	q.log.Info("mxq: took over envelopes of a dead node", "count", len(ids))
	q.markLocal(ids...)
	q.discoverMu.Lock()
	q.toDiscover = append(q.toDiscover, ids...)
	q.discoverMu.Unlock()
	select {
	case q.discoverCh <- struct{}{}:
	default:
	}
}

func (q *Queue) discoverLoop(ctx context.Context) {
	select {
	case <-q.walkOver:
	case <-ctx.Done():
		return
	}
	for {
		select {
		case <-q.discoverCh:
		case <-ctx.Done():
			return
		}
		q.discoverMu.Lock()
		ids := q.toDiscover
		q.toDiscover = nil
		q.discoverMu.Unlock()
		// Envelopes taken over while the walk ran may have been walked
		// too: smtpd has those already. Later takeovers cannot be.
		q.mu.Lock()
		walked := q.walked
		q.walked = nil
		q.mu.Unlock()
		if walked != nil {
			ids = slices.DeleteFunc(ids, func(id queue.EvpID) bool { return walked[id] })
		}
		q.handOver(ctx, ids)
	}
}

// handOver gives taken-over envelopes to smtpd. smtpd 6.8's scheduler
// accepts a discovered envelope only if it does not know its message yet
// (its query is by msgid), so of several envelopes of one message only the
// first discovered would ever be scheduled; and "discover <msgid>" crashes
// it. So the first envelope of each message is discovered as it is, and
// each other one is first moved into a message of its own (rehome).
//
// smtpd may know a message from earlier (the walk, an earlier hand-over, a
// commit): then every envelope of it still stored is held by this node,
// and not all of them can be in this batch. So the first envelope is
// discovered as it is only when the batch holds every stored envelope of
// its message; otherwise all of them are moved.
func (q *Queue) handOver(ctx context.Context, ids []queue.EvpID) {
	whole := make(map[queue.MsgID]bool)
	groups := make(map[queue.MsgID]int)
	for _, id := range ids {
		groups[id.MsgID()]++
	}
	for m, n := range groups {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		stored, err := q.s.Envelopes(lctx, m)
		cancel()
		whole[m] = err == nil && len(stored) == n
	}
	first := make(map[queue.MsgID]bool)
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		if whole[id.MsgID()] && !first[id.MsgID()] {
			first[id.MsgID()] = true
			q.discover(ctx, id)
			continue
		}
		nid, err := q.rehome(ctx, id)
		if err != nil {
			q.log.Error("mxq: could not move a taken-over envelope into a message of its own; it waits for the next restart", "evpid", id.String(), "err", err)
			continue
		}
		q.log.Info("mxq: moved a taken-over envelope into a message of its own", "evpid", id.String(), "new", nid.String())
		q.discover(ctx, nid)
	}
}

// rehome copies the envelope id, which this node holds, with its
// message's content into a new message claimed by this node, then deletes
// the original: a crash in between leaves both, never neither.
func (q *Queue) rehome(ctx context.Context, id queue.EvpID) (queue.EvpID, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := q.s.ClaimOf(ctx, id)
	if err != nil {
		return 0, err
	}
	rc, err := q.s.OpenContent(ctx, id.MsgID())
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	tx, err := q.s.Begin(ctx)
	if err != nil {
		return 0, err
	}
	nid, err := tx.AddEnvelope(c.Envelope().Data)
	if err == nil {
		tx.Claim(q.opts.Lease)
		q.markLocal(nid)
		if _, err = tx.WriteContent(ctx, rc); err == nil {
			err = tx.Commit(ctx)
		}
	}
	if err != nil {
		tx.Rollback(context.WithoutCancel(ctx))
		return 0, err
	}
	if err := c.Delete(ctx); err != nil && !errors.Is(err, queue.ErrNotFound) {
		q.log.Warn("mxq: the original of a moved envelope could not be deleted; it may be delivered twice", "evpid", id.String(), "err", err)
	}
	return nid, nil
}

// discover hands one envelope to smtpd, retrying a few times. One that
// cannot be handed over stays claimed by this node: smtpd's next start-up
// walk finds it.
func (q *Queue) discover(ctx context.Context, id queue.EvpID) {
	if q.opts.Discover == nil {
		q.log.Error("mxq: no Discover function: a taken-over envelope waits for the next restart", "evpid", id.String())
		return
	}
	delay := time.Second
	for attempt := 1; ; attempt++ {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := q.opts.Discover(dctx, id)
		cancel()
		if err == nil {
			q.log.Info("mxq: handed a taken-over envelope to smtpd", "evpid", id.String())
			return
		}
		if attempt == 5 || ctx.Err() != nil {
			q.log.Error("mxq: discover failed; the envelope waits for the next restart", "evpid", id.String(), "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// EnvelopeWalk implements Handler.EnvelopeWalk. It never ends the walk
// early: while the store is unavailable it answers "skip" within walkPoll
// and smtpd asks again.
func (q *Queue) EnvelopeWalk(ctx context.Context) (uint64, []byte, error) {
	w := q.walker(ctx)
	if w == nil {
		return 0, nil, io.EOF
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	deadline := time.Now().Add(walkPoll)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d.Add(-time.Until(d) / 4)
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		if w.cur == nil {
			select {
			case it, ok := <-w.out:
				if !ok {
					q.finishWalk()
					return 0, nil, io.EOF
				}
				w.cur = it
			case <-timer.C:
				return 0, nil, ErrSkip
			case <-ctx.Done():
				return 0, nil, ErrSkip
			}
		}
		it := w.cur
		if !it.resolved {
			select {
			case r := <-it.res:
				it.env, it.err, it.resolved = r.env, r.err, true
			case <-timer.C:
				return 0, nil, ErrSkip
			case <-ctx.Done():
				return 0, nil, ErrSkip
			}
		}
		if final := errors.Is(it.err, queue.ErrCorrupt) || errors.Is(it.err, queue.ErrInvalid); final {
			// It will never load: say so once and move on, rather than
			// hold up the rest of the walk for ever.
			q.log.Error("mxq: walk: an envelope record is unreadable; skipping it (quarantine or remove it with mxq)", "evpid", it.id.String(), "err", it.err)
			w.cur = nil
			continue
		}
		if it.err != nil && !errors.Is(it.err, queue.ErrNotFound) {
			// Transient: load again now, within this call's budget.
			lctx, cancel := context.WithDeadline(ctx, deadline)
			it.env, it.err = q.s.Load(lctx, it.id)
			cancel()
			if it.err != nil && !errors.Is(it.err, queue.ErrNotFound) && !errors.Is(it.err, queue.ErrCorrupt) && !errors.Is(it.err, queue.ErrInvalid) {
				if !it.warned {
					q.log.Warn("mxq: walk: load failed; retrying until the store answers", "evpid", it.id.String(), "err", it.err)
					it.warned = true
				}
				// Pace smtpd's immediate retry while the store fails fast.
				select {
				case <-timer.C:
				case <-ctx.Done():
				}
				return 0, nil, ErrSkip
			}
		}
		w.cur = nil
		if it.err != nil {
			if !errors.Is(it.err, queue.ErrNotFound) {
				q.log.Error("mxq: walk: an envelope record is unreadable; skipping it (quarantine or remove it with mxq)", "evpid", it.id.String(), "err", it.err)
			}
			continue // deleted since it was listed, or unreadable
		}
		// Never a duplicate: smtpd dies of one.
		if q.isLocal(it.id) {
			continue
		}
		if q.opts.Shared {
			if w.returned[it.id] {
				continue
			}
			w.returned[it.id] = true
		} else {
			if it.id <= w.last {
				continue
			}
			w.last = it.id
		}
		q.cache.put(it.env)
		return uint64(it.id), it.env.Data, nil
	}
}

// finishWalk forgets what the walk needed: it happens once per process.
// EnvelopeWalk calls it holding the walker's lock.
func (q *Queue) finishWalk() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.walkDone {
		close(q.walkOver)
	}
	q.walkDone = true
	q.local = nil
	if q.walk != nil {
		q.walk.cancel()
		q.walked = q.walk.returned // the caller holds q.walk.mu
	}
}

// envCache is a bounded LRU of envelopes with their stored versions.
type envCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[queue.EvpID]*list.Element
}

func (c *envCache) init(max int) {
	c.max = max
	c.ll = list.New()
	c.m = make(map[queue.EvpID]*list.Element)
}

// get returns a copy of the cached envelope, or nil.
func (c *envCache) get(id queue.EvpID) *queue.Envelope {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[id]
	if !ok {
		return nil
	}
	c.ll.MoveToFront(el)
	e := *el.Value.(*queue.Envelope)
	return &e
}

func (c *envCache) put(e *queue.Envelope) {
	if e == nil || e.Version == "" {
		return
	}
	cp := *e
	cp.Data = nil // the blob is not needed to update
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[e.ID]; ok {
		el.Value = &cp
		c.ll.MoveToFront(el)
		return
	}
	c.m[e.ID] = c.ll.PushFront(&cp)
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*queue.Envelope).ID)
	}
}

func (c *envCache) drop(id queue.EvpID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[id]; ok {
		c.ll.Remove(el)
		delete(c.m, id)
	}
}
