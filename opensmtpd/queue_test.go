package opensmtpd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

var errDown = errors.New("injected: store down")

// flaky wraps a Backend: while down, every call fails as unavailable;
// while hang, every call blocks until its ctx is done.
type flaky struct {
	driver.Backend
	down atomic.Bool
	hang atomic.Bool
}

func (f *flaky) fail(ctx context.Context) error {
	if f.hang.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	if f.down.Load() {
		return errDown
	}
	return nil
}

func (f *flaky) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	if err := f.fail(ctx); err != nil {
		return nil, driver.Attrs{}, err
	}
	return f.Backend.Get(ctx, key)
}

func (f *flaky) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	if err := f.fail(ctx); err != nil {
		return "", err
	}
	return f.Backend.Put(ctx, key, r, opts)
}

func (f *flaky) Delete(ctx context.Context, key string) error {
	if err := f.fail(ctx); err != nil {
		return err
	}
	return f.Backend.Delete(ctx, key)
}

func (f *flaky) List(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	if err := f.fail(ctx); err != nil {
		return nil, false, err
	}
	return f.Backend.List(ctx, prefix, after, limit)
}

func (f *flaky) ErrorCode(err error) driver.Code {
	if errors.Is(err, errDown) {
		return driver.CodeUnavailable
	}
	return f.Backend.ErrorCode(err)
}

// newTestQueue returns a Queue over a fresh in-memory store behind a
// flaky wrapper, initialised as Serve would.
func newTestQueue(t *testing.T) (*Queue, *queue.Store, *flaky) {
	t.Helper()
	fb := &flaky{Backend: mem.OpenBackend("")}
	s, err := queue.New(fb, &queue.Options{Retries: -1, Node: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	q := newQueueOn(t, s)
	return q, s, fb
}

func newQueueOn(t *testing.T, s *queue.Store) *Queue {
	t.Helper()
	q := NewQueue(s, &QueueOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), TempDir: t.TempDir()})
	if err := q.Init(opCtx(t), APIVersion); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Shutdown(context.Background()) })
	return q
}

// opCtx is the ctx Serve gives a call: bounded by the op timeout.
func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func bodyTemp(t *testing.T, s string) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "body")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
	f.Seek(0, 0)
	t.Cleanup(func() { f.Close() })
	return f
}

func blob(rcpt string) []byte {
	return []byte("version: 3\ndispatcher: deliver\ntype: mda\nrcpt: " + rcpt + "\nretry: 0\n")
}

// accept runs one SMTP transaction's worth of calls and returns the ids.
func accept(t *testing.T, q *Queue, body string, rcpts ...string) (uint32, []uint64) {
	t.Helper()
	msgid, err := q.MessageCreate(opCtx(t))
	if err != nil {
		t.Fatalf("MessageCreate: %v", err)
	}
	var ids []uint64
	for _, r := range rcpts {
		id, err := q.EnvelopeCreate(opCtx(t), msgid, blob(r))
		if err != nil {
			t.Fatalf("EnvelopeCreate: %v", err)
		}
		if uint32(id>>32) != msgid {
			t.Fatalf("evpid %016x not in msgid %08x", id, msgid)
		}
		ids = append(ids, id)
	}
	if err := q.MessageCommit(opCtx(t), msgid, bodyTemp(t, body)); err != nil {
		t.Fatalf("MessageCommit: %v", err)
	}
	return msgid, ids
}

