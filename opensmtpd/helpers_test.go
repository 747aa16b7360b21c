package opensmtpd

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hx decodes space-separated hex bytes as printed in the protocol trace.
func hx(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// socketpair returns both ends of an AF_UNIX SOCK_STREAM socketpair, as
// smtpd creates for its queue process.
func socketpair(t testing.TB) (server, peer *net.UnixConn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int, name string) *net.UnixConn {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conv(fds[0], "server"), conv(fds[1], "peer")
}

// peer plays smtpd's queue process.
type peer struct {
	t   testing.TB
	c   *net.UnixConn
	buf []byte
	fds []int
}

// send writes b in one sendmsg, with the given descriptors attached.
func (p *peer) send(b []byte, fds ...int) {
	p.t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = syscall.UnixRights(fds...)
	}
	p.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := p.c.WriteMsgUnix(b, oob, nil); err != nil {
		p.t.Fatalf("send: %v", err)
	}
}

// recv reads one complete reply and the descriptor that came with it (-1
// if none).
func (p *peer) recv() ([]byte, int) {
	p.t.Helper()
	oob := make([]byte, syscall.CmsgSpace(4*4))
	rb := make([]byte, 2*MaxMessageSize)
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	need := HeaderSize
	for len(p.buf) < need {
		n, oobn, _, _, err := p.c.ReadMsgUnix(rb, oob)
		if err != nil {
			p.t.Fatalf("recv: %v", err)
		}
		if n == 0 && oobn == 0 {
			p.t.Fatalf("recv: EOF after %d bytes", len(p.buf))
		}
		p.buf = append(p.buf, rb[:n]...)
		if oobn > 0 {
			msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				p.t.Fatal(err)
			}
			for i := range msgs {
				fds, err := syscall.ParseUnixRights(&msgs[i])
				if err != nil {
					p.t.Fatal(err)
				}
				p.fds = append(p.fds, fds...)
			}
		}
		if len(p.buf) >= HeaderSize {
			// len is the low 16 bits in both layouts.
			need = int(p.buf[4]) | int(p.buf[5])<<8
		}
	}
	msg := append([]byte{}, p.buf[:need]...)
	p.buf = p.buf[need:]
	fd := -1
	if len(p.fds) > 0 {
		fd, p.fds = p.fds[0], p.fds[1:]
	}
	return msg, fd
}

// expect sends req (with optional fds) and checks the reply bytes. It
// returns the reply's descriptor, or -1.
func (p *peer) expect(req, want []byte, fds ...int) int {
	p.t.Helper()
	p.send(req, fds...)
	got, fd := p.recv()
	if !bytes.Equal(got, want) {
		p.t.Fatalf("reply to %s:\n got % x\nwant % x", Type(req[0]), got, want)
	}
	return fd
}

type session struct {
	*peer
	done chan struct{} // closed when Serve has returned
	err  error         // Serve's result, valid once done is closed
	log  *syncBuffer
}

// wait closes the peer side and returns Serve's result.
func (s *session) wait() error {
	s.t.Helper()
	s.c.CloseWrite()
	select {
	case <-s.done:
		return s.err
	case <-time.After(5 * time.Second):
		s.t.Fatal("Serve did not return")
		return nil
	}
}

// result waits for Serve to return without closing anything.
func (s *session) result() error {
	s.t.Helper()
	select {
	case <-s.done:
		return s.err
	case <-time.After(5 * time.Second):
		s.t.Fatal("Serve did not return")
		return nil
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// serve starts Serve on one end of a socketpair and returns the other end.
// The reply pid is fixed to 0x62c2, the backend pid of the reference trace.
func serve(t *testing.T, h Handler, opts *ServeOptions) *session {
	t.Helper()
	sc, pc := socketpair(t)
	if opts == nil {
		opts = &ServeOptions{}
	}
	if opts.HeaderFormat == HeaderAuto {
		// The peer is this test, not an smtpd: say which layout it speaks.
		opts.HeaderFormat = Header68
	}
	log := &syncBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(log, nil))
	}
	if opts.PID == 0 {
		opts.PID = 0x62c2
	}
	s := &session{peer: &peer{t: t, c: pc}, done: make(chan struct{}), log: log}
	go func() {
		defer close(s.done)
		s.err = Serve(t.Context(), sc, h, opts)
	}()
	t.Cleanup(func() {
		pc.Close()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			t.Error("Serve still running at cleanup")
		}
		sc.Close()
	})
	return s
}

// memHandler is a minimal in-memory queue with predictable identifiers.
type memHandler struct {
	mu        sync.Mutex
	msgids    []uint32 // handed out by MessageCreate, in order
	evpids    []uint64 // handed out by EnvelopeCreate, in order
	committed map[uint32][]byte
	pending   map[uint32]bool
	envs      map[uint64][]byte
	walk      []uint64 // snapshot taken on Init
	closed    bool
	version   uint32
}

func newMemHandler() *memHandler {
	return &memHandler{
		committed: map[uint32][]byte{},
		pending:   map[uint32]bool{},
		envs:      map[uint64][]byte{},
	}
}

func (m *memHandler) Init(ctx context.Context, version uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.version = version
	for id := range m.envs {
		if _, ok := m.committed[uint32(id>>32)]; ok {
			m.walk = append(m.walk, id)
		}
	}
	slices.Sort(m.walk)
	return nil
}

