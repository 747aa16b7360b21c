package rest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// commitTimeout bounds a commit or rollback, which goes on when the client
// disconnects: a commit that has started finishes or fails as a whole.
const commitTimeout = 2 * time.Minute

// openTx is a transaction of the queue layer, between begin and commit or
// rollback.
type openTx struct {
	id    queue.MsgID
	tx    *queue.Tx
	mu    sync.Mutex // serialises the requests on tx
	busy  int        // requests holding or waiting for mu; guarded by Handler.mu
	last  time.Time  // end of the last request; guarded by Handler.mu
	timer *time.Timer
}

func msgID(r *http.Request) (queue.MsgID, error) {
	s := r.PathValue("msgid")
	m, err := queue.ParseMsgID(s)
	if err != nil {
		return 0, errf(CodeInvalid, "%v", err)
	}
	if m.String() != s {
		return 0, errf(CodeInvalid, "message ID %q: want 8 lower-case hex digits", s)
	}
	return m, nil
}

func evpID(r *http.Request) (queue.EvpID, error) {
	s := r.PathValue("evpid")
	e, err := queue.ParseEvpID(s)
	if err != nil {
		return 0, errf(CodeInvalid, "%v", err)
	}
	if e.String() != s {
		return 0, errf(CodeInvalid, "envelope ID %q: want 16 lower-case hex digits", s)
	}
	return e, nil
}

// acquire returns the open transaction m, locked for this request, or nil.
func (h *Handler) acquire(m queue.MsgID) *openTx {
	h.mu.Lock()
	e := h.txs[m]
	if e == nil {
		h.mu.Unlock()
		return nil
	}
	e.busy++
	h.mu.Unlock()
	e.mu.Lock()
	h.mu.Lock()
	still := h.txs[m] == e
	h.mu.Unlock()
	if !still { // committed or rolled back while we waited
		h.release(e, false)
		return nil
	}
	return e
}

// release unlocks e; with done set, it forgets the transaction.
func (h *Handler) release(e *openTx, done bool) {
	e.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	e.busy--
	e.last = time.Now()
	if h.txs[e.id] != e {
		return
	}
	if done {
		delete(h.txs, e.id)
		e.timer.Stop()
		h.m.openTx.Dec()
		return
	}
	e.timer.Reset(h.opts.TxIdleTimeout)
}

// expire rolls back e if it has been idle for TxIdleTimeout.
func (h *Handler) expire(e *openTx) {
	h.mu.Lock()
	if h.txs[e.id] != e {
		h.mu.Unlock()
		return
	}
	if idle := time.Since(e.last); e.busy > 0 || idle < h.opts.TxIdleTimeout {
		e.timer.Reset(h.opts.TxIdleTimeout - min(idle, h.opts.TxIdleTimeout) + time.Millisecond)
		h.mu.Unlock()
		return
	}
	delete(h.txs, e.id)
	h.mu.Unlock()
	h.m.openTx.Dec()
	// A timer has no caller whose context could bound the rollback.
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	e.mu.Lock()
	err := e.tx.Rollback(ctx)
	e.mu.Unlock()
	h.log.Info("rolled back idle transaction", "msgid", e.id.String(), "idle_timeout", h.opts.TxIdleTimeout, "err", err)
}

func noTx(m queue.MsgID) error {
	return errf(CodeNotFound, "no open transaction %s: it was committed, rolled back, expired, or never begun here", m)
}

func (h *Handler) begin(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	h.mu.Lock()
	closing := h.closing
	h.mu.Unlock()
	if closing {
		return errf(CodeClosed, "the server is shutting down")
	}
	tx, err := h.st.Begin(r.Context())
	if err != nil {
		return err
	}
	e := &openTx{id: tx.ID(), tx: tx, last: time.Now()}
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		tx.Rollback(context.WithoutCancel(r.Context()))
		return errf(CodeClosed, "the server is shutting down")
	}
	h.txs[e.id] = e
	e.timer = time.AfterFunc(h.opts.TxIdleTimeout, func() { h.expire(e) })
	h.mu.Unlock()
	h.m.openTx.Inc()
	w.Header().Set("Location", "/v1/messages/"+e.id.String())
	return writeJSON(w, http.StatusCreated, map[string]any{"msgid": e.id})
}

