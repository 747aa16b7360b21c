package queue_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// gated holds back every write, once armed, until want of them are in
// flight at the same time, or until a timeout, which it records; it
// counts the writes to block records, and may refuse them.
type gated struct {
	driver.Backend
	mu       sync.Mutex
	armed    bool
	want     int
	n        int
	open     chan struct{}
	timedOut bool
	keys     []string
	blkPuts  int
	noBlk    bool   // refuse writes to block records
	refuse   string // refuse writes under this prefix, if not ""
	onPut    func(key string)
}

func (g *gated) arm(want int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed, g.want, g.n, g.open, g.keys = true, want, 0, make(chan struct{}), nil
}

func (g *gated) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	g.mu.Lock()
	if strings.HasPrefix(key, "blk/") {
		g.blkPuts++
		if g.noBlk {
			g.mu.Unlock()
			return "", errors.New("refused")
		}
	}
	if g.refuse != "" && strings.HasPrefix(key, g.refuse) {
		g.mu.Unlock()
		// After the writes beside it have landed.
		time.Sleep(50 * time.Millisecond)
		return "", errors.New("refused")
	}
	armed, open := g.armed, g.open
	if armed {
		g.keys = append(g.keys, key)
		g.n++
		if g.n == g.want {
			close(g.open)
			g.armed = false
		}
	}
	onPut := g.onPut
	g.mu.Unlock()
	if armed {
		select {
		case <-open:
		case <-time.After(5 * time.Second):
			g.mu.Lock()
			g.timedOut = true
			g.mu.Unlock()
		}
	}
	if onPut != nil {
		onPut(key)
	}
	return g.Backend.Put(ctx, key, r, o)
}

// refuseBlk makes writes to block records fail, or succeed again.
func (g *gated) refuseBlk(refuse bool) {
	g.mu.Lock()
	g.noBlk = refuse
	g.mu.Unlock()
}

// refusePrefix makes writes under prefix fail, or, with "", none.
func (g *gated) refusePrefix(prefix string) {
	g.mu.Lock()
	g.refuse = prefix
	g.mu.Unlock()
}

func (g *gated) blkWrites() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.blkPuts
}

// rawBits reads the committed and aborted bits of m straight from its
// block record.
func rawBits(t *testing.T, b driver.Backend, m queue.MsgID) (committed, aborted bool) {
	t.Helper()
	first := uint32(m) &^ (layout.BlockSize - 1)
	rc, _, err := b.Get(t.Context(), layout.Key(layout.Handle{Kind: layout.Block, Msg: first}))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var r struct{ Committed, Aborted []byte }
	if err := json.NewDecoder(rc).Decode(&r); err != nil {
		t.Fatal(err)
	}
	lo := uint32(m) & (layout.BlockSize - 1)
	has := func(bm []byte) bool { return int(lo/8) < len(bm) && bm[lo/8]&(1<<(lo%8)) != 0 }
	return has(r.Committed), has(r.Aborted)
}

// brokenAfterEnvelope is a content source that fails once the
// envelope of m is stored, so that the envelope outlives the content.
type brokenAfterEnvelope struct {
	b driver.Backend
	m queue.MsgID
}

func (r brokenAfterEnvelope) Read([]byte) (int, error) {
	for range 1000 {
		keys, _, _ := r.b.List(context.Background(), layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(r.m)}), "", 1)
		if len(keys) > 0 {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, errors.New("broken stream")
}

// clocked opens a Store of node on b with the clock clk and the grace
// period grace (the default if 0), keeping every content in an object of
// its own.
func clocked(t *testing.T, b driver.Backend, node string, clk *fuzzClock, grace time.Duration) *queue.Store {
	t.Helper()
	return clockedInline(t, b, node, clk, grace, -1)
}

