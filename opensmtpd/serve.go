package opensmtpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"
)

// DefaultOpTimeout is the per-request deadline Serve uses when
// ServeOptions.OpTimeout is zero.
const DefaultOpTimeout = 20 * time.Second

// ErrSkip may be returned by Handler.EnvelopeWalk to make smtpd skip the
// current position of the walk and ask again (reply r = 0).
var ErrSkip = errors.New("opensmtpd: skip walk entry")

// Handler implements the queue operations behind Serve.
//
// Serve calls one method at a time, in the order smtpd sends its requests.
// Every call gets a ctx with the per-request deadline (ServeOptions.OpTimeout)
// and methods must return promptly once it is done: when the deadline
// passes, Serve answers smtpd with the operation's failure value and moves
// on without waiting, so a method that ignores ctx may still be running
// when the next method is called, and whatever it does after the deadline
// is not reported to smtpd. Any error, and any panic, is answered with the
// failure value and logged; smtpd never sees a FAIL reply.
//
// Identifiers are chosen by the Handler: msgids are non-zero uint32 values
// and evpids non-zero uint64 values, by convention msgid<<32 | random.
// Envelope blobs are opaque bytes that may be binary; they must be stored
// and returned exactly, without an added NUL. Blobs passed in are owned by
// the Handler.
type Handler interface {
	// Init answers INIT with the protocol version smtpd speaks (2). An
	// error stops Serve, which makes smtpd exit: INIT has no failure reply.
	Init(ctx context.Context, version uint32) error

	// Close answers CLOSE, sent when smtpd shuts down; flush and release.
	Close(ctx context.Context) error

	// MessageCreate allocates a new, uncommitted message and returns its
	// non-zero msgid. An error makes smtpd answer its client with a 4xx.
	MessageCreate(ctx context.Context) (msgid uint32, err error)

	// MessageDelete removes an uncommitted message and its envelopes. smtpd
	// sends it only to roll back (RSET, failed or aborted transaction).
	MessageDelete(ctx context.Context, msgid uint32) error

	// MessageCommit takes the message body from f, positioned at offset 0
	// and read-only, and makes the message and all its envelopes durable
	// and visible at once. smtpd accepts the mail over SMTP only after nil
	// is returned. Serve closes f when MessageCommit returns; the Handler
	// must not keep it.
	MessageCommit(ctx context.Context, msgid uint32, f *os.File) error

	// MessageFdR returns a fresh open file (its own file description) with
	// the committed body of msgid, positioned at offset 0. Serve sends it
	// to smtpd and closes it.
	MessageFdR(ctx context.Context, msgid uint32) (*os.File, error)

	// EnvelopeCreate stores a new envelope blob for msgid and returns its
	// non-zero evpid. Before msgid is committed the envelope must stay
	// invisible; for a committed msgid (bounces) it is visible at once.
	EnvelopeCreate(ctx context.Context, msgid uint32, data []byte) (evpid uint64, err error)

	// EnvelopeDelete removes an envelope. Deleting the last envelope of a
	// committed message must delete the message too.
	EnvelopeDelete(ctx context.Context, evpid uint64) error

	// EnvelopeLoad returns the blob last stored for evpid. An error
	// (including "not found") is answered with an empty blob. A blob longer
	// than MaxLoadSize is treated as an error.
	EnvelopeLoad(ctx context.Context, evpid uint64) ([]byte, error)

	// EnvelopeUpdate replaces the blob of evpid.
	EnvelopeUpdate(ctx context.Context, evpid uint64, data []byte) error

	// EnvelopeWalk returns the next committed envelope of a snapshot taken
	// at start-up, grouped by msgid and never repeating an evpid (a
	// duplicate kills smtpd). It returns io.EOF at the end. Returning
	// ErrSkip, or a blob that is empty or longer than MaxWalkSize, makes
	// smtpd ask again; any other error ends the walk as io.EOF would.
	EnvelopeWalk(ctx context.Context) (evpid uint64, data []byte, err error)
}

