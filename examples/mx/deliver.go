package main

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/mxqueue/mxq/queue"
	"github.com/prometheus/client_golang/prometheus"
)

// run is the delivery loop. A dispatcher asks the queue for due envelopes,
// claims them one message at a time, and hands each message to one of
// --workers goroutines, which delivers it. It returns when ctx is done and
// the deliveries in flight have ended; dctx, cancelled at the shutdown
// deadline, cuts those short.
func (mx *MX) run(ctx, dctx context.Context) {
	jobs := make(chan []*queue.Claim) // unbuffered: one message claimed ahead at most
	var wg sync.WaitGroup
	for range mx.cfg.Workers {
		wg.Go(func() {
			for claims := range jobs {
				mx.deliver(dctx, claims)
			}
		})
	}
	defer wg.Wait()
	defer close(jobs)
	for ctx.Err() == nil {
		// Due and not held by anyone, in random order so that instances
		// asking at once spread over the work. No scheduler, no lock.
		due, err := mx.q.Due(ctx, 4*mx.cfg.Workers)
		if err != nil && ctx.Err() == nil {
			mx.log.Warn("due", "err", err)
		}
		if len(due) == 0 {
			sleep(ctx, mx.cfg.Poll/2+rand.N(mx.cfg.Poll)) // idle: poll, with jitter
			continue
		}
		for _, msg := range byMessage(due) {
			claims := mx.claim(ctx, msg)
			if len(claims) == 0 {
				continue
			}
			select {
			case jobs <- claims:
			case <-ctx.Done():
				mx.release(claims)
				return
			}
		}
	}
}

// claim takes the lease on each envelope: one conditional write each.
// Claimed, an envelope is no longer due for anyone, this dispatcher
// included. An envelope that another instance claimed first (ErrConflict)
// or finished (ErrNotFound) is skipped: it is in good hands.
func (mx *MX) claim(ctx context.Context, due []*queue.Envelope) []*queue.Claim {
	var claims []*queue.Claim
	for _, e := range due {
		c, err := mx.q.ClaimEnvelope(ctx, e, 0)
		switch {
		case err == nil:
			claims = append(claims, c)
		case errors.Is(err, queue.ErrConflict), errors.Is(err, queue.ErrNotFound), ctx.Err() != nil:
		default:
			mx.log.Warn("claim", "evp", e.ID, "err", err)
		}
	}
	return claims
}

// release gives claims back untouched, due at once for any instance.
func (mx *MX) release(claims []*queue.Claim) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range claims {
		if err := c.Release(ctx); err != nil {
			mx.log.Warn("release", "evp", c.Envelope().ID, "err", err)
		}
	}
}

// A rcpt is one claimed envelope in a delivery attempt.
type rcpt struct {
	c   *queue.Claim
	e   envelope
	err error // the relay's answer: nil for 250
}

// deliver makes one attempt to deliver the claimed envelopes of one
// message, in one SMTP transaction with the relay, and settles each:
//
//	250                  Delete; the last envelope takes the content along
//	shutting down        Release: due at once for the other instances
//	5xx, or expired      a DSN to the sender is queued, then Delete
//	4xx, network, store  Defer: the attempt is recorded, due after a backoff
//
// Every write through a Claim is fenced: ErrLeaseLost means that another
// instance took the envelope over (it thought this one dead) and that it
// is theirs now.
func (mx *MX) deliver(ctx context.Context, claims []*queue.Claim) {
	m := claims[0].Envelope().ID.MsgID()
	rs := make([]*rcpt, len(claims))
	for i, c := range claims {
		e, err := decodeEnvelope(c.Envelope().Data)
		if err != nil {
			mx.quarantine(ctx, m, "envelope does not parse: "+err.Error())
			return
		}
		rs[i] = &rcpt{c: c, e: e}
	}
	// The attempt must end while the claims hold: past its lease, another
	// instance may claim an envelope and deliver it again.
	sctx, cancel := context.WithDeadline(ctx, claims[0].Lease().Expires.Add(-mx.cfg.Lease/10))
	mx.send(sctx, m, rs)
	cancel()
	if i := slices.IndexFunc(rs, func(r *rcpt) bool { return errors.Is(r.err, queue.ErrCorrupt) }); i >= 0 {
		mx.quarantine(ctx, m, rs[i].err.Error()) // the content failed its checksum
		return
	}
	// The outcome must reach the queue even if ctx was cut short: an
	// envelope delivered but not deleted would be delivered again.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	var failed []*rcpt
	for _, r := range rs {
		switch {
		case r.err == nil:
			mx.settle(r, "delivered", r.c.Delete(qctx))
		case ctx.Err() != nil:
			mx.settle(r, "released", r.c.Release(qctx))
		case permanent(r.err) || time.Since(r.e.Received) > mx.cfg.Expire:
			failed = append(failed, r)
		default:
			mx.deferRcpt(qctx, r)
		}
	}
	if len(failed) > 0 {
		mx.bounce(qctx, m, failed)
	}
}

// deferRcpt records the failed attempt in the envelope and makes it due
// again after the backoff: one conditional write, which releases the lease.
func (mx *MX) deferRcpt(ctx context.Context, r *rcpt) {
	r.e.Attempts++
	r.e.LastTry, r.e.LastError = time.Now().UTC(), r.err.Error()
	due := r.e.LastTry.Add(mx.backoff(r.e.Attempts))
	mx.settle(r, "deferred", r.c.Defer(ctx, r.e.encode(), due), "retry", due.Format(time.RFC3339))
}

