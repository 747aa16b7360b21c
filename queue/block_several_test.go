package queue_test

import (
	"context"
	"errors"
	"fmt"
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

// severalTx begins a transaction of n envelopes on s.
func severalTx(t *testing.T, s *queue.Store, n int) (*queue.Tx, []queue.EvpID) {
	t.Helper()
	tx, err := s.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var ids []queue.EvpID
	for i := range n {
		id, err := tx.AddEnvelope(fmt.Appendf(nil, "rcpt%d@example.org", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return tx, ids
}

// TestCommitSeveralOneRound: a message of three envelopes commits in one
// round, its content, envelopes and due pointer in flight together, with
// no write to the block record before CommitContent returns; the record
// learns the commit in the background, and the committing Store sees the
// message at once.
func TestCommitSeveralOneRound(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	s := node(t, g, "a")
	tx, ids := severalTx(t, s, 3)
	before := g.blkWrites() // the block of IDs
	g.arm(5)
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	if g.timedOut {
		t.Fatalf("the writes of the commit were not in flight together: %v", g.keys)
	}
	if len(g.keys) != 5 {
		t.Fatalf("the commit wrote %v, want the content, 3 envelopes and the due pointer", g.keys)
	}
	if n := g.blkWrites() - before; n != 0 {
		t.Fatalf("%d writes of the block record before CommitContent returned", n)
	}
	if c, _ := rawBits(t, g, tx.ID()); c {
		t.Fatal("the committed bit is stored before the background swap")
	}
	for _, id := range ids {
		if _, err := s.Load(ctx, id); err != nil {
			t.Fatalf("the committer's Load(%v): %v", id, err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if c, _ := rawBits(t, g, tx.ID()); !c {
		t.Fatal("the committed bit is not stored after Flush")
	}
	dueOnce(t, node(t, g.Backend, "b"), ids...)
}

// TestCommitSeveralReaders: another node that finds a message of several
// envelopes committed in one round, before its bit is stored, sees every
// envelope and sets the bit; one that misses a sibling sees none, and a
// sweep past the grace period aborts it and removes what landed.
func TestCommitSeveralReaders(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	clk := &fuzzClock{now: time.Now()}
	a := clocked(t, g, "a", clk, 0)
	defer a.Close()
	b := clocked(t, g.Backend, "b", clk, 0)
	defer b.Close()

	t.Run("committed", func(t *testing.T) {
		tx, ids := severalTx(t, a, 3)
		g.refuseBlk(true) // the committer never gets to write the bit
		defer g.refuseBlk(false)
		if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
			t.Fatal(err)
		}
		a.Flush(ctx) // the swap is refused
		if c, _ := rawBits(t, g, tx.ID()); c {
			t.Fatal("the committed bit is stored, though its writes were refused")
		}
		if _, err := b.Load(ctx, ids[1]); err != nil {
			t.Fatalf("another node's Load: %v", err)
		}
		if c, _ := rawBits(t, g, tx.ID()); !c {
			t.Fatal("the reader did not store the committed bit")
		}
		walked := map[queue.EvpID]bool{}
		for w, err := range b.Walk(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			walked[w] = true
		}
		for _, id := range ids {
			if !walked[id] {
				t.Fatalf("Walk does not yield %v", id)
			}
		}
		if err := tx.Rollback(ctx); !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Rollback after the commit = %v, want ErrClosed", err)
		}
	})

	t.Run("a sibling missing", func(t *testing.T) {
		tx, ids := severalTx(t, a, 3)
		g.refusePrefix(envKey(ids[2]))
		_, err := tx.CommitContent(ctx, strings.NewReader("hello"))
		g.refusePrefix("")
		if err == nil {
			t.Fatal("CommitContent succeeded with an envelope refused")
		}
		if _, err := tx.AddEnvelope([]byte("late@example.org")); !errors.Is(err, queue.ErrInvalid) {
			t.Fatalf("AddEnvelope after a failed commit in one round = %v, want ErrInvalid", err)
		}
		if keys := keysUnder(t, g.Backend, contentKey(tx.ID())); len(keys) != 1 {
			t.Fatalf("content stored: %v, want the content written beside the envelopes", keys)
		}
		for _, id := range ids[:2] {
			if _, err := b.Load(ctx, id); !errors.Is(err, queue.ErrNotFound) {
				t.Fatalf("Load of %v, whose sibling is missing = %v, want ErrNotFound", id, err)
			}
		}
		for w, err := range b.Walk(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			if w.MsgID() == tx.ID() {
				t.Fatalf("Walk yields %v, whose sibling is missing", w)
			}
		}
		if c, _ := rawBits(t, g, tx.ID()); c {
			t.Fatal("a reader committed a message whose sibling is missing")
		}
		// Its committer dies; a sweep past the grace period aborts it.
		clk.Advance(time.Hour)
		st, err := b.Sweep(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Aborted != 1 || st.Committed != 0 {
			t.Fatalf("Sweep = %+v, want 1 aborted", st)
		}
		if keys := keysUnder(t, g.Backend, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(tx.ID())})); len(keys) != 0 {
			t.Fatalf("left after the sweep: %v", keys)
		}
	})
}

// TestSweepCommitsSeveral: a message of several envelopes committed in
// one round whose committer died before storing its bit is kept by a
// sweep past the grace period, which stores the bit.
func TestSweepCommitsSeveral(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	clk := &fuzzClock{now: time.Now()}
	const grace = 15 * time.Minute
	a := clocked(t, g, "a", clk, grace)
	tx, ids := severalTx(t, a, 2)
	g.refuseBlk(true)
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	a.Close() // dies: the bit is not written
	g.refuseBlk(false)
	sw := clocked(t, g.Backend, "sweeper", clk, grace)
	defer sw.Close()
	clk.Advance(grace + time.Second)
	st, err := sw.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Committed != 1 || st.Aborted != 0 {
		t.Fatalf("a sweep past the grace period: %+v, want 1 committed", st)
	}
	if c, _ := rawBits(t, g, tx.ID()); !c {
		t.Fatal("the sweep did not store the committed bit")
	}
	dueOnce(t, sw, ids...)
}

// staleBlock serves, once armed, the block record of one message as it
// was when armed, to the first read of it: a reader whose copy of the
// record is older than the delivery of a sibling.
type staleBlock struct {
	driver.Backend
	mu    sync.Mutex
	key   string
	stale []byte
}

func (s *staleBlock) arm(t *testing.T, m queue.MsgID) {
	t.Helper()
	key := layout.Key(layout.Handle{Kind: layout.Block, Msg: layout.BlockOf(uint32(m))})
	rc, _, err := s.Backend.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.key, s.stale = key, b
	s.mu.Unlock()
}

func (s *staleBlock) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	s.mu.Lock()
	stale := key == s.key && s.stale != nil
	b := s.stale
	if stale {
		s.stale = nil
	}
	s.mu.Unlock()
	if stale {
		return io.NopCloser(strings.NewReader(string(b))), driver.Attrs{Version: "stale", Size: int64(len(b))}, nil
	}
	return s.Backend.Get(ctx, key)
}

// TestRollForwardSiblingDelivered: a reader that finds a message of
// several envelopes with its bit unset in an old copy of the block record,
// and one sibling gone (delivered since the commit), asks the record
// again rather than hide a committed envelope.
func TestRollForwardSiblingDelivered(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	a := node(t, g, "a")
	tx, ids := severalTx(t, a, 3)
	g.refuseBlk(true)
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	a.Flush(ctx) // the swap is refused
	g.refuseBlk(false)
	st := &staleBlock{Backend: g.Backend}
	st.arm(t, tx.ID()) // the bit unset
	b := node(t, g.Backend, "b")
	c, err := b.Claim(ctx, ids[0], time.Minute) // commits it, then delivers
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if keys := keysUnder(t, g.Backend, envKey(ids[0])); len(keys) != 0 {
		t.Fatalf("the delivered envelope is still stored: %v", keys)
	}
	r := node(t, st, "reader")
	if _, err := r.Load(ctx, ids[2]); err != nil {
		t.Fatalf("Load by a reader with an old record, a sibling delivered: %v", err)
	}
}