// ServeOptions configures Serve. The zero value is ready to use.
type ServeOptions struct {
	// OpTimeout bounds each Handler call; zero means DefaultOpTimeout.
	OpTimeout time.Duration

	// Logger receives warnings about failed operations, panics and
	// unexpected descriptors. Nil means text records on os.Stderr.
	Logger *slog.Logger

	// HeaderFormat is the header layout of replies that carry a descriptor
	// (MESSAGE_FD_R); replies without one are the same bytes in both
	// layouts. It must be known before the first such reply, which after
	// a restart with mail queued comes before smtpd has sent any
	// descriptor, so it is never learnt from traffic. HeaderAuto
	// identifies the smtpd at the other end of the socket (IdentifyPeer)
	// and uses the layout of its version; Serve fails at once, before
	// reading any request, when that smtpd cannot be identified. Should
	// smtpd later send a descriptor in the other layout, which proves the
	// setting wrong, Serve logs an error and answers in smtpd's layout.
	HeaderFormat HeaderFormat

	// PID is written into the pid field of replies; zero means os.Getpid().
	// smtpd ignores it.
	PID uint32

	// Observe, if non-nil, is called after each reply is written with the
	// request's type, the time since the previous reply (idle: smtpd was
	// working or waiting for its clients) and the time from reading the
	// request to writing its reply (busy). (*Profile).Observe fits.
	Observe func(op Type, idle, busy time.Duration)
}

