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
// the message is durable and any instance's Due finds it. The SMTP
// session does the same in steps: Begin and add at RCPT TO (and Prepare
// for a large message), commit after DATA.
func (mx *MX) enqueue(ctx context.Context, from string, rcpts []string, content func(queue.MsgID) io.Reader) (queue.MsgID, error) {
	tx, err := mx.q.Begin(ctx) // a message ID from the Store's block: no request
	if err != nil {
		return 0, err
	}
	now := time.Now().UTC()
	for _, to := range rcpts {
		if err := mx.add(tx, from, to, now); err != nil {
			mx.rollback(ctx, tx)
			return 0, err
		}
	}
	return mx.commit(ctx, tx, content)
}

// add adds the envelope of one recipient; no I/O.
func (mx *MX) add(tx *queue.Tx, from, to string, received time.Time) error {
	e := envelope{From: from, To: to, Received: received}
	_, err := tx.AddEnvelope(e.encode())
	return err
}

// commit streams the content to the store and commits the message:
// nothing of it is visible before this returns nil.
func (mx *MX) commit(ctx context.Context, tx *queue.Tx, content func(queue.MsgID) io.Reader) (queue.MsgID, error) {
	if _, err := tx.CommitContent(ctx, content(tx.ID())); err != nil {
		// Rollback removes what was written. It also tells a commit whose
		// answer was lost but which landed: it never undoes a committed
		// message, and says so with ErrConflict.
		if !errors.Is(mx.rollback(ctx, tx), queue.ErrConflict) {
			return 0, err
		}
	}
	mx.m.accepted.Inc()
	return tx.ID(), nil
}

// rollback abandons tx, with a minute of its own: the caller's context
// may be what ended.
func (mx *MX) rollback(ctx context.Context, tx *queue.Tx) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return tx.Rollback(rctx)
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

// session is one SMTP client's transaction. Its first accepted recipient
// begins a message in the queue (tx); Data commits it; RSET and the end of
// the session roll back one left open.
type session struct {
	mx   *MX
	conn *smtp.Conn
	from string
	size int64 // the SIZE the client declared, or 0
	to   []string
	tx   *queue.Tx
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.from, s.size = from, 0
	if opts != nil {
		s.size = opts.Size
	}
	return nil
}

// Rcpt accepts the recipients of --domains only: an MX that takes mail for
// anyone is an open relay. Each one accepted becomes an envelope.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	_, domain, _ := strings.Cut(to, "@")
	if len(s.mx.cfg.Domains) > 0 && !slices.Contains(s.mx.cfg.Domains, strings.ToLower(domain)) {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "relaying denied"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if s.tx == nil {
		tx, err := s.mx.q.Begin(ctx) // no request but once per 4,096 messages
		if err != nil {
			return s.unavailable(err)
		}
		s.tx = tx
	}
	if err := s.mx.add(s.tx, s.from, to, time.Now().UTC()); err != nil {
		return s.unavailable(err)
	}
	// A message larger than its envelope keeps (the SIZE the client
	// declared tells) sends its first envelope to the store now, in the
	// background, while the client sends the rest: it stays invisible
	// until the commit, which then writes the content (and the due
	// pointer) alone. A second recipient costs one write more, the
	// first's rewrite, and the commit of several takes two rounds. A
	// smaller message needs none of it: its commit is one object.
	if s.size > int64(s.mx.q.InlineContent()) {
		s.tx.Prepare(ctx)
	}
	s.to = append(s.to, to)
	return nil
}

// Reset rolls back a message left open (RSET, or a new MAIL FROM).
func (s *session) Reset() {
	if s.tx != nil {
		s.mx.rollback(context.Background(), s.tx)
	}
	s.from, s.size, s.to, s.tx = "", 0, nil, nil
}

func (s *session) Logout() error { s.Reset(); return nil }

// unavailable logs a failure of the store and answers 451.
func (s *session) unavailable(err error) error {
	s.mx.log.Error("queue", "from", s.from, "rcpts", len(s.to), "err", err)
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "queue unavailable, try again later"}
}

// Data queues the message and answers 250 only once it is committed. Any
// failure of the store is a 451: the client keeps the message and retries,
// so nothing is lost and nothing is accepted twice on purpose.
func (s *session) Data(r io.Reader) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ip, _, _ := net.SplitHostPort(s.conn.Conn().RemoteAddr().String())
	tx := s.tx
	s.tx = nil // committed or rolled back by commit, whatever happens
	if tx == nil {
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "no valid recipients"}
	}
	id, err := s.mx.commit(ctx, tx, func(id queue.MsgID) io.Reader {
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
		return s.unavailable(err)
	}
	s.mx.log.Info("queued", "msg", id, "from", s.from, "rcpts", len(s.to))
	return nil
}
