package opensmtpd

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/mxqueue/mxq/queue"
)

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
	c, err := q.s.Resume(ctx, id)
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
		tx.ClaimOnCommit(q.opts.Lease)
		q.markLocal(nid)
		_, err = tx.CommitContent(ctx, rc)
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
