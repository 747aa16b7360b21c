package main

import (
	"bufio"
	"crypto/sha256"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// hold, in a sink's script, blocks the RCPT until the test releases the
// sink, and then answers 250.
const hold = 0

// waitBound bounds every wait of the tests. Only a broken MX reaches it.
const waitBound = 2 * time.Minute

// sink is the relay of the tests: a go-smtp server on 127.0.0.1 that
// answers each recipient as the test scripts it (250 unless told 451, 550
// or hold), can hold the DATA of one client on demand, and records every
// RCPT and every message it received.
type sink struct {
	t    testing.TB
	addr string

	mu       sync.Mutex
	changed  chan struct{}    // closed and replaced at every change
	scripts  map[string][]int // recipient → replies to its RCPTs, in turn; the last one repeats
	holdData string           // a HELO name whose DATA is held once recorded
	release  chan struct{}    // closed by unhold
	held     int              // transactions held now
	rcpts    []attempt
	msgs     []*message
}

// attempt is one RCPT and the reply it got.
type attempt struct {
	helo, to string
	code     int
	at       time.Time
}

// message is one DATA received in full.
type message struct {
	helo, from string
	to         []string
	received   bool     // it began with the MX's Received line
	size       int64    // of the content after that line
	sum        [32]byte // sha256 of the content after that line
	data       []byte   // the content after that line, when under 1 MiB
	held       bool     // recorded, then held: the client never saw its 250
}

func newSink(t testing.TB) *sink {
	s := &sink{t: t, changed: make(chan struct{}), scripts: make(map[string][]int), release: make(chan struct{})}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s, conn: c}, nil
	}))
	srv.Domain = "sink.test"
	srv.ErrorLog = discardLogger{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() {
		s.unhold()
		srv.Close()
	})
	return s
}

// script sets the replies to the RCPTs of to, in turn; the last repeats.
func (s *sink) script(to string, codes ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[to] = codes
}

// holdDataFrom holds the DATA of the client that says HELO helo.
func (s *sink) holdDataFrom(helo string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holdData = helo
}

// unhold lets every held transaction go, and holds no more.
func (s *sink) unhold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.release:
	default:
		close(s.release)
	}
	s.scripts = make(map[string][]int)
	s.holdData = ""
}

// notifyLocked wakes the waiters; s.mu is held.
func (s *sink) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// wait blocks until cond, called with the sink locked, holds.
func (s *sink) wait(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.NewTimer(waitBound)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok, ch := cond(), s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			s.t.Fatalf("gave up waiting for %s after %v", what, waitBound)
		}
	}
}

// delivered returns the messages received for to, under the lock.
func (s *sink) deliveredLocked(to string) []*message {
	var out []*message
	for _, m := range s.msgs {
		for _, r := range m.to {
			if r == to {
				out = append(out, m)
			}
		}
	}
	return out
}

func (s *sink) delivered(to string) []*message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deliveredLocked(to)
}

// messages returns every message received so far.
func (s *sink) messages() []*message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message(nil), s.msgs...)
}

// attempts returns the replies given to the RCPTs of to.
func (s *sink) attempts(to string) []attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []attempt
	for _, a := range s.rcpts {
		if a.to == to {
			out = append(out, a)
		}
	}
	return out
}

type sinkSession struct {
	s    *sink
	conn *smtp.Conn
	from string
	to   []string
}

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from = from
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s := ss.s
	s.mu.Lock()
	code := 250
	if sc := s.scripts[to]; len(sc) > 0 {
		code = sc[0]
		if len(sc) > 1 {
			s.scripts[to] = sc[1:]
		}
	}
	release := s.release
	s.rcpts = append(s.rcpts, attempt{helo: ss.conn.Hostname(), to: to, code: code, at: time.Now()})
	s.notifyLocked()
	s.mu.Unlock()
	switch code {
	case 250:
	case hold:
		<-release
	case 550:
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
	default:
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{code / 100, 3, 0}, Message: "try again later"}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	m := &message{helo: ss.conn.Hostname(), from: ss.from, to: ss.to}
	br := bufio.NewReader(r)
	first, _ := br.Peek(10)
	if string(first) == "Received: " {
		br.ReadString('\n')
		m.received = true
	}
	h := sha256.New()
	var small limitedBuffer
	n, err := io.Copy(io.MultiWriter(h, &small), br)
	if err != nil {
		return err
	}
	m.size, m.data = n, small.bytes()
	h.Sum(m.sum[:0])
	s := ss.s
	s.mu.Lock()
	m.held = s.holdData != "" && s.holdData == m.helo
	release := s.release
	s.msgs = append(s.msgs, m)
	if m.held {
		s.held++
	}
	s.notifyLocked()
	s.mu.Unlock()
	if m.held {
		<-release
		s.mu.Lock()
		s.held--
		s.notifyLocked()
		s.mu.Unlock()
	}
	return nil
}

func (ss *sinkSession) Reset()        { ss.from, ss.to = "", nil }
func (ss *sinkSession) Logout() error { return nil }

// limitedBuffer keeps what is written to it while that is under 1 MiB.
type limitedBuffer struct {
	b    []byte
	over bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if !l.over && len(l.b)+len(p) <= 1<<20 {
		l.b = append(l.b, p...)
	} else {
		l.over, l.b = true, nil
	}
	return len(p), nil
}

func (l *limitedBuffer) bytes() []byte { return l.b }

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// header returns the value of the header field name in a message's content.
func header(data []byte, name string) string {
	for _, line := range strings.Split(string(data), "\r\n") {
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