func readAll(t *testing.T, f *os.File) string {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// walkAll walks to the end, failing on a duplicate or on more than
// limit skips.
func walkAll(t *testing.T, q *Queue, limit int) []uint64 {
	t.Helper()
	var got []uint64
	skips := 0
	for {
		id, data, err := q.EnvelopeWalk(opCtx(t))
		switch {
		case err == io.EOF:
			return got
		case errors.Is(err, ErrSkip):
			if skips++; skips > limit {
				t.Fatalf("walk: more than %d skips", limit)
			}
			continue
		case err != nil:
			t.Fatalf("walk: %v", err)
		}
		if slices.Contains(got, id) {
			t.Fatalf("walk returned %016x twice", id)
		}
		if !bytes.HasPrefix(data, []byte("version: 3\n")) {
			t.Fatalf("walk blob of %016x: %q", id, data)
		}
		got = append(got, id)
	}
}

func TestQueueLifecycle(t *testing.T) {
	q, s, _ := newTestQueue(t)
	msgid, ids := accept(t, q, "Subject: hi\n\nbody\n", "a@x", "b@x")

	for range 2 { // a fresh descriptor each time
		f, err := q.MessageFdR(opCtx(t), msgid)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, f); got != "Subject: hi\n\nbody\n" {
			t.Fatalf("FD_R body %q", got)
		}
	}
	got, err := q.EnvelopeLoad(opCtx(t), ids[0])
	if err != nil || !bytes.Equal(got, blob("a@x")) {
		t.Fatalf("load: %q, %v", got, err)
	}
	upd := append(blob("a@x"), "errorline: 451 try later\n"...)
	if err := q.EnvelopeUpdate(opCtx(t), ids[0], upd); err != nil {
		t.Fatal(err)
	}
	// A second update uses the cached version.
	upd2 := append(upd, "esc-class: 4\n"...)
	if err := q.EnvelopeUpdate(opCtx(t), ids[0], upd2); err != nil {
		t.Fatal(err)
	}
	if e, err := s.Load(opCtx(t), queue.EvpID(ids[0])); err != nil || !bytes.Equal(e.Data, upd2) {
		t.Fatalf("stored after update: %q, %v", e.Data, err)
	}
	// A bounce into the committed message is visible at once.
	b, err := q.EnvelopeCreate(opCtx(t), msgid, blob("bounce"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(opCtx(t), queue.EvpID(b)); err != nil {
		t.Fatalf("bounce envelope: %v", err)
	}
	for _, id := range append(ids, b) {
		if err := q.EnvelopeDelete(opCtx(t), id); err != nil {
			t.Fatal(err)
		}
	}
	// The content goes in a batch, a moment after the last envelope.
	if err := s.Flush(opCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenContent(opCtx(t), queue.MsgID(msgid)); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("content after the last envelope: %v, want ErrNotFound", err)
	}
	if err := q.Close(opCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func TestQueueRollback(t *testing.T) {
	q, s, _ := newTestQueue(t)
	msgid, err := q.MessageCreate(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.EnvelopeCreate(opCtx(t), msgid, blob("a@x")); err != nil {
		t.Fatal(err)
	}
	if err := q.MessageDelete(opCtx(t), msgid); err != nil {
		t.Fatal(err)
	}
	if err := q.MessageDelete(opCtx(t), msgid); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if got := walkAll(t, newQueueOn(t, s), 10); len(got) != 0 {
		t.Fatalf("walk after rollback: %x", got)
	}
	p, err := s.WalkPage(opCtx(t), "", 100)
	if err != nil || len(p.IDs) != 0 {
		t.Fatalf("store after rollback: %v %v", p.IDs, err)
	}
}

func TestQueueWalkSnapshot(t *testing.T) {
	q1, s, _ := newTestQueue(t)
	var before []uint64
	for i := range 5 {
		_, ids := accept(t, q1, "m", fmt.Sprintf("r%d@x", i), "other@x")
		before = append(before, ids...)
	}
	q1.Shutdown(opCtx(t))

	q := newQueueOn(t, s)
	// Mail accepted by this process before and during the walk is known
	// to smtpd already and must not be walked.
	_, mine := accept(t, q, "new", "n@x")
	first, _, err := q.EnvelopeWalk(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	_, mine2 := accept(t, q, "new2", "n2@x")
	rest := walkAll(t, q, 20)
	got := append([]uint64{first}, rest...)
	for _, id := range append(mine, mine2...) {
		if slices.Contains(got, id) {
			t.Fatalf("walk returned %016x, created by this process", id)
		}
	}
	slices.Sort(before)
	if !slices.Equal(got, before) {
		t.Fatalf("walk:\n got %x\nwant %x (sorted, so grouped by msgid)", got, before)
	}
	// The walk stays over.
	if _, _, err := q.EnvelopeWalk(opCtx(t)); err != io.EOF {
		t.Fatalf("walk after the end: %v", err)
	}
}

func TestQueueWalkSkipsDeleted(t *testing.T) {
	q1, s, _ := newTestQueue(t)
	_, a := accept(t, q1, "m", "a@x")
	_, b := accept(t, q1, "m", "b@x")
	q := newQueueOn(t, s)
	// Deleted after the listing may have seen it, before it is returned.
	first, _, err := q.EnvelopeWalk(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	other := a[0]
	if first == a[0] {
		other = b[0]
	}
	if err := s.DeleteEnvelope(opCtx(t), queue.EvpID(other)); err != nil {
		t.Fatal(err)
	}
	if rest := walkAll(t, q, 10); len(rest) > 1 {
		t.Fatalf("walk went on with %x", rest)
	}
}

func TestQueueWalkOutage(t *testing.T) {
	q1, s, fb := newTestQueue(t)
	var want []uint64
	for i := range 3 {
		_, ids := accept(t, q1, "m", fmt.Sprintf("r%d@x", i))
		want = append(want, ids...)
	}
	q := newQueueOn(t, s)
	fb.down.Store(true)
	start := time.Now()
	for range 3 {
		_, _, err := q.EnvelopeWalk(opCtx(t))
		if !errors.Is(err, ErrSkip) {
			t.Fatalf("walk while down: %v, want ErrSkip", err)
		}
	}
	if d := time.Since(start); d > 3*walkPoll+time.Second {
		t.Fatalf("3 walk calls took %v", d)
	}
	fb.down.Store(false)
	got := walkAll(t, q, 100)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("walk after outage:\n got %x\nwant %x", got, want)
	}
}

func TestQueueStoreDown(t *testing.T) {
	q, s, fb := newTestQueue(t)
	msgid, err := q.MessageCreate(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.EnvelopeCreate(opCtx(t), msgid, blob("a@x")); err != nil {
		t.Fatalf("EnvelopeCreate needs no store: %v", err)
	}
	fb.down.Store(true)
	// MessageCreate makes no request while the queue has a block of IDs,
	// so it may succeed; the commit may not.
	if m2, err := q.MessageCreate(opCtx(t)); err == nil {
		if _, err := q.EnvelopeCreate(opCtx(t), m2, blob("b@x")); err != nil {
			t.Fatal(err)
		}
		if err := q.MessageCommit(opCtx(t), m2, bodyTemp(t, "y")); err == nil {
			t.Fatal("MessageCommit of a message created with the store down succeeded")
		}
		if err := q.MessageDelete(opCtx(t), m2); err != nil {
			t.Fatalf("MessageDelete after a failed commit: %v", err)
		}
	}
	if err := q.MessageCommit(opCtx(t), msgid, bodyTemp(t, "x")); err == nil {
		t.Fatal("MessageCommit succeeded with the store down")
	}
	if err := q.MessageDelete(opCtx(t), msgid); err != nil {
		t.Fatalf("MessageDelete after a failed commit: %v", err)
	}
	if _, err := q.MessageFdR(opCtx(t), msgid); err == nil {
		t.Fatal("FD_R succeeded")
	}
	fb.down.Store(false)
	// Recovery: the next transaction works.
	accept(t, q, "again", "a@x")
	if p, err := s.WalkPage(opCtx(t), "", 100); err != nil || len(p.IDs) != 1 {
		t.Fatalf("store after recovery: %v %v", p.IDs, err)
	}
}

func TestQueueCommitTimeout(t *testing.T) {
	q, s, fb := newTestQueue(t)
	msgid, err := q.MessageCreate(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.EnvelopeCreate(opCtx(t), msgid, blob("a@x")); err != nil {
		t.Fatal(err)
	}
	fb.hang.Store(true)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	start := time.Now()
	err = q.MessageCommit(ctx, msgid, bodyTemp(t, "x"))
	if err == nil {
		t.Fatal("commit succeeded against a hanging store")
	}
	if ctx.Err() != nil {
		t.Fatalf("commit returned after its deadline (%v): Serve would have answered without it", time.Since(start))
	}
	fb.hang.Store(false)
	if p, err := s.WalkPage(opCtx(t), "", 100); err != nil || len(p.IDs) != 0 {
		t.Fatalf("store after a timed-out commit: %v %v", p.IDs, err)
	}
}

func TestQueueCorruptBody(t *testing.T) {
	q, s, _ := newTestQueue(t)
	// Larger than what an envelope keeps: the content has an object of
	// its own to damage.
	msgid, _ := accept(t, q, "Subject: x\n\nintact\n"+strings.Repeat("x", queue.MaxInlineContent), "a@x")
	key := layout.Key(layout.Handle{Kind: layout.Content, Msg: msgid})
	b := s.Backend()
	rc, _, err := b.Get(opCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(rc)
	rc.Close()
	raw = []byte(strings.Replace(string(raw), "intact", "broken", 1))
	if _, err := b.Put(opCtx(t), key, bytes.NewReader(raw), &driver.PutOptions{Size: int64(len(raw))}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.MessageFdR(opCtx(t), msgid); !errors.Is(err, queue.ErrCorrupt) {
		t.Fatalf("FD_R of a corrupt body: %v, want ErrCorrupt", err)
	}
	qs, err := s.Quarantined(opCtx(t))
	if err != nil || len(qs) != 1 || qs[0].ID != queue.MsgID(msgid) {
		t.Fatalf("quarantined: %v %v", qs, err)
	}
}

func TestQueueUpdateStaleCache(t *testing.T) {
	q, s, _ := newTestQueue(t)
	_, ids := accept(t, q, "m", "a@x")
	if _, err := q.EnvelopeLoad(opCtx(t), ids[0]); err != nil { // caches the version
		t.Fatal(err)
	}
	e, err := s.Load(opCtx(t), queue.EvpID(ids[0]))
	if err != nil {
		t.Fatal(err)
	}
	e.Data = blob("changed@x")
	if err := s.Update(opCtx(t), e); err != nil {
		t.Fatal(err)
	}
	if err := q.EnvelopeUpdate(opCtx(t), ids[0], blob("final@x")); err != nil {
		t.Fatalf("update with a stale cached version: %v", err)
	}
	if e, _ := s.Load(opCtx(t), queue.EvpID(ids[0])); !bytes.Equal(e.Data, blob("final@x")) {
		t.Fatalf("stored %q", e.Data)
	}
}

// Serve over the Queue, as smtpd sees it, with the trace's sequence.
func TestQueueServe(t *testing.T) {
	s, err := mem.Open(t.Context(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	q := NewQueue(s, &QueueOptions{TempDir: t.TempDir()})
	sess := serve(t, q, nil)
	sess.expect(hx(t, "02 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 02 00 00 00"), hx(t, "00 00 00 00 10 00 00 00 00 00 00 00 c2 62 00 00"))
	sess.expect(hx(t, "0c 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00"), hx(t, "00 00 00 00 14 00 00 00 00 00 00 00 c2 62 00 00 ff ff ff ff"))
	sess.send(hx(t, "03 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00"))
	if got, _ := sess.recv(); !bytes.Equal(got[16:], []byte{1, 0, 0, 0}) {
		t.Fatalf("CLOSE reply % x", got)
	}
	if err := sess.wait(); err != nil {
		t.Fatal(err)
	}
}

// sharedStore opens a Store of node on the shared in-memory storage name,
// with a fast heartbeat.
func sharedStore(t *testing.T, name, node string) *queue.Store {
	t.Helper()
	s, err := queue.New(mem.OpenBackend(name), &queue.Options{
		Node: node, Retries: -1,
		HeartbeatInterval: 50 * time.Millisecond, NodeTTL: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func sharedQueue(t *testing.T, s *queue.Store, discover func(context.Context, queue.EvpID) error) *Queue {
	t.Helper()
	q := NewQueue(s, &QueueOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), TempDir: t.TempDir(), Shared: true, Discover: discover})
	if err := q.Init(opCtx(t), APIVersion); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Shutdown(context.Background()) })
	return q
}

// envelopes lists the committed envelopes of s.
func envelopes(t *testing.T, s *queue.Store) []queue.EvpID {
	t.Helper()
	var ids []queue.EvpID
	for id, err := range s.Walk(opCtx(t)) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func TestQueueSharedRestartWalk(t *testing.T) {
	name := "shared-walk-" + t.Name()
	a := sharedQueue(t, sharedStore(t, name, "a"), nil)
	b := sharedQueue(t, sharedStore(t, name, "b"), nil)
	_, mineA := accept(t, a, "m", "1@x", "2@x")
	_, mineB := accept(t, b, "m", "3@x")
	// A bounce into a committed message is claimed too.
	bounce, err := a.EnvelopeCreate(opCtx(t), uint32(mineA[0]>>32), blob("bounce"))
	if err != nil {
		t.Fatal(err)
	}
	mineA = append(mineA, bounce)
	a.Shutdown(opCtx(t))

	// A restarted a (same node, new process) walks its own envelopes only.
	a2 := sharedQueue(t, sharedStore(t, name, "a"), nil)
	got := walkAll(t, a2, 50)
	slices.Sort(got)
	slices.Sort(mineA)
	if !slices.Equal(got, mineA) {
		t.Fatalf("walk of node a:\n got %x\nwant %x (b has %x)", got, mineA, mineB)
	}
	// And updates and deletes them through its claims.
	if err := a2.EnvelopeUpdate(opCtx(t), got[0], blob("retry")); err != nil {
		t.Fatal(err)
	}
	for _, id := range got {
		if err := a2.EnvelopeDelete(opCtx(t), id); err != nil {
			t.Fatal(err)
		}
	}
}

func TestQueueSharedTakeover(t *testing.T) {
	name := "shared-takeover-" + t.Name()
	found := make(chan queue.EvpID, 10)
	b := sharedQueue(t, sharedStore(t, name, "b"), func(ctx context.Context, id queue.EvpID) error {
		found <- id
		return nil
	})
	if got := walkAll(t, b, 50); len(got) != 0 {
		t.Fatalf("b's walk: %x", got)
	}
	sa := sharedStore(t, name, "a")
	a := sharedQueue(t, sa, nil)
	_, ids := accept(t, a, "m", "1@x", "2@x")
	_, ids2 := accept(t, a, "m", "3@x")
	ids = append(ids, ids2...)
	a.Shutdown(opCtx(t)) // a stops heartbeating: it is dead
	sa.Close()

	var got []uint64
	timeout := time.After(10 * time.Second)
	for len(got) < len(ids) {
		select {
		case id := <-found:
			got = append(got, uint64(id))
		case <-timeout:
			t.Fatalf("discovered %x of %x", got, ids)
		}
	}
	// One envelope per message is discovered as it is; the others of the
	// same message are moved into messages of their own first, since
	// smtpd's scheduler ignores a discovered envelope of a message it knows.
	msgs := make(map[uint32]int)
	for _, id := range got {
		msgs[uint32(id>>32)]++
	}
	if len(msgs) != len(got) {
		t.Fatalf("discovered two envelopes of one message: %x", got)
	}
	if n := len(envelopes(t, b.s)); n != len(ids) {
		t.Fatalf("%d envelopes in the store, want %d", n, len(ids))
	}
	ids = got
	// b now owns them: smtpd loads, delivers and deletes them through b.
	for _, id := range ids {
		if _, err := b.EnvelopeLoad(opCtx(t), id); err != nil {
			t.Fatal(err)
		}
		if err := b.EnvelopeDelete(opCtx(t), id); err != nil {
			t.Fatal(err)
		}
		// The body goes in a batch, a moment after its last envelope.
		if err := b.s.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		f, err := b.MessageFdR(opCtx(t), uint32(id>>32))
		if err == nil {
			f.Close()
			t.Fatalf("body of %016x still there after its last envelope", id)
		}
	}
	if n := len(envelopes(t, b.s)); n != 0 {
		t.Fatalf("%d envelopes left", n)
	}
}
