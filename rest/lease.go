package rest

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/mxqueue/mxq/queue"
)

// The shared-queue part of the queue layer: claims, fenced writes by the
// holder, and due work.
//
// The Handler's Store is one node of the queue (queue.Options.Node), and
// every claim made through it belongs to that node: other nodes see it
// held while this server heartbeats, and this server takes over the claims
// of dead nodes. The clients of one server share its node, so a client
// tells its claim from another client's by the lease token, and every
// write of the holder names the version it last saw (If-Match) and the
// token (Mxq-Lease-Token). The token is an identity, not a secret: GET
// /v1/envelopes shows it to anyone with the bearer token.

// maxLease bounds the lease duration a client may ask for.
const maxLease = 24 * time.Hour

// leaseParam parses the optional query parameter lease (a Go duration);
// 0 means the Store's default.
func leaseParam(q map[string]string) (time.Duration, error) {
	s, ok := q["lease"]
	if !ok {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > maxLease {
		return 0, errf(CodeInvalid, "lease %q: want a duration from 1ns to %s, such as 90s or 5m", s, maxLease)
	}
	return d, nil
}

// leaseHeaders sets ETag and the lease and schedule headers of e.
func leaseHeaders(w http.ResponseWriter, e *queue.Envelope) {
	hd := w.Header()
	hd.Set("ETag", ETag(e.Version))
	if e.Lease.Holder != "" {
		hd.Set(HeaderLeaseHolder, e.Lease.Holder)
		hd.Set(HeaderLeaseToken, strconv.FormatUint(e.Lease.Token, 10))
		hd.Set(HeaderLeaseExpires, e.Lease.Expires.UTC().Format(time.RFC3339Nano))
	}
	if !e.Due.IsZero() {
		hd.Set(HeaderDue, e.Due.UTC().Format(time.RFC3339))
	}
}

// claim: POST /v1/envelopes/{evpid}/claim?lease=5m, with an optional
// If-Match (the version from GET /v1/due) to claim only that version.
func (h *Handler) claim(w http.ResponseWriter, r *http.Request) error {
	id, err := evpID(r)
	if err != nil {
		return err
	}
	q, err := query(r, "lease")
	if err != nil {
		return err
	}
	d, err := leaseParam(q)
	if err != nil {
		return err
	}
	var want queue.Version
	if im := r.Header.Get("If-Match"); im != "" {
		if want, err = ParseETag(im); err != nil {
			return err
		}
	}
	e, err := h.st.Load(r.Context(), id)
	if err != nil {
		return err
	}
	if want != "" && e.Version != want {
		return errf(CodeConflict, "envelope %s is at version %s, not %s", id, ETag(e.Version), ETag(want))
	}
	// The Store lets its node claim again what it holds; through the
	// server that node is shared, so a live claim of this server belongs
	// to another client and is a conflict like another node's.
	if _, err := h.st.ResumeEnvelope(e, e.Lease.Token); err == nil {
		return errf(CodeConflict, "envelope %s is held through this server (node %s, token %d) until %s",
			id, e.Lease.Holder, e.Lease.Token, e.Lease.Expires.UTC().Format(time.RFC3339))
	}
	c, err := h.st.ClaimEnvelope(r.Context(), e, d)
	if err != nil {
		return err
	}
	ce := c.Envelope()
	leaseHeaders(w, ce)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(ce.Data)))
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(ce.Data)
	return err
}

// held rebuilds the client's claim on the envelope of the request from
// If-Match and Mxq-Lease-Token. A claim that is no longer the client's is
// ErrLeaseLost; one that is, at another version than If-Match, is a
// conflict: the client reloads and retries.
func (h *Handler) held(r *http.Request, id queue.EvpID) (*queue.Claim, error) {
	im := r.Header.Get("If-Match")
	if im == "" {
		return nil, &apiError{code: CodeInvalid, status: http.StatusPreconditionRequired,
			msg: "If-Match is required: send the ETag of the claim or of your last write through it"}
	}
	v, err := ParseETag(im)
	if err != nil {
		return nil, err
	}
	ts := r.Header.Get(HeaderLeaseToken)
	if ts == "" {
		return nil, errf(CodeInvalid, "%s is required: send the token of the claim", HeaderLeaseToken)
	}
	tok, err := strconv.ParseUint(ts, 10, 64)
	if err != nil || tok == 0 {
		return nil, errf(CodeInvalid, "%s %q: want the positive integer of the claim", HeaderLeaseToken, ts)
	}
	e, err := h.st.Load(r.Context(), id)
	if errors.Is(err, queue.ErrNotFound) {
		return nil, errf(CodeLeaseLost, "envelope %s is gone", id)
	}
	if err != nil {
		return nil, err
	}
	c, err := h.st.ResumeEnvelope(e, tok)
	if err != nil {
		return nil, err
	}
	if e.Version != v {
		return nil, errf(CodeConflict, "envelope %s is at version %s, not %s; the claim is still yours: reload it", id, ETag(e.Version), im)
	}
	return c, nil
}