// Serve speaks the queue protocol with smtpd on conn (normally fd 0 of the
// queue process) and answers each request through h, one at a time. It
// returns nil when smtpd closes the connection after CLOSE, ctx.Err() when
// ctx is done, and otherwise the error that ended the session: a malformed
// frame (wrapping ErrMalformed), an early EOF, an I/O error, or Init's
// error. It does not close conn.
func Serve(ctx context.Context, conn *net.UnixConn, h Handler, opts *ServeOptions) error {
	if opts == nil {
		opts = &ServeOptions{}
	}
	s := &server{h: h, timeout: opts.OpTimeout, log: opts.Logger, pid: opts.PID}
	if s.timeout <= 0 {
		s.timeout = DefaultOpTimeout
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if s.pid == 0 {
		s.pid = uint32(os.Getpid())
	}
	format := opts.HeaderFormat
	if format == HeaderAuto {
		smtpd, err := IdentifyPeer(conn)
		if err != nil {
			return fmt.Errorf("opensmtpd: cannot tell the imsg header layout: %w", err)
		}
		if format, err = smtpd.HeaderFormat(); err != nil {
			return fmt.Errorf("opensmtpd: %w", err)
		}
	}
	c := newConn(conn, s.log, format)
	defer c.closeFDs()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()

	closed := false
	last := time.Now()
	for {
		hd, payload, f, err := c.readFrame()
		got := time.Now()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err == io.EOF {
				if closed {
					return nil
				}
				return fmt.Errorf("opensmtpd: connection closed before CLOSE: %w", io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("opensmtpd: read: %w", err)
		}
		req, err := decodeRequest(hd, payload)
		if err != nil {
			if f != nil {
				f.Close()
			}
			return fmt.Errorf("opensmtpd: %w", err)
		}
		rp, out, err := s.dispatch(ctx, req, f)
		if err != nil {
			return err
		}
		if req.typ == TypeClose {
			closed = true
		}
		err = c.writeReply(s.pid, rp, out)
		if out != nil {
			out.Close()
		}
		if err != nil {
			return fmt.Errorf("opensmtpd: write %s reply: %w", req.typ, err)
		}
		if opts.Observe != nil {
			now := time.Now()
			opts.Observe(req.typ, got.Sub(last), now.Sub(got))
			last = now
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

type server struct {
	h       Handler
	timeout time.Duration
	log     *slog.Logger
	pid     uint32
}

// panicError is a recovered Handler panic.
type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("handler panic: %v", e.value) }

// call runs fn under the per-request deadline, recovering panics. If the
// deadline passes first it returns without waiting; abandon, if non-nil,
// then runs once fn has finished, to release what fn produced.
func (s *server) call(ctx context.Context, op Type, fn func(context.Context) error, abandon func()) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		var err error
		defer func() { done <- err }()
		defer func() {
			if p := recover(); p != nil {
				err = &panicError{value: p, stack: debug.Stack()}
			}
		}()
		err = fn(ctx)
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		// The handler may have finished at the deadline: its answer wins,
		// or a commit that succeeded would be reported as failed.
		select {
		case err = <-done:
		default:
			if abandon != nil {
				go func() { <-done; abandon() }()
			}
			err = fmt.Errorf("handler did not return within %v: %w", s.timeout, ctx.Err())
		}
	}
	if err != nil {
		var pe *panicError
		if errors.As(err, &pe) {
			s.log.Error("opensmtpd: handler panicked; answering temp-fail", "op", op.String(), "panic", fmt.Sprint(pe.value), "stack", string(pe.stack))
		} else if op != TypeEnvelopeWalk || !(errors.Is(err, io.EOF) || errors.Is(err, ErrSkip)) {
			s.log.Warn("opensmtpd: operation failed; answering temp-fail", "op", op.String(), "err", err)
		}
	}
	return err
}

// result maps an error to the r value of the usual 1/0 replies.
func result(err error) int32 {
	if err != nil {
		return 0
	}
	return 1
}

// dispatch runs the Handler method for req and builds the reply. The
// returned file, if any, is to be sent with the reply and then closed.
// A non-nil error ends the session.
func (s *server) dispatch(ctx context.Context, req request, in *os.File) (reply, *os.File, error) {
	h := s.h
	rp := reply{op: req.typ}
	switch req.typ {
	case TypeInit:
		if req.version != APIVersion {
			return rp, nil, fmt.Errorf("opensmtpd: unsupported queue API version %d (want %d)", req.version, APIVersion)
		}
		if err := s.call(ctx, req.typ, func(ctx context.Context) error { return h.Init(ctx, req.version) }, nil); err != nil {
			return rp, nil, fmt.Errorf("opensmtpd: init: %w", err)
		}
	case TypeClose:
		rp.r = result(s.call(ctx, req.typ, h.Close, nil))
	case TypeMessageCreate:
		var id uint32
		err := s.call(ctx, req.typ, func(ctx context.Context) (err error) {
			id, err = h.MessageCreate(ctx)
			if err == nil && id == 0 {
				err = errors.New("handler returned msgid 0")
			}
			return err
		}, nil)
		if rp.r = result(err); rp.r == 1 {
			rp.msgid = id
		}
	case TypeMessageDelete:
		rp.r = result(s.call(ctx, req.typ, func(ctx context.Context) error { return h.MessageDelete(ctx, req.msgid) }, nil))
	case TypeMessageCommit:
		rp.r = result(s.call(ctx, req.typ, func(ctx context.Context) error {
			defer in.Close()
			return h.MessageCommit(ctx, req.msgid, in)
		}, nil))
	case TypeMessageFdR:
		var out *os.File
		err := s.call(ctx, req.typ, func(ctx context.Context) (err error) {
			out, err = h.MessageFdR(ctx, req.msgid)
			if err != nil && out != nil {
				out.Close()
				out = nil
			}
			if err == nil && out == nil {
				err = errors.New("handler returned no file")
			}
			return err
		}, func() {
			if out != nil {
				out.Close()
			}
		})
		if err == nil {
			return rp, out, nil
		}
	case TypeEnvelopeCreate:
		data := clone(req.data)
		var id uint64
		err := s.call(ctx, req.typ, func(ctx context.Context) (err error) {
			id, err = h.EnvelopeCreate(ctx, req.msgid, data)
			if err == nil && id == 0 {
				err = errors.New("handler returned evpid 0")
			}
			return err
		}, nil)
		if rp.r = result(err); rp.r == 1 {
			rp.evpid = id
		}
	case TypeEnvelopeDelete:
		rp.r = result(s.call(ctx, req.typ, func(ctx context.Context) error { return h.EnvelopeDelete(ctx, req.evpid) }, nil))
	case TypeEnvelopeLoad:
		var data []byte
		err := s.call(ctx, req.typ, func(ctx context.Context) (err error) {
			data, err = h.EnvelopeLoad(ctx, req.evpid)
			if err == nil && len(data) > MaxLoadSize {
				err = fmt.Errorf("blob of %d bytes exceeds %d", len(data), MaxLoadSize)
			}
			return err
		}, nil)
		if err == nil {
			rp.data = data
		}
	case TypeEnvelopeUpdate:
		data := clone(req.data)
		rp.r = result(s.call(ctx, req.typ, func(ctx context.Context) error { return h.EnvelopeUpdate(ctx, req.evpid, data) }, nil))
	case TypeEnvelopeWalk:
		var id uint64
		var data []byte
		err := s.call(ctx, req.typ, func(ctx context.Context) (err error) {
			id, data, err = h.EnvelopeWalk(ctx)
			if err == nil && (len(data) == 0 || len(data) > MaxWalkSize) {
				s.log.Warn("opensmtpd: walk blob of bad size; skipping", "evpid", fmt.Sprintf("%016x", id), "len", len(data))
				err = ErrSkip
			}
			return err
		}, nil)
		switch {
		case err == nil:
			rp.r, rp.evpid, rp.data = int32(len(data)), id, data
		case errors.Is(err, ErrSkip):
			rp.r = 0
		default:
			rp.r = -1
		}
	default:
		// decodeRequest accepts no other type.
		return rp, nil, fmt.Errorf("opensmtpd: unhandled request %s", req.typ)
	}
	return rp, nil, nil
}

func clone(b []byte) []byte {
	return append([]byte{}, b...)
}
