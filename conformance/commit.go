package conformance

// Transactions: IDs, the commit point, rollback, crashes and sweeps.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

func testIDs(t *testing.T, mk HarnessMaker) {
	for _, c := range []struct {
		name string
		in   string
		msg  bool
	}{
		{"empty", "", true},
		{"short", "abc", true},
		{"zero msg", "00000000", true},
		{"not hex", "zzzzzzzz", true},
		{"sign", "+1234567", true},
		{"dotdot", "../../..", true},
		{"slash", "ab/cd/ef", true},
		{"unicode", "ééééé", true},
		{"control", "\x00\x01\x02\x03\x04\x05\x06\x07", true},
		{"zero evp low", "1234567800000000", false},
		{"zero evp high", "0000000012345678", false},
		{"long", "123456781234567812", false},
		{"evp not hex", "12345678zzzzzzzz", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var err error
			if c.msg {
				_, err = queue.ParseMsgID(c.in)
			} else {
				_, err = queue.ParseEvpID(c.in)
			}
			wantErr(t, fmt.Sprintf("parse %q", c.in), err, queue.ErrInvalid)
		})
	}
	m, err := queue.ParseMsgID("DEADBEEF")
	if err != nil || m.String() != "deadbeef" {
		t.Fatalf("ParseMsgID(DEADBEEF) = %v, %v", m, err)
	}
	id, err := queue.ParseEvpID("deadbeef00c0ffee")
	if err != nil || id.MsgID() != m || id.String() != "deadbeef00c0ffee" {
		t.Fatalf("ParseEvpID = %v, %v", id, err)
	}
}

func testMissing(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	s := e.store(nil)
	ctx := e.ctx
	id := queue.EvpID(0x1234567800000001)
	_, err := s.Load(ctx, id)
	wantErr(t, "Load missing", err, queue.ErrNotFound)
	_, err = s.OpenContent(ctx, id.MsgID())
	wantErr(t, "OpenContent missing", err, queue.ErrNotFound)
	ids, err := s.Envelopes(ctx, id.MsgID())
	wantErr(t, "Envelopes missing", err, nil)
	if len(ids) != 0 {
		t.Fatalf("Envelopes of a missing message = %v", ids)
	}
	wantErr(t, "DeleteEnvelope missing", s.DeleteEnvelope(ctx, id), nil)
	wantErr(t, "DeleteMessage missing", s.DeleteMessage(ctx, id.MsgID()), nil)
	_, err = s.AddEnvelope(ctx, id.MsgID(), []byte("x"))
	wantErr(t, "AddEnvelope to a missing message", err, queue.ErrNotFound)
	err = s.Update(ctx, &queue.Envelope{ID: id, Data: []byte("x"), Version: "1"})
	wantErr(t, "Update of an envelope that was never loaded", err, queue.ErrInvalid)
	_, gone := e.commit(s, []byte("c"), "x")
	env, err := s.Load(ctx, gone[0])
	wantErr(t, "Load", err, nil)
	wantErr(t, "DeleteEnvelope", s.DeleteEnvelope(ctx, gone[0]), nil)
	env.Data = []byte("y")
	wantErr(t, "Update of a deleted envelope", s.Update(ctx, env), queue.ErrNotFound)
	err = s.Quarantine(ctx, id.MsgID(), "test")
	wantErr(t, "Quarantine missing", err, queue.ErrNotFound)
	if got := e.walk(s); len(got) != 0 {
		t.Fatalf("Walk of an empty queue = %v", got)
	}
}

func testCommitRoundTrip(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	content := []byte("Subject: hi\r\n\r\nbody\r\n")
	bin := []byte{0, 1, 2, 0xff, '\n', 0}
	m, ids := e.commit(a, content, "rcpt one", "rcpt two", string(bin))
	if len(ids) != 3 || ids[0].MsgID() != m {
		t.Fatalf("envelope IDs %v of message %v", ids, m)
	}
	for i, want := range [][]byte{[]byte("rcpt one"), []byte("rcpt two"), bin} {
		env, err := b.Load(e.ctx, ids[i])
		wantErr(t, "Load on another node", err, nil)
		if !bytes.Equal(env.Data, want) || env.ID != ids[i] || env.Version == "" {
			t.Fatalf("Load = %+v, want data %q", env, want)
		}
	}
	got, err := e.readContent(b, m)
	wantErr(t, "read content", err, nil)
	if !bytes.Equal(got, content) {
		t.Fatalf("content = %q, want %q", got, content)
	}
	list, err := b.Envelopes(e.ctx, m)
	wantErr(t, "Envelopes", err, nil)
	want := slices.Clone(ids)
	slices.Sort(want)
	if !slices.Equal(list, want) {
		t.Fatalf("Envelopes = %v, want %v", list, want)
	}
	if w := e.walk(b); !slices.Equal(w, want) {
		t.Fatalf("Walk = %v, want %v", w, want)
	}
	// The reservation is cleaned up after the commit; no garbage remains
	// once the committing Store has finished its background work.
	a.Close()
	if keys := e.rawKeys(e.backend(), "inc/"); len(keys) != 0 {
		t.Fatalf("reservations left after commit: %v", keys)
	}
}