// readSmall reads a body of at most max bytes.
func readSmall(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	b, err := limitBody(w, r, max)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(b)
	if err := b.check(); err != nil {
		return nil, err
	}
	return data, err
}

func (h *Handler) addEnvelope(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	data, err := readSmall(w, r, h.opts.MaxEnvelopeSize)
	if err != nil {
		return err
	}
	var id queue.EvpID
	if e := h.acquire(m); e != nil {
		id, err = e.tx.AddEnvelope(data)
		h.release(e, false)
	} else {
		// Not an open transaction here: add to the committed message,
		// as OpenSMTPD does for bounces.
		id, err = h.st.AddEnvelope(r.Context(), m, data)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, map[string]any{"evpid": id})
}

func (h *Handler) writeContent(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	e := h.acquire(m)
	if e == nil {
		return noTx(m)
	}
	defer h.release(e, false)
	b, err := limitBody(w, r, h.opts.MaxBodySize)
	if err != nil {
		return err
	}
	n, err := e.tx.WriteContent(r.Context(), b)
	if err := b.check(); err != nil {
		return err
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"msgid": m, "size": n})
}

func (h *Handler) commit(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	e := h.acquire(m)
	if e == nil {
		return noTx(m)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), commitTimeout)
	defer cancel()
	err = e.tx.Commit(ctx)
	// A commit refused for a bad argument (no envelope) can be retried;
	// after any other outcome the transaction is over. One that failed
	// half-way stays invisible and Sweep aborts it after its grace period.
	h.release(e, !errors.Is(err, queue.ErrInvalid))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"msgid": m, "envelopes": nonNil(e.tx.Envelopes())})
}

func (h *Handler) rollback(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	e := h.acquire(m)
	if e == nil {
		return noTx(m)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), commitTimeout)
	defer cancel()
	err = e.tx.Rollback(ctx)
	h.release(e, true)
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (h *Handler) envelopes(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	ids, err := h.st.Envelopes(r.Context(), m)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"msgid": m, "envelopes": nonNil(ids)})
}

func (h *Handler) openContent(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	rc, err := h.st.OpenContent(r.Context(), m)
	if err != nil {
		return err
	}
	defer rc.Close()
	return stream(w, rc)
}

// stream copies rc to w. The length is not known up front, so the body is
// chunked; when rc fails (a checksum mismatch shows at the end), the
// handler aborts and the client sees an incomplete body, not a clean end.
func stream(w http.ResponseWriter, rc io.Reader) error {
	w.Header().Set("Content-Type", "application/octet-stream")
	buf := make([]byte, 32<<10)
	n, err := driver.ReadFull(rc, buf)
	switch {
	case err == io.EOF:
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.WriteHeader(http.StatusOK)
		_, err = w.Write(buf[:n])
		return err
	case err != nil:
		return err // nothing sent yet: a JSON error
	}
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	_, err = io.CopyBuffer(w, rc, buf)
	return err
}

