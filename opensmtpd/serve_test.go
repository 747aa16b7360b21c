package opensmtpd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The envelope of the reference trace (268 bytes).
const traceEnvelope = "version: 3\ndispatcher: deliver\ntype: mda\nsmtpname: vm\nhelo: lab.local\n" +
	"hostname: localhost\nsockaddr: 127.0.0.1\nsender: a@localhost\nrcpt: nobody@localhost\n" +
	"dest: nobody@localhost\nctime: 1795967662\nlast-try: 0\nlast-bounce: 0\nttl: 0\nretry: 0\n" +
	"dsn-notify: 0\nmda-user: nobody\n"

const traceBody = "Received: from lab.local (localhost [127.0.0.1])\n\tby vm (OpenSMTPD) with ESMTP\n\nhello\n"

// Frames of the reference trace: smtpd's queue process has pid 0x62c0,
// the backend 0x62c2.
const (
	reqInit           = "02 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 02 00 00 00"
	repInit           = "00 00 00 00 10 00 00 00 00 00 00 00 c2 62 00 00"
	reqWalk           = "0c 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00"
	repWalkEnd        = "00 00 00 00 14 00 00 00 00 00 00 00 c2 62 00 00 ff ff ff ff"
	reqMessageCreate  = "04 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00"
	repMessageCreate  = "00 00 00 00 18 00 00 00 00 00 00 00 c2 62 00 00 01 00 00 00 5b 22 f1 83"
	reqEnvelopeCreate = "08 00 00 00 20 01 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83" // + traceEnvelope
	repEnvelopeCreate = "00 00 00 00 1c 00 00 00 00 00 00 00 c2 62 00 00 01 00 00 00 3d 6d 0e dc 5b 22 f1 83"
	reqCommit68       = "06 00 00 00 14 00 01 00 00 00 00 00 c0 62 00 00 5b 22 f1 83"
	reqCommit77       = "06 00 00 00 14 00 00 80 00 00 00 00 c0 62 00 00 5b 22 f1 83"
	repOK1            = "00 00 00 00 14 00 00 00 00 00 00 00 c2 62 00 00 01 00 00 00"
	repOK0            = "00 00 00 00 14 00 00 00 00 00 00 00 c2 62 00 00 00 00 00 00"
	reqFdR            = "07 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83"
	repFdR68          = "00 00 00 00 10 00 01 00 00 00 00 00 c2 62 00 00"
	repFdR77          = "00 00 00 00 10 00 00 80 00 00 00 00 c2 62 00 00"
	repFdRFail        = "00 00 00 00 10 00 00 00 00 00 00 00 c2 62 00 00"
	reqEnvelopeDelete = "09 00 00 00 18 00 00 00 00 00 00 00 c0 62 00 00 3d 6d 0e dc 5b 22 f1 83"
	reqEnvelopeLoad   = "0a 00 00 00 18 00 00 00 00 00 00 00 c0 62 00 00 3d 6d 0e dc 5b 22 f1 83"
	reqClose          = "03 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00"
)

const (
	traceMsgID = 0x83f1225b
	traceEvpID = 0x83f1225bdc0e6d3d
)

func traceHandler() *memHandler {
	m := newMemHandler()
	m.msgids = []uint32{traceMsgID}
	m.evpids = []uint64{traceEvpID}
	return m
}