// leased runs fn on the client's claim of the envelope of the request.
func (h *Handler) leased(r *http.Request, fn func(id queue.EvpID, c *queue.Claim) error) error {
	id, err := evpID(r)
	if err != nil {
		return err
	}
	c, err := h.held(r, id)
	if err != nil {
		return err
	}
	return fn(id, c)
}

// renew: POST /v1/envelopes/{evpid}/renew?lease=5m.
func (h *Handler) renew(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "lease")
	if err != nil {
		return err
	}
	d, err := leaseParam(q)
	if err != nil {
		return err
	}
	return h.leased(r, func(id queue.EvpID, c *queue.Claim) error {
		if err := c.Renew(r.Context(), d); err != nil {
			return err
		}
		leaseHeaders(w, c.Envelope())
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// updateLeased: PUT /v1/envelopes/{evpid}/leased, the body is the new data.
func (h *Handler) updateLeased(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	return h.leased(r, func(id queue.EvpID, c *queue.Claim) error {
		data, err := readSmall(w, r, h.opts.MaxEnvelopeSize)
		if err != nil {
			return err
		}
		if err := c.Update(r.Context(), data); err != nil {
			return err
		}
		leaseHeaders(w, c.Envelope())
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// releaseLeased: POST /v1/envelopes/{evpid}/release.
func (h *Handler) releaseLeased(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	return h.leased(r, func(id queue.EvpID, c *queue.Claim) error {
		if err := c.Release(r.Context()); err != nil {
			return err
		}
		w.Header().Set("ETag", ETag(c.Envelope().Version))
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// deferLeased: POST /v1/envelopes/{evpid}/defer?due=RFC3339, with the new
// data as the body (empty: keep the data).
func (h *Handler) deferLeased(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "due")
	if err != nil {
		return err
	}
	s, ok := q["due"]
	if !ok {
		return errf(CodeInvalid, "due is required: the RFC 3339 time the envelope is due again, such as 2030-01-02T15:04:05Z")
	}
	due, err := time.Parse(time.RFC3339, s)
	if err != nil || due.Unix() <= 0 {
		return errf(CodeInvalid, "due %q: want an RFC 3339 time after 1970, such as 2030-01-02T15:04:05Z", s)
	}
	return h.leased(r, func(id queue.EvpID, c *queue.Claim) error {
		data, err := readSmall(w, r, h.opts.MaxEnvelopeSize)
		if err != nil {
			return err
		}
		if len(data) == 0 {
			data = nil // keep
		}
		if err := c.Defer(r.Context(), data, due); err != nil {
			return err
		}
		w.Header().Set("ETag", ETag(c.Envelope().Version))
		w.Header().Set(HeaderDue, due.UTC().Format(time.RFC3339))
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// deleteLeased: DELETE /v1/envelopes/{evpid}/leased.
func (h *Handler) deleteLeased(w http.ResponseWriter, r *http.Request) error {
	if _, err := query(r); err != nil {
		return err
	}
	return h.leased(r, func(id queue.EvpID, c *queue.Claim) error {
		if err := c.Delete(r.Context()); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// dueEnvelope is one envelope of GET /v1/due.
type dueEnvelope struct {
	ID      queue.EvpID `json:"evpid"`
	Version string      `json:"version"` // the ETag, quotes included
	Data    []byte      `json:"data"`    // base64
	Due     string      `json:"due,omitempty"`
}

// due: GET /v1/due?limit=N.
func (h *Handler) due(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r, "limit")
	if err != nil {
		return err
	}
	limit := 100
	if s, ok := q["limit"]; ok {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > 1000 {
			return errf(CodeInvalid, "limit %q: want an integer from 1 to 1000", s)
		}
	}
	es, err := h.st.Due(r.Context(), limit)
	if err != nil {
		return err
	}
	out := make([]dueEnvelope, 0, len(es))
	for _, e := range es {
		d := dueEnvelope{ID: e.ID, Version: ETag(e.Version), Data: nonNil(e.Data)}
		if !e.Due.IsZero() {
			d.Due = e.Due.UTC().Format(time.RFC3339)
		}
		out = append(out, d)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"envelopes": out})
}