func testInvisibleUntilCommit(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	before, _ := e.commit(a, []byte("earlier"), "x")
	tx, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	id, err := tx.AddEnvelope([]byte("pending"))
	wantErr(t, "AddEnvelope", err, nil)
	_, err = tx.WriteContent(e.ctx, strings.NewReader("content"))
	wantErr(t, "WriteContent", err, nil)
	check := func(when string) {
		t.Helper()
		_, err := b.Load(e.ctx, id)
		wantErr(t, "Load "+when, err, queue.ErrNotFound)
		ids, err := b.Envelopes(e.ctx, tx.ID())
		wantErr(t, "Envelopes "+when, err, nil)
		if len(ids) != 0 {
			t.Fatalf("Envelopes %s = %v", when, ids)
		}
		_, err = b.OpenContent(e.ctx, tx.ID())
		wantErr(t, "OpenContent "+when, err, queue.ErrNotFound)
		for _, w := range e.walk(b) {
			if w.MsgID() == tx.ID() {
				t.Fatalf("Walk %s yields %v", when, w)
			}
		}
		if _, err := b.AddEnvelope(e.ctx, tx.ID(), []byte("bounce")); !errors.Is(err, queue.ErrNotFound) {
			t.Fatalf("AddEnvelope %s: %v, want ErrNotFound", when, err)
		}
	}
	check("before commit")
	if w := e.walk(b); len(w) != 1 || w[0].MsgID() != before {
		t.Fatalf("Walk = %v, want only the earlier message", w)
	}
	wantErr(t, "Commit", tx.Commit(e.ctx), nil)
	env, err := b.Load(e.ctx, id)
	wantErr(t, "Load after commit", err, nil)
	if string(env.Data) != "pending" {
		t.Fatalf("Load after commit = %q", env.Data)
	}
	wantErr(t, "second Commit", tx.Commit(e.ctx), queue.ErrClosed)
	wantErr(t, "Rollback after Commit", tx.Rollback(e.ctx), queue.ErrClosed)
	_, err = tx.AddEnvelope([]byte("late"))
	wantErr(t, "AddEnvelope after Commit", err, queue.ErrClosed)
}

func testRollback(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	tx, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	id, _ := tx.AddEnvelope([]byte("x"))
	_, err = tx.WriteContent(e.ctx, strings.NewReader("content"))
	wantErr(t, "WriteContent", err, nil)
	wantErr(t, "Rollback", tx.Rollback(e.ctx), nil)
	_, err = b.Load(e.ctx, id)
	wantErr(t, "Load after rollback", err, queue.ErrNotFound)
	raw := e.backend()
	for _, p := range []string{"evp/", "msg/", "due/"} {
		if k := e.rawKeys(raw, p); len(k) != 0 {
			t.Fatalf("rollback left %v", k)
		}
	}
	wantErr(t, "Commit after Rollback", tx.Commit(e.ctx), queue.ErrClosed)
	// A transaction without envelopes cannot commit.
	tx2, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	wantErr(t, "Commit without envelopes", tx2.Commit(e.ctx), queue.ErrInvalid)
	wantErr(t, "Rollback of an empty transaction", tx2.Rollback(e.ctx), nil)
	// Sweep removes the tombstones after the grace period.
	e.clock.Advance(time.Hour)
	if _, err := b.Sweep(e.ctx); err != nil {
		t.Fatal(err)
	}
	if k := e.rawKeys(raw, "inc/"); len(k) != 0 {
		t.Fatalf("sweep left reservations %v", k)
	}
}