// tempFile returns a read-only file holding content, like smtpd's
// temporary/<msgid>, and its path.
func tempFile(t *testing.T, content string) *os.File {
	t.Helper()
	p := t.TempDir() + "/msg"
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readFD(t *testing.T, fd int) string {
	t.Helper()
	if fd < 0 {
		t.Fatal("no descriptor in reply")
	}
	f := os.NewFile(uintptr(fd), "reply")
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTrace replays the reference trace of one SMTP message and checks
// every reply byte for byte, in both header layouts.
func TestTrace(t *testing.T) {
	for _, tc := range []struct {
		name           string
		format         HeaderFormat
		commit, fdrRep string
	}{
		{"6.8", Header68, reqCommit68, repFdR68},
		{"7.7", Header77, reqCommit77, repFdR77},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := traceHandler()
			s := serve(t, m, &ServeOptions{HeaderFormat: tc.format})
			s.expect(hx(t, reqInit), hx(t, repInit))
			s.expect(hx(t, reqWalk), hx(t, repWalkEnd))
			s.expect(hx(t, reqMessageCreate), hx(t, repMessageCreate))
			s.expect(append(hx(t, reqEnvelopeCreate), traceEnvelope...), hx(t, repEnvelopeCreate))
			body := tempFile(t, traceBody)
			s.expect(hx(t, tc.commit), hx(t, repOK1), int(body.Fd()))
			if got, _ := m.body(traceMsgID); string(got) != traceBody {
				t.Fatalf("committed body %q", got)
			}
			// Load goes to the backend on a cache miss: raw blob, no prefix.
			s.expect(hx(t, reqEnvelopeLoad), append(hx(t, "00 00 00 00 1c 01 00 00 00 00 00 00 c2 62 00 00"), traceEnvelope...))
			fd := s.expect(hx(t, reqFdR), hx(t, tc.fdrRep))
			if got := readFD(t, fd); got != traceBody {
				t.Fatalf("FD_R body %q", got)
			}
			// Every FD_R gets its own file description at offset 0.
			fd = s.expect(hx(t, reqFdR), hx(t, tc.fdrRep))
			if got := readFD(t, fd); got != traceBody {
				t.Fatalf("second FD_R body %q", got)
			}
			s.expect(hx(t, reqEnvelopeDelete), hx(t, repOK1))
			if _, ok := m.body(traceMsgID); ok {
				t.Fatal("message survived deletion of its last envelope")
			}
			s.expect(hx(t, reqFdR), hx(t, repFdRFail))
			s.expect(hx(t, reqEnvelopeLoad), hx(t, repFdRFail)) // empty blob = not found
			s.expect(hx(t, reqClose), hx(t, repOK1))
			if err := s.wait(); err != nil {
				t.Fatalf("Serve after CLOSE and EOF: %v", err)
			}
			if closed, version := m.state(); !closed || version != 2 {
				t.Fatalf("closed=%v version=%d", closed, version)
			}
		})
	}
}

// TestOtherOps covers the requests the reference trace does not show:
// rollback, update, and a walk that returns envelopes.
func TestOtherOps(t *testing.T) {
	m := newMemHandler()
	m.committed[0x11223344] = []byte("body")
	m.envs[0x1122334400000002] = []byte("b2")
	m.envs[0x1122334400000001] = []byte("blob-1")
	m.envs[0x5566778800000001] = []byte("uncommitted")
	m.msgids = []uint32{0xaabbccdd}
	m.evpids = []uint64{0xaabbccdd00000001}
	s := serve(t, m, nil)
	s.expect(hx(t, reqInit), hx(t, repInit))
	s.expect(hx(t, reqWalk), hx(t, "00 00 00 00 22 00 00 00 00 00 00 00 c2 62 00 00 06 00 00 00 01 00 00 00 44 33 22 11 62 6c 6f 62 2d 31"))
	s.expect(hx(t, reqWalk), hx(t, "00 00 00 00 1e 00 00 00 00 00 00 00 c2 62 00 00 02 00 00 00 02 00 00 00 44 33 22 11 62 32"))
	s.expect(hx(t, reqWalk), hx(t, repWalkEnd))

	// ENVELOPE_UPDATE: u64 evpid + blob -> r.
	s.expect(hx(t, "0b 00 00 00 1b 00 00 00 00 00 00 00 c0 62 00 00 01 00 00 00 44 33 22 11 6e 65 77"), hx(t, repOK1))
	if got, _ := m.env(0x1122334400000001); string(got) != "new" {
		t.Fatalf("updated blob %q", got)
	}
	// Update of a missing envelope fails with r=0.
	s.expect(hx(t, "0b 00 00 00 1b 00 00 00 00 00 00 00 c0 62 00 00 09 00 00 00 44 33 22 11 6e 65 77"), hx(t, repOK0))

	// MAIL, RCPT, RSET: MESSAGE_DELETE rolls back.
	s.expect(hx(t, reqMessageCreate), hx(t, "00 00 00 00 18 00 00 00 00 00 00 00 c2 62 00 00 01 00 00 00 dd cc bb aa"))
	s.expect(hx(t, "08 00 00 00 15 00 00 00 00 00 00 00 c0 62 00 00 dd cc bb aa 78"),
		hx(t, "00 00 00 00 1c 00 00 00 00 00 00 00 c2 62 00 00 01 00 00 00 01 00 00 00 dd cc bb aa"))
	s.expect(hx(t, "05 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 dd cc bb aa"), hx(t, repOK1))
	if _, ok := m.env(0xaabbccdd00000001); ok || m.isPending(0xaabbccdd) {
		t.Fatal("rollback left data behind")
	}
	// Failures: no msgid/evpid after r=0.
	s.expect(hx(t, reqMessageCreate), hx(t, repOK0))
	s.expect(hx(t, "08 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 dd cc bb aa"), hx(t, repOK0))
	s.expect(hx(t, reqClose), hx(t, repOK1))
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
}

