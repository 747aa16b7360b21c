package opensmtpd

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/mxqueue/mxq/queue"
)

// walkPoll bounds how long one ENVELOPE_WALK call waits for the store
// before it answers "skip" and lets smtpd ask again: the queue process is
// blocked meanwhile, so a slow store must not hold it for a whole OpTimeout.
const walkPoll = 250 * time.Millisecond

// walkAhead is how many envelopes the walk loads ahead, in parallel.
const walkAhead = 16

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