// clockedInline is clocked with Options.InlineContent set to inline.
func clockedInline(t *testing.T, b driver.Backend, node string, clk *fuzzClock, grace time.Duration, inline int) *queue.Store {
	t.Helper()
	s, err := queue.New(b, &queue.Options{Node: node, Clock: clk.Now, Grace: grace, InlineContent: inline})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// aloneTx begins a transaction of one envelope on s.
func aloneTx(t *testing.T, s *queue.Store) (*queue.Tx, queue.EvpID) {
	t.Helper()
	tx, err := s.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	id, err := tx.AddEnvelope([]byte("rcpt@example.org"))
	if err != nil {
		t.Fatal(err)
	}
	return tx, id
}

// TestCommitContentOneRound: a message of one envelope commits in one
// round, its content and envelope in flight together, with no write of
// its due pointer and none to the block record before CommitContent
// returns; its due group and the record learn the commit in the
// background, and the committing Store sees the message at once with one
// read.
func TestCommitContentOneRound(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	s, err := queue.New(g, &queue.Options{Node: "a", InlineContent: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tx, id := aloneTx(t, s)
	before := g.blkWrites() // the block of IDs
	g.arm(2)
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	if g.timedOut {
		t.Fatalf("the writes of the commit were not in flight together: %v", g.keys)
	}
	if len(g.keys) != 2 {
		t.Fatalf("the commit wrote %v, want the content and the envelope", g.keys)
	}
	if keys, _, _ := g.List(ctx, "due/", "", 10); len(keys) != 0 {
		t.Fatalf("due pointers %v before CommitContent returned", keys)
	}
	if n := g.blkWrites() - before; n != 0 {
		t.Fatalf("%d writes of the block record before CommitContent returned", n)
	}
	if c, _ := rawBits(t, g, tx.ID()); c {
		t.Fatal("the committed bit is stored before the background swap")
	}
	e, err := s.Load(ctx, id)
	if err != nil || string(e.Data) != "rcpt@example.org" {
		t.Fatalf("Load = %v, %v", e, err)
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _ := rawBits(t, g, tx.ID()); !c {
		t.Fatal("the committed bit is not stored after Flush")
	}
	if keys, _, _ := g.List(ctx, "due/", "", 10); len(keys) != 1 || !strings.Contains(keys[0], "/g") {
		t.Fatalf("due pointers %v after Flush, want the message's group", keys)
	}
	if err := tx.Rollback(ctx); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("Rollback after the commit = %v, want ErrClosed", err)
	}
}

// TestCommitContentReaders: another node that finds a message committed
// in one round before its bit is stored sees it, and sets the bit itself,
// after which the committer's Rollback cannot undo it; a message whose
// content is not stored is seen by nobody, and its Rollback removes it.
func TestCommitContentReaders(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	clk := &fuzzClock{now: time.Now()}
	a := clocked(t, g, "a", clk, 0)
	defer a.Close()
	b := clocked(t, g.Backend, "b", clk, 0)
	defer b.Close()

	t.Run("due scan", func(t *testing.T) {
		// The group goes before the bit, and another node's due scan
		// finds the message by it at once, with no write of the
		// record: the group names only committed messages.
		tx, id := aloneTx(t, a)
		g.refuseBlk(true)
		defer g.refuseBlk(false)
		if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
			t.Fatal(err)
		}
		a.Flush(ctx) // the swap is refused
		before := g.blkWrites()
		due, err := b.Due(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(due) != 1 || due[0].ID != id {
			t.Fatalf("another node's Due = %v, want the message its group names", due)
		}
		if n := g.blkWrites() - before; n != 0 {
			t.Fatalf("the due scan wrote the block record %d times", n)
		}
		c, err := b.ClaimEnvelope(ctx, due[0], time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		b.Flush(ctx)
		// The group's one entry is gone: the next scan removes it.
		if due, err := b.Due(ctx, 10); err != nil || len(due) != 0 {
			t.Fatalf("Due after the delete = %v, %v", due, err)
		}
		b.Flush(ctx)
		if keys, _, _ := g.List(ctx, "due/", "", 10); len(keys) != 0 {
			t.Fatalf("due pointers %v left after the delivery", keys)
		}
	})

	t.Run("committed", func(t *testing.T) {
		tx, id := aloneTx(t, a)
		g.refuseBlk(true) // the committer never gets to write the bit
		defer g.refuseBlk(false)
		if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
			t.Fatal(err)
		}
		a.Flush(ctx) // the swap is refused
		if c, _ := rawBits(t, g, tx.ID()); c {
			t.Fatal("the committed bit is stored, though its writes were refused")
		}
		e, err := b.Load(ctx, id)
		if err != nil || string(e.Data) != "rcpt@example.org" {
			t.Fatalf("another node's Load = %v, %v", e, err)
		}
		if c, _ := rawBits(t, g, tx.ID()); !c {
			t.Fatal("the reader did not store the committed bit")
		}
		walked := 0
		for w, err := range b.Walk(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			if w == id {
				walked++
			}
		}
		if walked != 1 {
			t.Fatalf("Walk yields the envelope %d times", walked)
		}
	})

	t.Run("no content", func(t *testing.T) {
		tx, id := aloneTx(t, a)
		_, err := tx.CommitContent(ctx, io.MultiReader(strings.NewReader("part"), brokenAfterEnvelope{g.Backend, tx.ID()}))
		if err == nil {
			t.Fatal("CommitContent with a failing reader succeeded")
		}
		if keys, _, _ := g.List(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(tx.ID())}), "", 10); len(keys) != 1 {
			t.Fatalf("envelopes stored: %v, want the one written with the content", keys)
		}
		if _, err := b.Load(ctx, id); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("Load of a message without content = %v, want ErrNotFound", err)
		}
		for w, err := range b.Walk(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			if w == id {
				t.Fatal("Walk yields a message without content")
			}
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if _, ab := rawBits(t, g, tx.ID()); !ab {
			t.Fatal("the rollback did not set the aborted bit")
		}
		if keys, _, _ := g.List(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(tx.ID())}), "", 10); len(keys) != 0 {
			t.Fatalf("left after the rollback: %v", keys)
		}
	})

	t.Run("rollback after a lost answer", func(t *testing.T) {
		// Both writes land, the committer loses the answer of one and
		// rolls back; a reader that found both first committed it.
		tx, id := aloneTx(t, a)
		g.mu.Lock()
		g.onPut = func(key string) {
			if strings.HasPrefix(key, "msg/") {
				time.Sleep(50 * time.Millisecond)
			}
		}
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			g.onPut = nil
			g.mu.Unlock()
		}()
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			_, err := tx.CommitContent(cctx, strings.NewReader("hello"))
			done <- err
		}()
		// Wait for both objects, as a reader would find them.
		for i := 0; ; i++ {
			if i == 500 {
				t.Fatal("the commit's writes never landed")
			}
			keys, _, _ := g.List(ctx, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(tx.ID())}), "", 1)
			if len(keys) == 1 {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		cancel()
		<-done
		if _, err := b.Load(ctx, id); err != nil {
			t.Fatalf("Load of a message whose writes landed: %v", err)
		}
		if err := tx.Rollback(ctx); err != nil && !errors.Is(err, queue.ErrConflict) && !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Rollback = %v, want a conflict: the message committed", err)
		}
		if _, err := b.Load(ctx, id); err != nil {
			t.Fatalf("Rollback undid a committed message: %v", err)
		}
	})
}