func TestEOFBeforeClose(t *testing.T) {
	s := serve(t, newMemHandler(), nil)
	s.expect(hx(t, reqInit), hx(t, repInit))
	if err := s.wait(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want ErrUnexpectedEOF", err)
	}
}

func TestEOFInsideFrame(t *testing.T) {
	s := serve(t, newMemHandler(), nil)
	s.send(hx(t, reqInit)[:10])
	if err := s.wait(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want ErrUnexpectedEOF", err)
	}
}

func TestContextCancel(t *testing.T) {
	sc, pc := socketpair(t)
	defer sc.Close()
	defer pc.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sc, newMemHandler(), &ServeOptions{HeaderFormat: Header68}) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve ignored cancellation")
	}
}

// TestPartialReads splits frames across reads: a header in pieces, and a
// descriptor that arrives with the first byte only.
func TestPartialReads(t *testing.T) {
	m := traceHandler()
	s := serve(t, m, nil)
	init := hx(t, reqInit)
	s.send(init[:3])
	time.Sleep(10 * time.Millisecond)
	s.send(init[3:17])
	time.Sleep(10 * time.Millisecond)
	s.send(init[17:])
	if got, _ := s.recv(); !bytes.Equal(got, hx(t, repInit)) {
		t.Fatalf("init reply % x", got)
	}
	s.expect(hx(t, reqMessageCreate), hx(t, repMessageCreate))
	s.expect(append(hx(t, reqEnvelopeCreate), traceEnvelope...), hx(t, repEnvelopeCreate))
	commit := hx(t, reqCommit68)
	body := tempFile(t, traceBody)
	s.send(commit[:1], int(body.Fd()))
	time.Sleep(10 * time.Millisecond)
	s.send(commit[1:9])
	time.Sleep(10 * time.Millisecond)
	s.send(commit[9:])
	if got, _ := s.recv(); !bytes.Equal(got, hx(t, repOK1)) {
		t.Fatalf("commit reply % x", got)
	}
	if got, _ := m.body(traceMsgID); string(got) != traceBody {
		t.Fatal("body not committed")
	}
}

// pipeClosed reports whether every read end of the pipe whose write end is
// w has been closed.
func pipeClosed(t *testing.T, w *os.File) bool {
	t.Helper()
	_, err := w.Write([]byte("x"))
	return errors.Is(err, syscall.EPIPE)
}