func (h *Handler) deleteMessage(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	if err := h.st.DeleteMessage(r.Context(), m); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// Lease and schedule headers of GET /v1/envelopes/{evpid}.
const (
	HeaderLeaseHolder  = "Mxq-Lease-Holder"
	HeaderLeaseToken   = "Mxq-Lease-Token"
	HeaderLeaseExpires = "Mxq-Lease-Expires"
	HeaderDue          = "Mxq-Due"
)

func (h *Handler) load(w http.ResponseWriter, r *http.Request) error {
	id, err := evpID(r)
	if err != nil {
		return err
	}
	e, err := h.st.Load(r.Context(), id)
	if err != nil {
		return err
	}
	hd := w.Header()
	hd.Set("ETag", ETag(e.Version))
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Content-Length", strconv.Itoa(len(e.Data)))
	if e.Lease.Holder != "" {
		hd.Set(HeaderLeaseHolder, e.Lease.Holder)
		hd.Set(HeaderLeaseToken, strconv.FormatUint(e.Lease.Token, 10))
		hd.Set(HeaderLeaseExpires, e.Lease.Expires.UTC().Format(time.RFC3339Nano))
	}
	if !e.Due.IsZero() {
		hd.Set(HeaderDue, e.Due.UTC().Format(time.RFC3339))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, err = w.Write(e.Data)
	}
	return err
}

func (h *Handler) update(w http.ResponseWriter, r *http.Request) error {
	id, err := evpID(r)
	if err != nil {
		return err
	}
	im := r.Header.Get("If-Match")
	if im == "" {
		return &apiError{code: CodeInvalid, status: http.StatusPreconditionRequired,
			msg: "If-Match is required: send the ETag of GET /v1/envelopes/" + id.String()}
	}
	v, err := ParseETag(im)
	if err != nil {
		return err
	}
	data, err := readSmall(w, r, h.opts.MaxEnvelopeSize)
	if err != nil {
		return err
	}
	// The Store updates an envelope it has loaded, keeping its lease
	// and schedule. The compare-and-swap is on the client's version: if
	// the envelope changed after the load, Update fails.
	e, err := h.st.Load(r.Context(), id)
	if err != nil {
		return err
	}
	if e.Version != v {
		return errf(CodeConflict, "envelope %s is at version %s, not %s", id, ETag(e.Version), im)
	}
	// The Store refuses envelopes that other nodes lease; a claim made
	// through this server belongs to one of its clients, who writes
	// through PUT /v1/envelopes/{evpid}/leased.
	if _, err := h.st.ResumeEnvelope(e, e.Lease.Token); err == nil {
		return errf(CodeConflict, "envelope %s is held through this server (token %d) until %s; its holder writes through PUT /v1/envelopes/%s/leased",
			id, e.Lease.Token, e.Lease.Expires.UTC().Format(time.RFC3339), id)
	}
	e.Data = data
	if err := h.st.Update(r.Context(), e); err != nil {
		return err
	}
	w.Header().Set("ETag", ETag(e.Version))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) deleteEnvelope(w http.ResponseWriter, r *http.Request) error {
	id, err := evpID(r)
	if err != nil {
		return err
	}
	if err := h.st.DeleteEnvelope(r.Context(), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) walk(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "cursor", "limit")
	if err != nil {
		return err
	}
	limit := 1000
	if s, ok := q["limit"]; ok {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 1000 {
			return errf(CodeInvalid, "limit %q: want an integer from 1 to 1000", s)
		}
	}
	p, err := h.st.WalkPage(r.Context(), q["cursor"], limit)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"envelopes": nonNil(p.IDs), "cursor": p.Cursor})
}

func (h *Handler) sweep(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	st, err := h.st.Sweep(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]int{"aborted": st.Aborted, "removed": st.Removed, "open": st.Open, "corrupt": st.Corrupt})
}

func (h *Handler) quarantine(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	data, err := readSmall(w, r, 64<<10)
	if err != nil {
		return err
	}
	var req struct {
		Reason string `json:"reason"`
	}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &req); err != nil {
			return errf(CodeInvalid, "body: want {\"reason\":\"...\"}: %v", err)
		}
	}
	if err := h.st.Quarantine(r.Context(), m, req.Reason); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *Handler) quarantined(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	qs, err := h.st.Quarantined(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"messages": nonNil(qs)})
}

func (h *Handler) openQuarantined(w http.ResponseWriter, r *http.Request) error {
	m, err := msgID(r)
	if err != nil {
		return err
	}
	rc, err := h.st.OpenQuarantined(r.Context(), m)
	if err != nil {
		return err
	}
	defer rc.Close()
	return stream(w, rc)
}