// TestSweepCommitsAlone: a message committed in one round whose
// committer died before storing its bit is kept by a sweep past the grace
// period, which stores the bit, while one whose content never landed is
// aborted and removed.
func TestSweepCommitsAlone(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	clk := &fuzzClock{now: time.Now()}
	const grace = 15 * time.Minute
	a := clocked(t, g, "a", clk, grace)
	kept, keptID := aloneTx(t, a)
	lost, lostID := aloneTx(t, a)
	g.refuseBlk(true)
	if _, err := kept.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := lost.CommitContent(ctx, io.MultiReader(strings.NewReader("part"), brokenAfterEnvelope{g.Backend, lost.ID()})); err == nil {
		t.Fatal("CommitContent with a failing reader succeeded")
	}
	g.refusePrefix("due/")
	a.Close() // dies: neither bit is written, nor the kept one's due group
	g.refuseBlk(false)
	g.refusePrefix("")

	sw := clocked(t, g.Backend, "sweeper", clk, grace)
	defer sw.Close()
	st, err := sw.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Committed != 0 || st.Aborted != 0 || st.Open != 2 {
		t.Fatalf("a sweep within the grace period: %+v, want 2 open", st)
	}
	clk.Advance(grace + time.Second)
	if st, err = sw.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Committed != 1 || st.Aborted != 1 {
		t.Fatalf("a sweep past the grace period: %+v, want 1 committed and 1 aborted", st)
	}
	if c, _ := rawBits(t, g, kept.ID()); !c {
		t.Fatal("the sweep did not store the committed bit")
	}
	if due, err := sw.Due(ctx, 10); err != nil || len(due) != 1 || due[0].ID != keptID {
		t.Fatalf("Due after the sweep = %v, %v: the kept message has no due pointer", due, err)
	}
	if e, err := sw.Load(ctx, keptID); err != nil || string(e.Data) != "rcpt@example.org" {
		t.Fatalf("Load of the kept message = %v, %v", e, err)
	}
	rc, err := sw.OpenContent(ctx, kept.ID())
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(body, []byte("hello")) {
		t.Fatalf("content %q, %v", body, err)
	}
	if _, err := sw.Load(ctx, lostID); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("Load of the aborted message = %v, want ErrNotFound", err)
	}
	if keys, _, _ := g.List(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(lost.ID())}), "", 10); len(keys) != 0 {
		t.Fatalf("left of the aborted message: %v", keys)
	}
}

