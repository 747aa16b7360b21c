package opensmtpd

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver/drivertest"
)

// frame68 builds a request in the 6.8 header layout, as smtpd's queue
// process (pid 0x62c0) sends it.
func frame68(typ Type, payload []byte, withFD bool) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(payload))
	binary.LittleEndian.PutUint32(b[0:], uint32(typ))
	binary.LittleEndian.PutUint16(b[4:], uint16(HeaderSize+len(payload)))
	if withFD {
		binary.LittleEndian.PutUint16(b[6:], 1)
	}
	binary.LittleEndian.PutUint32(b[12:], 0x62c0)
	return append(b, payload...)
}

func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// call sends a request and returns the reply's payload, after checking
// that Serve is still running.
func (s *session) call(req []byte, fds ...int) []byte {
	s.t.Helper()
	s.send(req, fds...)
	rep, fd := s.recv()
	if fd >= 0 {
		s.t.Fatalf("unexpected descriptor in the reply to %s", Type(req[0]))
	}
	return rep[HeaderSize:]
}

// result is the r field of a reply: 1 success, 0 a temporary failure.
func rOf(t *testing.T, what string, payload []byte) uint32 {
	t.Helper()
	if len(payload) < 4 {
		t.Fatalf("%s: reply payload % x", what, payload)
	}
	return binary.LittleEndian.Uint32(payload)
}

// TestServeOutage: during a store outage, smtpd's commit and update get
// r=0, which smtpd answers to its client as a temporary failure, and
// Serve keeps running; once the store is back, the same session commits
// and updates again and nothing committed before the outage is lost.
func TestServeOutage(t *testing.T) {
	f := drivertest.New(mem.OpenBackend(""), 1)
	st, err := queue.New(f, &queue.Options{Node: "smtpd", Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Lift(); st.Close() })
	q := NewQueue(st, &QueueOptions{TempDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	s := serve(t, q, &ServeOptions{OpTimeout: 2 * time.Second})
	s.expect(hx(t, reqInit), hx(t, repInit))

	create := func(rcpt string) (uint32, uint64) {
		t.Helper()
		p := s.call(frame68(TypeMessageCreate, nil, false))
		if rOf(t, "MESSAGE_CREATE", p) != 1 {
			t.Fatalf("MESSAGE_CREATE failed: % x", p)
		}
		msgid := binary.LittleEndian.Uint32(p[4:])
		p = s.call(frame68(TypeEnvelopeCreate, append(u32(msgid), blob(rcpt)...), false))
		if rOf(t, "ENVELOPE_CREATE", p) != 1 {
			t.Fatalf("ENVELOPE_CREATE failed: % x", p)
		}
		return msgid, binary.LittleEndian.Uint64(p[4:])
	}
	commit := func(msgid uint32) uint32 {
		t.Helper()
		body := bodyTemp(t, "Subject: test\n\nbody\n")
		return rOf(t, "MESSAGE_COMMIT", s.call(frame68(TypeMessageCommit, u32(msgid), true), int(body.Fd())))
	}
	accept := func(rcpt string) (uint32, uint64, uint32) {
		t.Helper()
		msgid, evpid := create(rcpt)
		return msgid, evpid, commit(msgid)
	}
	update := func(evpid uint64, rcpt string) uint32 {
		return rOf(t, "ENVELOPE_UPDATE", s.call(frame68(TypeEnvelopeUpdate, append(u64(evpid), blob(rcpt)...), false)))
	}

	_, before, r := accept("before@x")
	if r != 1 {
		t.Fatal("commit before the outage failed")
	}
	waitQuiet(t, f)

	during, _ := create("during@x") // MESSAGE_CREATE needs the store
	waitQuiet(t, f)
	f.Outage(false)
	start := time.Now()
	if r := commit(during); r != 0 {
		t.Fatalf("MESSAGE_COMMIT in the outage: r=%d, want 0", r)
	}
	if r := update(before, "updated@x"); r != 0 {
		t.Fatalf("ENVELOPE_UPDATE in the outage: r=%d, want 0", r)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the calls in the outage took %v", d)
	}
	select {
	case <-s.done:
		t.Fatalf("Serve returned in the outage: %v", s.err)
	default:
	}

	f.Lift()
	if r := update(before, "updated@x"); r != 1 {
		t.Fatalf("ENVELOPE_UPDATE after the outage: r=%d", r)
	}
	_, after, r := accept("after@x")
	if r != 1 {
		t.Fatal("commit after the outage failed")
	}
	if rOf(t, "CLOSE", s.call(frame68(TypeClose, nil, false))) != 1 {
		t.Fatal("CLOSE failed")
	}
	if err := s.wait(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	e, err := st.Load(t.Context(), queue.EvpID(before))
	if err != nil || !bytes.Equal(e.Data, blob("updated@x")) {
		t.Fatalf("the envelope committed before the outage: %v, %q", err, e.Data)
	}
	var got []uint64
	for id, err := range st.Walk(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, uint64(id))
	}
	slices.Sort(got)
	want := []uint64{before, after}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("the store holds %x, want %x", got, want)
	}
}

// waitQuiet waits until f has seen no request for a while.
func waitQuiet(t *testing.T, f *drivertest.Faults) {
	t.Helper()
	if !f.WaitQuiet(20*time.Millisecond, 4*time.Second) {
		t.Fatal("background requests do not end")
	}
}