func (m *memHandler) Close(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

func (m *memHandler) MessageCreate(ctx context.Context) (uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.msgids) == 0 {
		return 0, errors.New("out of msgids")
	}
	id := m.msgids[0]
	m.msgids = m.msgids[1:]
	m.pending[id] = true
	return id, nil
}

func (m *memHandler) MessageDelete(ctx context.Context, msgid uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, msgid)
	for id := range m.envs {
		if uint32(id>>32) == msgid {
			delete(m.envs, id)
		}
	}
	return nil
}

func (m *memHandler) MessageCommit(ctx context.Context, msgid uint32, f *os.File) error {
	body, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.pending[msgid] {
		return fmt.Errorf("commit of unknown message %08x", msgid)
	}
	delete(m.pending, msgid)
	m.committed[msgid] = body
	return nil
}

func (m *memHandler) MessageFdR(ctx context.Context, msgid uint32) (*os.File, error) {
	m.mu.Lock()
	body, ok := m.committed[msgid]
	m.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no message %08x", msgid)
	}
	return bodyFile(body)
}

// bodyFile returns a fresh, unlinked file holding body at offset 0.
func bodyFile(body []byte) (*os.File, error) {
	f, err := os.CreateTemp("", "body")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	if _, err := f.Write(body); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (m *memHandler) EnvelopeCreate(ctx context.Context, msgid uint32, data []byte) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.evpids) == 0 {
		return 0, errors.New("out of evpids")
	}
	id := m.evpids[0]
	m.evpids = m.evpids[1:]
	m.envs[id] = data
	return id, nil
}

func (m *memHandler) EnvelopeDelete(ctx context.Context, evpid uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.envs[evpid]; !ok {
		return fmt.Errorf("no envelope %016x", evpid)
	}
	delete(m.envs, evpid)
	msgid := uint32(evpid >> 32)
	for id := range m.envs {
		if uint32(id>>32) == msgid {
			return nil
		}
	}
	delete(m.committed, msgid) // last envelope gone
	return nil
}

func (m *memHandler) EnvelopeLoad(ctx context.Context, evpid uint64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.envs[evpid]
	if !ok {
		return nil, fmt.Errorf("no envelope %016x", evpid)
	}
	return d, nil
}

func (m *memHandler) EnvelopeUpdate(ctx context.Context, evpid uint64, data []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.envs[evpid]; !ok {
		return fmt.Errorf("no envelope %016x", evpid)
	}
	m.envs[evpid] = data
	return nil
}

func (m *memHandler) EnvelopeWalk(ctx context.Context) (uint64, []byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.walk) > 0 {
		id := m.walk[0]
		m.walk = m.walk[1:]
		if d, ok := m.envs[id]; ok {
			return id, d, nil
		}
	}
	return 0, nil, io.EOF
}

// funcHandler lets a test override single operations of memHandler.
type funcHandler struct {
	*memHandler
	create func(ctx context.Context) (uint32, error)
	commit func(ctx context.Context, msgid uint32, f *os.File) error
	fdr    func(ctx context.Context, msgid uint32) (*os.File, error)
	load   func(ctx context.Context, evpid uint64) ([]byte, error)
	walk   func(ctx context.Context) (uint64, []byte, error)
	init   func(ctx context.Context, version uint32) error
}

func (h *funcHandler) Init(ctx context.Context, version uint32) error {
	if h.init != nil {
		return h.init(ctx, version)
	}
	return h.memHandler.Init(ctx, version)
}

func (h *funcHandler) MessageCreate(ctx context.Context) (uint32, error) {
	if h.create != nil {
		return h.create(ctx)
	}
	return h.memHandler.MessageCreate(ctx)
}

func (h *funcHandler) MessageCommit(ctx context.Context, msgid uint32, f *os.File) error {
	if h.commit != nil {
		return h.commit(ctx, msgid, f)
	}
	return h.memHandler.MessageCommit(ctx, msgid, f)
}

func (h *funcHandler) MessageFdR(ctx context.Context, msgid uint32) (*os.File, error) {
	if h.fdr != nil {
		return h.fdr(ctx, msgid)
	}
	return h.memHandler.MessageFdR(ctx, msgid)
}

func (h *funcHandler) EnvelopeLoad(ctx context.Context, evpid uint64) ([]byte, error) {
	if h.load != nil {
		return h.load(ctx, evpid)
	}
	return h.memHandler.EnvelopeLoad(ctx, evpid)
}

func (h *funcHandler) EnvelopeWalk(ctx context.Context) (uint64, []byte, error) {
	if h.walk != nil {
		return h.walk(ctx)
	}
	return h.memHandler.EnvelopeWalk(ctx)
}

var _ Handler = (*memHandler)(nil)
var _ Handler = (*funcHandler)(nil)

// body returns the committed body of msgid.
func (m *memHandler) body(msgid uint32) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.committed[msgid]
	return b, ok
}

// env returns the blob of evpid.
func (m *memHandler) env(evpid uint64) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.envs[evpid]
	return b, ok
}

func (m *memHandler) isPending(msgid uint32) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pending[msgid]
}

func (m *memHandler) state() (closed bool, version uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed, m.version
}