// TestCommitContentLate: a commit whose writes are answered when half
// the grace period is past no longer counts as committed by its writes:
// it swaps the block record before it returns, as Commit does.
func TestCommitContentLate(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	clk := &fuzzClock{now: time.Now()}
	const grace = 15 * time.Minute
	s := clocked(t, g, "a", clk, grace)
	defer s.Close()
	tx, id := aloneTx(t, s)
	before := g.blkWrites()
	g.mu.Lock()
	g.onPut = func(key string) {
		if strings.HasPrefix(key, "msg/") {
			clk.Advance(grace/2 + time.Second)
		}
	}
	g.mu.Unlock()
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	if n := g.blkWrites() - before; n != 1 {
		t.Fatalf("%d writes of the block record before a late commit returned, want 1", n)
	}
	if c, _ := rawBits(t, g, tx.ID()); !c {
		t.Fatal("a late commit returned before its bit was stored")
	}
	if _, err := s.Load(ctx, id); err != nil {
		t.Fatal(err)
	}
}

// TestRollForwardWritesPointer: a committed message whose due group
// could not be stored (nor, in its place, its own pointer) keeps its bit
// unset, and the reader that finds it writes the pointer, then sets the
// bit, so that it is due, not stranded: with the content in an object of
// its own, and kept in the envelope.
func TestRollForwardWritesPointer(t *testing.T) {
	for _, c := range []struct {
		name    string
		inline  int
		objects int // content objects
	}{{"content object", -1, 1}, {"content in the envelope", 0, 0}} {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			g := &gated{Backend: mem.OpenBackend("")}
			clk := &fuzzClock{now: time.Now()}
			a := clockedInline(t, g, "a", clk, 0, c.inline)
			defer a.Close()
			b := clocked(t, g.Backend, "b", clk, 0)
			defer b.Close()
			tx, id := aloneTx(t, a)
			g.refusePrefix("due/")
			if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
				t.Fatal(err)
			}
			a.Flush(ctx)
			g.refusePrefix("")
			if c, _ := rawBits(t, g, tx.ID()); c {
				t.Fatal("the bit is stored, though the message has no due pointer")
			}
			if keys, _, _ := g.List(ctx, "due/", "", 10); len(keys) != 0 {
				t.Fatalf("due pointers %v before the roll-forward", keys)
			}
			if keys, _, _ := g.List(ctx, "msg/", "", 10); len(keys) != c.objects {
				t.Fatalf("content objects %v, want %d", keys, c.objects)
			}
			if _, err := b.Load(ctx, id); err != nil {
				t.Fatalf("Load of a message whose content and envelope are stored: %v", err)
			}
			if keys, _, _ := g.List(ctx, "due/", "", 10); len(keys) != 1 {
				t.Fatalf("due pointers %v after the roll-forward, want the message's", keys)
			}
			clk.Advance(time.Minute)
			due, err := b.Due(ctx, 10)
			if err != nil || len(due) != 1 || due[0].ID != id {
				t.Fatalf("Due = %v, %v: the message is stranded", due, err)
			}
			if c, _ := rawBits(t, g, tx.ID()); !c {
				t.Fatal("the reader did not store the bit")
			}
		})
	}
}