// backoff is the wait after n failed attempts: --retry-min, doubled for
// each further attempt up to --retry-max, plus up to half again at random
// so that mail deferred together does not come back together.
func (mx *MX) backoff(n int) time.Duration {
	d := mx.cfg.RetryMin
	for i := 1; i < n && d < mx.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, mx.cfg.RetryMax)
	return d + rand.N(d/2+1)
}

// permanent reports a 5xx reply. Everything else, a 4xx, a network error,
// an unreachable store, is worth another attempt.
func permanent(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code >= 500
}

// send makes one SMTP transaction with the relay for the recipients of
// message m, and sets each rcpt's err to the answer for it. A failure
// before RCPT, or of DATA, is the answer for every recipient accepted so
// far. Closing the connection before the final dot makes the relay discard
// what it got: that is how a shutdown or a corrupt content aborts.
func (mx *MX) send(ctx context.Context, m queue.MsgID, rs []*rcpt) {
	fail := func(err error) {
		for _, r := range rs {
			if r.err == nil {
				r.err = err
			}
		}
	}
	content, err := mx.q.OpenContent(ctx, m) // verifies the checksum as it reads
	if err != nil {
		fail(err)
		return
	}
	defer content.Close()
	mx.m.inflight.Inc()
	defer mx.m.inflight.Dec()
	defer prometheus.NewTimer(mx.m.attempt).ObserveDuration()
	conn, err := (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, "tcp", mx.cfg.Relay)
	if err != nil {
		fail(err)
		return
	}
	defer context.AfterFunc(ctx, func() { conn.Close() })()
	c := smtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = 5*time.Minute, 10*time.Minute // RFC 5321 4.5.3.2
	if err := c.Hello(mx.cfg.Hostname); err != nil {
		fail(err)
		return
	}
	if err := c.Mail(rs[0].e.From, nil); err != nil {
		fail(err)
		return
	}
	accepted := 0
	for _, r := range rs { // all recipients of the message in one transaction
		if r.err = c.Rcpt(r.e.To, nil); r.err == nil {
			accepted++
		}
	}
	if accepted == 0 {
		c.Quit()
		return
	}
	w, err := c.Data()
	if err != nil {
		fail(err)
		return
	}
	if _, err := io.Copy(w, content); err != nil {
		fail(err)
		return
	}
	if err := w.Close(); err != nil { // the final dot, and the relay's answer
		fail(err)
		return
	}
	c.Quit()
}

// settle counts and logs what became of one envelope.
func (mx *MX) settle(r *rcpt, result string, err error, attrs ...any) {
	id := r.c.Envelope().ID
	switch {
	case errors.Is(err, queue.ErrLeaseLost):
		// Taken over while this instance delivered: the other instance
		// delivers it, so the recipient may get it twice (SMTP is
		// at-least-once), but the queue stays consistent.
		mx.log.Warn("lease lost", "evp", id, "to", r.e.To, "err", err)
		result = "lost"
	case err != nil:
		mx.log.Error(result, "evp", id, "to", r.e.To, "err", err)
		result = "error"
	default:
		mx.log.Info(result, append([]any{"evp", id, "to", r.e.To, "attempts", r.e.Attempts, "reply", r.err}, attrs...)...)
	}
	mx.m.settled.WithLabelValues(result).Inc()
}

// quarantine moves a message the MX cannot deliver aside, where an
// operator finds it with "mxq quarantine".
func (mx *MX) quarantine(ctx context.Context, m queue.MsgID, reason string) {
	err := mx.q.Quarantine(context.WithoutCancel(ctx), m, reason)
	mx.log.Error("quarantined", "msg", m, "reason", reason, "err", err)
}

// takeover gives the envelopes that RunNode took over from a dead instance
// back to the queue: released, they are due at once, and the dispatcher of
// whichever instance is free first delivers them like any other mail.
func (mx *MX) takeover(ctx context.Context, ids []queue.EvpID) {
	mx.m.takenOver.Add(float64(len(ids)))
	mx.log.Info("took over", "envelopes", len(ids))
	for _, id := range ids {
		c, err := mx.q.Resume(ctx, id)
		if err == nil {
			err = c.Release(ctx)
		}
		if err != nil && !errors.Is(err, queue.ErrLeaseLost) && !errors.Is(err, queue.ErrNotFound) {
			mx.log.Warn("release", "evp", id, "err", err)
		}
	}
}

// reclaim does the same for the envelopes this node held when its previous
// process died: Owned claims them again for this process. It runs before
// the delivery loop starts, which would otherwise hold some of them.
func (mx *MX) reclaim(ctx context.Context) error {
	var ids []queue.EvpID
	for id, err := range mx.q.Owned(ctx) {
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if len(ids) > 0 {
		mx.takeover(ctx, ids)
	}
	return nil
}

// byMessage groups envelopes by message, keeping their order.
func byMessage(es []*queue.Envelope) [][]*queue.Envelope {
	var out [][]*queue.Envelope
	at := make(map[queue.MsgID]int)
	for _, e := range es {
		m := e.ID.MsgID()
		i, ok := at[m]
		if !ok {
			i = len(out)
			at[m] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], e)
	}
	return out
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