func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// TestUnexpectedDescriptors checks that descriptors nobody asked for are
// closed rather than leaked: one on a request without the flag, and a
// second one riding along with MESSAGE_COMMIT.
func TestUnexpectedDescriptors(t *testing.T) {
	m := traceHandler()
	s := serve(t, m, nil)
	s.expect(hx(t, reqInit), hx(t, repInit))

	r1, w1 := pipe(t)
	s.expect(hx(t, reqMessageCreate), hx(t, repMessageCreate), int(r1.Fd()))
	r1.Close()
	if !pipeClosed(t, w1) {
		t.Fatal("descriptor sent with MESSAGE_CREATE was not closed")
	}

	r2, w2 := pipe(t)
	body := tempFile(t, traceBody)
	s.expect(hx(t, reqCommit68), hx(t, repOK1), int(body.Fd()), int(r2.Fd()))
	r2.Close()
	if !pipeClosed(t, w2) {
		t.Fatal("extra descriptor sent with MESSAGE_COMMIT was not closed")
	}
	if got, _ := m.body(traceMsgID); string(got) != traceBody {
		t.Fatal("commit took the wrong descriptor")
	}
	if !strings.Contains(s.log.String(), "unexpected descriptor") {
		t.Fatalf("log: %s", s.log)
	}
}

// TestCommitDescriptorClosed checks that Serve closes the commit file once
// the handler is done with it.
func TestCommitDescriptorClosed(t *testing.T) {
	h := &funcHandler{memHandler: traceHandler()}
	h.commit = func(context.Context, uint32, *os.File) error { return nil }
	s := serve(t, h, nil)
	s.expect(hx(t, reqInit), hx(t, repInit))
	r, w := pipe(t)
	s.expect(hx(t, reqCommit68), hx(t, repOK1), int(r.Fd()))
	r.Close()
	if !pipeClosed(t, w) {
		t.Fatal("Serve kept the commit descriptor open")
	}
}

// TestHeaderFormatOption checks the layout of an FD_R reply sent before
// any request carried a descriptor: the one configured.
func TestHeaderFormatOption(t *testing.T) {
	for _, tc := range []struct {
		name   string
		format HeaderFormat
		want   string
	}{
		{"6.8", Header68, repFdR68},
		{"7.7", Header77, repFdR77},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMemHandler()
			m.committed[traceMsgID] = []byte(traceBody)
			s := serve(t, m, &ServeOptions{HeaderFormat: tc.format})
			s.expect(hx(t, reqInit), hx(t, repInit))
			fd := s.expect(hx(t, reqFdR), hx(t, tc.want))
			if readFD(t, fd) != traceBody {
				t.Fatal("wrong body")
			}
		})
	}
}

