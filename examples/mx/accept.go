package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/mxqueue/mxq/queue"
	"github.com/prometheus/client_golang/prometheus"
)

// MX is one instance: an SMTP server that queues into q, and the
// delivery workers that empty it.
type MX struct {
	cfg config
	q   *queue.Store
	log *slog.Logger
	reg *prometheus.Registry
	m   metrics
}

func newMX(cfg config, q *queue.Store, log *slog.Logger) *MX {
	reg := prometheus.NewRegistry()
	return &MX{cfg: cfg, q: q, log: log, reg: reg, m: newMetrics(reg)}
}

// envelope is this MX's data in each mxq envelope: one recipient of a
// message and its delivery history. mxq stores it as opaque bytes.
type envelope struct {
	From      string    `json:"from"`                 // the reverse path; "" for a bounce
	To        string    `json:"to"`                   // the recipient
	Received  time.Time `json:"received"`             // when it was accepted: --expire counts from here
	Attempts  int       `json:"attempts,omitempty"`   // failed delivery attempts so far
	LastTry   time.Time `json:"last_try,omitzero"`    // when the last one ended
	LastError string    `json:"last_error,omitempty"` // what the relay said, for the bounce and for operators
}

func (e *envelope) encode() []byte { b, _ := json.Marshal(e); return b }

func decodeEnvelope(b []byte) (envelope, error) {
	var e envelope
	err := json.Unmarshal(b, &e)
	return e, err
}

// enqueue commits one message with one envelope per recipient and the
// content that content returns for the message's ID. When it returns nil,
// the message is durable and any instance's Due finds it.
func (mx *MX) enqueue(ctx context.Context, from string, rcpts []string, content func(queue.MsgID) io.Reader) (queue.MsgID, error) {
	tx, err := mx.q.Begin(ctx) // a message ID from the Store's block: no request
	if err != nil {
		return 0, err
	}
	err = func() error {
		now := time.Now().UTC()
		for _, to := range rcpts {
			e := envelope{From: from, To: to, Received: now}
			if _, err := tx.AddEnvelope(e.encode()); err != nil { // no I/O yet
				return err
			}
		}
		// The content streams to the store, the envelopes beside it;
		// nothing of the message is visible before CommitContent
		// returns, and a message of one recipient needs no more round.
		_, err := tx.CommitContent(ctx, content(tx.ID()))
		return err
	}()
	if err != nil {
		// Rollback removes what was written. It also tells a commit whose
		// answer was lost but which landed: it never undoes a committed
		// message, and says so with ErrConflict.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if !errors.Is(tx.Rollback(rctx), queue.ErrConflict) {
			return 0, err
		}
	}
	mx.m.accepted.Inc()
	return tx.ID(), nil
}

// smtpServer is the accepting side, on emersion/go-smtp.
func (mx *MX) smtpServer() *smtp.Server {
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{mx: mx, conn: c}, nil
	}))
	srv.Domain = mx.cfg.Hostname
	srv.MaxMessageBytes = mx.cfg.MaxSize
	srv.MaxRecipients = mx.cfg.MaxRcpts
	srv.ReadTimeout = 5 * time.Minute // RFC 5321 4.5.3.2
	srv.WriteTimeout = 5 * time.Minute
	srv.ErrorLog = slog.NewLogLogger(mx.log.Handler(), slog.LevelWarn)
	return srv
}

// session is one SMTP client's transaction. It collects the sender and the
// recipients; Data queues the message.
type session struct {
	mx   *MX
	conn *smtp.Conn
	from string
	to   []string
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error { s.from = from; return nil }

// Rcpt accepts the recipients of --domains only: an MX that takes mail for
// anyone is an open relay.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	_, domain, _ := strings.Cut(to, "@")
	if len(s.mx.cfg.Domains) > 0 && !slices.Contains(s.mx.cfg.Domains, strings.ToLower(domain)) {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "relaying denied"}
	}
	s.to = append(s.to, to)
	return nil
}
func (s *session) Reset()        { s.from, s.to = "", nil }
func (s *session) Logout() error { return nil }

// Data queues the message and answers 250 only once it is committed. Any
// failure of the store is a 451: the client keeps the message and retries,
// so nothing is lost and nothing is accepted twice on purpose.
func (s *session) Data(r io.Reader) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ip, _, _ := net.SplitHostPort(s.conn.Conn().RemoteAddr().String())
	id, err := s.mx.enqueue(ctx, s.from, s.to, func(id queue.MsgID) io.Reader {
		// A trace header on one line, then the message as the client sent it.
		received := fmt.Sprintf("Received: from %s ([%s]) by %s (mx on mxq) with ESMTP id %s; %s\r\n",
			s.conn.Hostname(), ip, s.mx.cfg.Hostname, id, time.Now().Format(time.RFC1123Z))
		return io.MultiReader(strings.NewReader(received), r)
	})
	if err != nil {
		var se *smtp.SMTPError
		switch {
		case errors.As(err, &se): // the reader's own, such as 552 too large
			return se
		case errors.Is(err, smtp.ErrTooLongLine): // a retry will not help
			return &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "line too long"}
		}
		s.mx.log.Error("queue", "from", s.from, "rcpts", len(s.to), "err", err)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "queue unavailable, try again later"}
	}
	s.mx.log.Info("queued", "msg", id, "from", s.from, "rcpts", len(s.to))
	return nil
}