// testCommitCrash kills the committing node after each write of the
// commit protocol and checks that the message is either wholly committed
// or invisible, and that Sweep then leaves no garbage.
func testCommitCrash(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	observer := e.store(nil)
	raw := e.backend()
	committedAt := -1
	for budget := 0; budget < 12 && committedAt < 0; budget++ {
		t.Run(fmt.Sprintf("after%dwrites", budget), func(t *testing.T) {
			cb := &crashing{Backend: e.backend(), budget: budget}
			s := e.storeOn(cb, &queue.Options{Retries: -1})
			var ids []queue.EvpID
			var m queue.MsgID
			err := func() error {
				tx, err := s.Begin(e.ctx)
				if err != nil {
					return err
				}
				m = tx.ID()
				for _, d := range []string{"a", "b", "c"} {
					id, err := tx.AddEnvelope([]byte(d))
					if err != nil {
						return err
					}
					ids = append(ids, id)
				}
				if _, err := tx.WriteContent(e.ctx, strings.NewReader("crash test")); err != nil {
					return err
				}
				return tx.Commit(e.ctx)
			}()
			if err == nil {
				committedAt = budget
				for _, id := range ids {
					if _, err := observer.Load(e.ctx, id); err != nil {
						t.Fatalf("committed, but Load(%v): %v", id, err)
					}
				}
				return
			}
			if !errors.Is(err, errCrashed) {
				t.Fatalf("commit failed with %v, want the injected crash", err)
			}
			for _, id := range ids {
				if _, err := observer.Load(e.ctx, id); !errors.Is(err, queue.ErrNotFound) {
					t.Fatalf("crashed before the commit point, but Load(%v) = %v", id, err)
				}
			}
			for _, w := range e.walk(observer) {
				if w.MsgID() == m && m != 0 {
					t.Fatalf("crashed before the commit point, but Walk yields %v", w)
				}
			}
			// Within the grace period, Sweep leaves the transaction alone.
			st, err := observer.Sweep(e.ctx)
			wantErr(t, "Sweep", err, nil)
			if st.Aborted != 0 {
				t.Fatalf("Sweep aborted %d transactions within the grace period", st.Aborted)
			}
			e.clock.Advance(time.Hour)
			for range 2 {
				if _, err := observer.Sweep(e.ctx); err != nil {
					t.Fatal(err)
				}
				e.clock.Advance(time.Hour)
			}
			for _, p := range []string{"inc/", "evp/", "msg/"} {
				if k := e.rawKeys(raw, p); len(k) != 0 {
					t.Fatalf("after sweeping, %s still has %v", p, k)
				}
			}
		})
	}
	if committedAt < 0 {
		t.Fatal("the commit never succeeded with up to 11 writes")
	}
	t.Logf("the commit protocol took %d writes for 3 envelopes", committedAt)
}

func testSweepRacesCommit(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	for i := range 6 {
		a, sweeper := e.store(nil), e.store(nil)
		tx, err := a.Begin(e.ctx)
		wantErr(t, "Begin", err, nil)
		id, _ := tx.AddEnvelope([]byte("x"))
		_, err = tx.WriteContent(e.ctx, strings.NewReader("slow"))
		wantErr(t, "WriteContent", err, nil)
		e.clock.Advance(time.Hour) // the transaction is now past its grace
		var commitErr, sweepErr error
		var st queue.SweepStats
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); commitErr = tx.Commit(e.ctx) }()
		go func() { defer wg.Done(); st, sweepErr = sweeper.Sweep(e.ctx) }()
		wg.Wait()
		wantErr(t, "Sweep", sweepErr, nil)
		_, loadErr := sweeper.Load(e.ctx, id)
		switch {
		case commitErr == nil:
			wantErr(t, "Load of the committed message", loadErr, nil)
		case errors.Is(commitErr, queue.ErrConflict):
			if st.Aborted != 1 {
				t.Fatalf("round %d: commit lost to a sweep that aborted %d", i, st.Aborted)
			}
			wantErr(t, "Load of the aborted message", loadErr, queue.ErrNotFound)
		default:
			t.Fatalf("round %d: Commit: %v", i, commitErr)
		}
		t.Logf("round %d: commit error %v, sweep %+v", i, commitErr, st)
	}
}