// TestSizeCap checks that no reply exceeds MaxMessageSize: the largest
// blobs that fit are sent, larger ones become failures.
func TestSizeCap(t *testing.T) {
	h := &funcHandler{memHandler: newMemHandler()}
	var size atomic.Int64
	h.load = func(context.Context, uint64) ([]byte, error) { return bytes.Repeat([]byte{'x'}, int(size.Load())), nil }
	h.walk = func(context.Context) (uint64, []byte, error) {
		return 0x0102030405060708, bytes.Repeat([]byte{'y'}, int(size.Load())), nil
	}
	s := serve(t, h, nil)
	s.expect(hx(t, reqInit), hx(t, repInit))

	size.Store(MaxLoadSize)
	s.send(hx(t, reqEnvelopeLoad))
	got, _ := s.recv()
	if len(got) != MaxMessageSize || binary.LittleEndian.Uint16(got[4:]) != 0x4000 || got[HeaderSize] != 'x' {
		t.Fatalf("largest load reply: %d bytes, header % x", len(got), got[:HeaderSize])
	}
	size.Store(MaxLoadSize + 1)
	s.expect(hx(t, reqEnvelopeLoad), hx(t, repFdRFail))

	size.Store(MaxWalkSize)
	s.send(hx(t, reqWalk))
	got, _ = s.recv()
	if len(got) != MaxMessageSize || binary.LittleEndian.Uint32(got[16:]) != MaxWalkSize ||
		binary.LittleEndian.Uint64(got[20:]) != 0x0102030405060708 {
		t.Fatalf("largest walk reply: %d bytes, start % x", len(got), got[:28])
	}
	size.Store(MaxWalkSize + 1)
	s.expect(hx(t, reqWalk), hx(t, "00 00 00 00 14 00 00 00 00 00 00 00 c2 62 00 00 00 00 00 00")) // skip
	size.Store(0)
	s.expect(hx(t, reqWalk), hx(t, "00 00 00 00 14 00 00 00 00 00 00 00 c2 62 00 00 00 00 00 00")) // skip

	// A request of exactly MaxMessageSize is fine; one byte more is not.
	blob := bytes.Repeat([]byte{'z'}, MaxMessageSize-HeaderSize-8)
	req := append(hx(t, "0b 00 00 00 00 40 00 00 00 00 00 00 c0 62 00 00 01 00 00 00 44 33 22 11"), blob...)
	s.expect(req, hx(t, repOK0)) // unknown envelope: r=0, but well formed
	big := append(hx(t, "0b 00 00 00 01 40 00 00 00 00 00 00 c0 62 00 00 01 00 00 00 44 33 22 11"), blob...)
	s.send(append(big, 'z'))
	if err := s.result(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("oversized request: got %v", err)
	}
}

