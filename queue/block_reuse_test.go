package queue_test

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// fixedRand hands out the same 32-bit value for every 4-byte read, so that
// a Store takes the block that holds it.
type fixedRand uint32

func (r fixedRand) Read(p []byte) (int, error) {
	for i := 0; i+4 <= len(p); i += 4 {
		binary.BigEndian.PutUint32(p[i:], uint32(r))
	}
	return len(p), nil
}

// TestBlockTakenAgain: a node that cached a block's record while a
// message of it was committed does not take the message of a later use
// of the block, under the same ID, for committed: the record is retired a
// grace period before it is removed, and a copy read before that is
// trusted for less.
func TestBlockTakenAgain(t *testing.T) {
	ctx := t.Context()
	now := time.Now()
	clock := func() time.Time { return now }
	const grace = 15 * time.Minute
	const first = 0x7a7a7000
	b := mem.OpenBackend("")
	open := func(node string, opts queue.Options) *queue.Store {
		opts.Node, opts.Clock, opts.Grace = node, clock, grace
		s, err := queue.New(b, &opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	x := open("x", queue.Options{})
	y := open("y", queue.Options{Rand: fixedRand(first)})
	tx, err := y.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := tx.ID()
	if layout.BlockOf(uint32(m)) != first {
		t.Fatalf("ID %v is not in block %08x", m, first)
	}
	tx.AddEnvelope([]byte("old"))
	if _, err := tx.WriteContent(ctx, strings.NewReader("old")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	rc, err := x.OpenContent(ctx, m) // x caches the record
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if err := y.DeleteMessage(ctx, m); err != nil {
		t.Fatal(err)
	}
	// The block is done with and empty: one sweep retires its record,
	// one a grace period later removes it.
	now = now.Add(3*grace + time.Second)
	sw := open("sweeper", queue.Options{})
	for range 2 {
		if _, err := sw.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		now = now.Add(grace)
	}
	if keys, _, _ := b.List(ctx, "blk/", "", 10); len(keys) != 0 {
		t.Fatalf("block records %v left", keys)
	}
	// Another node takes the block again and hands out m to an open
	// transaction.
	z := open("z", queue.Options{Rand: fixedRand(first)})
	var again *queue.Tx
	for range uint32(m)%layout.BlockSize + 1 {
		if again, err = z.Begin(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if again.ID() != m {
		t.Fatalf("the block taken again handed out %v, want %v", again.ID(), m)
	}
	again.AddEnvelope([]byte("new"))
	if _, err := again.WriteContent(ctx, strings.NewReader("not committed")); err != nil {
		t.Fatal(err)
	}
	if _, err := x.OpenContent(ctx, m); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("OpenContent of an open transaction by a node that cached the block's earlier use: %v, want ErrNotFound", err)
	}
	if ids, err := x.Envelopes(ctx, m); err != nil || len(ids) != 0 {
		t.Fatalf("Envelopes of an open transaction = %v, %v; want none", ids, err)
	}
}

// writtenTx begins a transaction on s and writes one envelope and its
// content, without committing.
func writtenTx(t *testing.T, s *queue.Store) *queue.Tx {
	t.Helper()
	tx, err := s.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	tx.AddEnvelope([]byte("x"))
	if _, err := tx.WriteContent(t.Context(), strings.NewReader("body")); err != nil {
		t.Fatal(err)
	}
	return tx
}

// TestEarlierVersionInBlock: a message that a node of an earlier version
// committed under a reservation, with an ID inside a block another node
// took, is shown by Walk, read and left alone by Sweep: its envelopes say
// which rules are theirs.
func TestEarlierVersionInBlock(t *testing.T) {
	ctx := t.Context()
	now := time.Now()
	clock := func() time.Time { return now }
	const grace = 15 * time.Minute
	const first = 0x5b5b5000
	b := mem.OpenBackend("")
	s, err := queue.New(b, &queue.Options{Node: "new", Clock: clock, Grace: grace, Rand: fixedRand(first)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tx := writtenTx(t, s) // takes the block
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The earlier version's message, as Import writes it elsewhere,
	// copied in under an ID of the block.
	const m = queue.MsgID(first | 0x800)
	src := mem.OpenBackend("")
	old, err := queue.New(src, &queue.Options{Node: "old"})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if _, err := old.Import(ctx, m, []queue.ImportEnvelope{{ID: m.Evp(1), Data: []byte("old")}}, strings.NewReader("old content")); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"evp/", "msg/"} {
		keys, _, err := src.List(ctx, prefix, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			rc, _, err := src.Get(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Put(ctx, k, rc, &driver.PutOptions{Size: -1}); err != nil {
				t.Fatal(err)
			}
			rc.Close()
		}
	}
	check := func(when string) {
		t.Helper()
		var seen bool
		for id, err := range s.Walk(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			seen = seen || id == m.Evp(1)
		}
		if !seen {
			t.Fatalf("%s: Walk lacks the earlier version's message", when)
		}
		rc, err := s.OpenContent(ctx, m)
		if err != nil {
			t.Fatalf("%s: OpenContent: %v", when, err)
		}
		rc.Close()
		if ids, err := s.Envelopes(ctx, m); err != nil || len(ids) != 1 {
			t.Fatalf("%s: Envelopes = %v, %v", when, ids, err)
		}
	}
	check("at once")
	// The new node hands out the same ID: its content write is refused,
	// and its rollback removes only what it wrote.
	var clash *queue.Tx
	for range layout.BlockSize {
		if clash, err = s.Begin(ctx); err != nil {
			t.Fatal(err)
		}
		if clash.ID() == m {
			break
		}
		clash.Rollback(ctx)
	}
	if clash.ID() != m {
		t.Fatalf("the block never handed out %v", m)
	}
	clash.AddEnvelope([]byte("new"))
	if _, err := clash.WriteContent(ctx, strings.NewReader("new content")); !errors.Is(err, queue.ErrExists) {
		t.Fatalf("content write under the ID of a stored message: %v, want ErrExists", err)
	}
	if err := clash.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	check("after a clashing transaction rolled back")
	now = now.Add(4 * grace) // the block is done with
	if _, err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	check("after a sweep")
}