func testSweepKeepsCommitted(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	m, ids := e.commit(a, []byte("keep me"), "a", "b")
	for range 3 {
		e.clock.Advance(24 * time.Hour)
		if _, err := a.Sweep(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	b := e.store(nil)
	for _, id := range ids {
		if _, err := b.Load(e.ctx, id); err != nil {
			t.Fatalf("Load after sweeps: %v", err)
		}
	}
	if got, err := e.readContent(b, m); err != nil || string(got) != "keep me" {
		t.Fatalf("content after sweeps = %q, %v", got, err)
	}
}

func testMsgIDCollision(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	const x, y, z = 0x11111111, 0x22222222, 0x33333333
	first := func(v uint32) queue.MsgID { return queue.MsgID(layout.BlockOf(v)) }
	// A Store takes a block of IDs, drawn at random, and hands them out
	// in order.
	a := e.store(&queue.Options{Rand: &scripted{vals: []uint32{x}}})
	tx, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	if tx.ID() != first(x) {
		t.Fatalf("scripted ID: got %v, want %v", tx.ID(), first(x))
	}
	next, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	if next.ID() != first(x)+1 {
		t.Fatalf("second ID of the block: got %v, want %v", next.ID(), first(x)+1)
	}
	wantErr(t, "Rollback", next.Rollback(e.ctx), nil)
	// Another node draws the same block while the first uses it; 0 is
	// no block.
	b := e.store(&queue.Options{Rand: &scripted{vals: []uint32{x, 0, y}}})
	tx2, err := b.Begin(e.ctx)
	wantErr(t, "Begin after a collision", err, nil)
	if tx2.ID() != first(y) {
		t.Fatalf("colliding Begin got %v, want %v", tx2.ID(), first(y))
	}
	if _, err := tx.AddEnvelope([]byte("one")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "Commit", tx.Commit(e.ctx), nil)
	a.Close()
	// The block of a committed message stays taken.
	c := e.store(&queue.Options{Rand: &scripted{vals: []uint32{x, z}}})
	tx3, err := c.Begin(e.ctx)
	wantErr(t, "Begin after a collision with a committed message", err, nil)
	if tx3.ID() != first(z) {
		t.Fatalf("Begin colliding with a committed message got %v, want %v", tx3.ID(), first(z))
	}
	// Envelope IDs within one transaction never repeat.
	d := e.store(&queue.Options{Rand: &scripted{vals: []uint32{0x44444444, 5, 5, 6}}})
	tx4, err := d.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	// The first value went to the block.
	e1, _ := tx4.AddEnvelope([]byte("a"))
	e2, _ := tx4.AddEnvelope([]byte("b"))
	if e1 == e2 {
		t.Fatalf("two envelopes got the same ID %v", e1)
	}
	// Envelopes added to a committed message skip used IDs too.
	var lows []uint32
	m, ids := e.commit(e.store(nil), []byte("c"), "a")
	lows = append(lows, uint32(ids[0]), uint32(ids[0]), 7)
	f := e.store(&queue.Options{Rand: &scripted{vals: lows}})
	id, err := f.AddEnvelope(e.ctx, m, []byte("bounce"))
	wantErr(t, "AddEnvelope", err, nil)
	if uint32(id) != 7 {
		t.Fatalf("AddEnvelope with a colliding ID got %v, want low part 7", id)
	}
	for _, tx := range []*queue.Tx{tx2, tx3, tx4} {
		tx.Rollback(e.ctx)
	}
}

// testBlockIDs checks that a Store hands out the IDs of one block, that
// transactions rolled back or left open never show, and that Sweep removes
// the record of a block once it is done with and empty, but not before.
func testBlockIDs(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	b := e.store(nil)
	seen := make(map[queue.MsgID]bool)
	var all []queue.EvpID
	var open *queue.Tx
	for i := range 8 {
		tx, err := a.Begin(e.ctx)
		wantErr(t, "Begin", err, nil)
		if seen[tx.ID()] || len(seen) > 0 && layout.BlockOf(uint32(tx.ID())) != layout.BlockOf(uint32(all[0].MsgID())) {
			t.Fatalf("Begin handed out %v after %v", tx.ID(), seen)
		}
		seen[tx.ID()] = true
		id, _ := tx.AddEnvelope(fmt.Appendf(nil, "%d", i))
		_, err = tx.WriteContent(e.ctx, strings.NewReader("x"))
		wantErr(t, "WriteContent", err, nil)
		switch i % 4 {
		case 2:
			wantErr(t, "Rollback", tx.Rollback(e.ctx), nil)
			continue
		case 3:
			if open == nil {
				open = tx // written, never committed
				continue
			}
		}
		wantErr(t, "Commit", tx.Commit(e.ctx), nil)
		all = append(all, id)
	}
	slices.Sort(all)
	if w := e.walk(b); !slices.Equal(w, all) {
		t.Fatalf("Walk = %v, want %v", w, all)
	}
	blocks := e.rawKeys(e.backend(), "blk/")
	if len(blocks) != 1 {
		t.Fatalf("block records %v, want one", blocks)
	}
	// Within its grace, the open transaction stays.
	st, err := b.Sweep(e.ctx)
	wantErr(t, "Sweep", err, nil)
	if st.Open != 1 || st.Aborted != 0 {
		t.Fatalf("Sweep within the grace period: %+v, want 1 open", st)
	}
	// Past it, the open transaction is aborted and its commit fails;
	// the block record stays while messages of the block are stored.
	e.clock.Advance(time.Hour)
	st, err = b.Sweep(e.ctx)
	wantErr(t, "Sweep", err, nil)
	if st.Aborted != 1 {
		t.Fatalf("Sweep past the grace period: %+v, want 1 aborted", st)
	}
	wantErr(t, "Commit of an aborted transaction", open.Commit(e.ctx), queue.ErrConflict)
	if k := e.rawKeys(e.backend(), "blk/"); !slices.Equal(k, blocks) {
		t.Fatalf("block records %v after a sweep, want %v", k, blocks)
	}
	if w := e.walk(b); !slices.Equal(w, all) {
		t.Fatalf("Walk after the sweep = %v, want %v", w, all)
	}
	// Once its messages are gone, the record goes too, and a new
	// transaction of the Store takes a new block.
	for _, id := range all {
		wantErr(t, "DeleteMessage", b.DeleteMessage(e.ctx, id.MsgID()), nil)
	}
	// The first sweep retires the record; it goes a grace period later,
	// when no node trusts a copy it cached before.
	_, err = b.Sweep(e.ctx)
	wantErr(t, "Sweep", err, nil)
	if k := e.rawKeys(e.backend(), "blk/"); !slices.Equal(k, blocks) {
		t.Fatalf("block records %v after the sweep that retires it, want %v", k, blocks)
	}
	e.clock.Advance(time.Hour)
	_, err = b.Sweep(e.ctx)
	wantErr(t, "Sweep", err, nil)
	if k := e.rawKeys(e.backend(), "blk/"); len(k) != 0 {
		t.Fatalf("block records %v left after its messages went", k)
	}
	m, _ := e.commit(a, []byte("y"), "later")
	if seen[m] {
		t.Fatalf("the Store handed out %v again", m)
	}
}

// lostAnswer is a Backend whose compare-and-swap writes land but whose
// answers are lost, as over a network that fails at the wrong moment.
type lostAnswer struct{ driver.Backend }

func (l lostAnswer) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	v, err := l.Backend.Put(ctx, key, r, opts)
	if err == nil && opts.IfMatch != "" {
		return "", errLostAnswer
	}
	return v, err
}

// testCommitAnswerLost: a commit that landed although its caller saw an
// error must not be undone by the caller's Rollback.
func testCommitAnswerLost(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.storeOn(lostAnswer{e.backend()}, &queue.Options{Retries: -1})
	b := e.store(nil)
	tx, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	id, _ := tx.AddEnvelope([]byte("x"))
	_, err = tx.WriteContent(e.ctx, strings.NewReader("landed"))
	wantErr(t, "WriteContent", err, nil)
	if err := tx.Commit(e.ctx); err == nil {
		t.Fatal("Commit succeeded although its answer was lost")
	}
	wantErr(t, "Rollback of a commit that landed", tx.Rollback(e.ctx), queue.ErrConflict)
	// A committer that retries after a lost answer learns that it
	// committed, even when another node swept meanwhile.
	tx2, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	tx2.AddEnvelope([]byte("y"))
	_, err = tx2.WriteContent(e.ctx, strings.NewReader("landed too"))
	wantErr(t, "WriteContent", err, nil)
	if err := tx2.Commit(e.ctx); err == nil {
		t.Fatal("Commit succeeded although its answer was lost")
	}
	if _, err := b.Sweep(e.ctx); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "Commit retried after a sweep", tx2.Commit(e.ctx), nil)
	if _, err := b.Load(e.ctx, id); err != nil {
		t.Fatalf("the committed message is gone after Rollback: %v", err)
	}
	if got, err := e.readContent(b, tx.ID()); err != nil || string(got) != "landed" {
		t.Fatalf("content = %q, %v", got, err)
	}
}

var errLostAnswer = errors.New("conformance: the answer was lost")