// TestMalformed sends frames that break the protocol; Serve must stop
// with an error wrapping ErrMalformed and close any descriptor.
func TestMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  string
		fd   bool
	}{
		{name: "len below header", req: "02 00 00 00 0f 00 00 00 00 00 00 00 c0 62 00 00"},
		{name: "len above cap", req: "02 00 00 00 01 40 00 00 00 00 00 00 c0 62 00 00"},
		{name: "len above cap 7.7", req: "02 00 00 00 01 40 00 80 00 00 00 00 c0 62 00 00"},
		{name: "unknown flags", req: "04 00 00 00 10 00 02 00 00 00 00 00 c0 62 00 00"},
		{name: "unknown type", req: "0d 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00"},
		{name: "FAIL request", req: "01 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00"},
		{name: "old numbering MESSAGE_WALK", req: "0f 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00"},
		{name: "short payload", req: "05 00 00 00 12 00 00 00 00 00 00 00 c0 62 00 00 5b 22"},
		{name: "long payload", req: "03 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 00 00 00 00"},
		{name: "short envelope create", req: "08 00 00 00 13 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1"},
		{name: "short envelope update", req: "0b 00 00 00 17 00 00 00 00 00 00 00 c0 62 00 00 01 00 00 00 44 33 22"},
		{name: "commit without descriptor flag", req: "06 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83"},
		{name: "descriptor flag without descriptor", req: reqCommit68},
		{name: "descriptor flag on FD_R", req: "07 00 00 00 14 00 01 00 00 00 00 00 c0 62 00 00 5b 22 f1 83", fd: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := serve(t, newMemHandler(), nil)
			s.expect(hx(t, reqInit), hx(t, repInit))
			if tc.fd {
				r, w := pipe(t)
				s.send(hx(t, tc.req), int(r.Fd()))
				if err := s.result(); !errors.Is(err, ErrMalformed) {
					t.Fatalf("got %v", err)
				}
				r.Close()
				if !pipeClosed(t, w) {
					t.Fatal("descriptor leaked")
				}
				return
			}
			s.send(hx(t, tc.req))
			if err := s.result(); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

func TestInitFailure(t *testing.T) {
	t.Run("version", func(t *testing.T) {
		s := serve(t, newMemHandler(), nil)
		s.send(hx(t, "02 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 03 00 00 00"))
		if err := s.result(); err == nil || !strings.Contains(err.Error(), "version 3") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("handler", func(t *testing.T) {
		boom := errors.New("store unreachable")
		h := &funcHandler{memHandler: newMemHandler(), init: func(context.Context, uint32) error { return boom }}
		s := serve(t, h, nil)
		s.send(hx(t, reqInit))
		if err := s.result(); !errors.Is(err, boom) {
			t.Fatalf("got %v", err)
		}
	})
}

// TestPanic checks that a panicking handler yields the failure reply, a
// log record, and a session that goes on.
func TestPanic(t *testing.T) {
	h := &funcHandler{memHandler: traceHandler()}
	var creates atomic.Int32
	h.create = func(ctx context.Context) (uint32, error) {
		if creates.Add(1) == 1 {
			panic("kaboom")
		}
		return h.memHandler.MessageCreate(ctx)
	}
	h.fdr = func(context.Context, uint32) (*os.File, error) { panic("kaboom fd") }
	h.walk = func(context.Context) (uint64, []byte, error) { panic("kaboom walk") }
	s := serve(t, h, nil)
	s.expect(hx(t, reqInit), hx(t, repInit))
	s.expect(hx(t, reqMessageCreate), hx(t, repOK0))
	s.expect(hx(t, reqFdR), hx(t, repFdRFail))
	s.expect(hx(t, reqWalk), hx(t, repWalkEnd))
	s.expect(hx(t, reqMessageCreate), hx(t, repMessageCreate))
	log := s.log.String()
	if !strings.Contains(log, "kaboom") || !strings.Contains(log, "MESSAGE_CREATE") || !strings.Contains(log, "goroutine") {
		t.Fatalf("log lacks panic details: %s", log)
	}
	s.expect(hx(t, reqClose), hx(t, repOK1))
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
}

// TestTimeout checks that slow handlers are answered with the failure value
// within the deadline, whether or not they honour ctx, and that a file
// produced too late is closed.
func TestTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	h := &funcHandler{memHandler: traceHandler()}
	r, w := pipe(t)
	fdrDone := make(chan struct{})
	h.commit = func(ctx context.Context, _ uint32, _ *os.File) error {
		<-ctx.Done() // honours ctx
		return ctx.Err()
	}
	h.fdr = func(context.Context, uint32) (*os.File, error) {
		defer close(fdrDone)
		time.Sleep(3 * timeout) // ignores ctx
		return r, nil
	}
	h.walk = func(ctx context.Context) (uint64, []byte, error) {
		<-ctx.Done()
		// Clearly after the deadline: a result that lands at the
		// deadline itself may be answered (it raced it and won).
		time.Sleep(timeout)
		return 1, []byte("late"), nil
	}
	s := serve(t, h, &ServeOptions{OpTimeout: timeout})
	s.expect(hx(t, reqInit), hx(t, repInit))
	s.expect(hx(t, reqMessageCreate), hx(t, repMessageCreate))

	for _, tc := range []struct {
		name      string
		req, want string
		fd        bool
	}{
		{"commit", reqCommit68, repOK0, true},
		{"fd_r", reqFdR, repFdRFail, false},
		{"walk", reqWalk, repWalkEnd, false},
	} {
		start := time.Now()
		var fds []int
		if tc.fd {
			fds = append(fds, int(tempFile(t, traceBody).Fd()))
		}
		s.expect(hx(t, tc.req), hx(t, tc.want), fds...)
		if d := time.Since(start); d < timeout || d > timeout+time.Second {
			t.Errorf("%s: answered after %v with timeout %v", tc.name, d, timeout)
		}
	}
	<-fdrDone
	// The file returned after the deadline must be closed by Serve.
	time.Sleep(50 * time.Millisecond)
	if !pipeClosed(t, w) {
		t.Fatal("late FD_R file was not closed")
	}
	if !strings.Contains(s.log.String(), "did not return within") {
		t.Fatalf("log: %s", s.log)
	}
	s.expect(hx(t, reqClose), hx(t, repOK1))
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
}
