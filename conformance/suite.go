package conformance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// Run runs the whole suite. Each subtest names the line of the contract it
// proves.
func Run(t *testing.T, mk HarnessMaker) {
	t.Run("Backend", func(t *testing.T) { testBackend(t, mk) })
	t.Run("IDs", func(t *testing.T) { testIDs(t, mk) })
	t.Run("Missing", func(t *testing.T) { testMissing(t, mk) })
	t.Run("CommitRoundTrip", func(t *testing.T) { testCommitRoundTrip(t, mk) })
	t.Run("InvisibleUntilCommit", func(t *testing.T) { testInvisibleUntilCommit(t, mk) })
	t.Run("Rollback", func(t *testing.T) { testRollback(t, mk) })
	t.Run("CommitCrash", func(t *testing.T) { testCommitCrash(t, mk) })
	t.Run("CrashMatrix", func(t *testing.T) { testCrashMatrix(t, mk) })
	t.Run("CommitAnswerLost", func(t *testing.T) { testCommitAnswerLost(t, mk) })
	t.Run("SweepRacesCommit", func(t *testing.T) { testSweepRacesCommit(t, mk) })
	t.Run("SweepKeepsCommitted", func(t *testing.T) { testSweepKeepsCommitted(t, mk) })
	t.Run("MsgIDCollision", func(t *testing.T) { testMsgIDCollision(t, mk) })
	t.Run("Prealloc", func(t *testing.T) { testPrealloc(t, mk) })
	t.Run("DeletePartial", func(t *testing.T) { testDeletePartial(t, mk) })
	t.Run("UpdateCAS", func(t *testing.T) { testUpdateCAS(t, mk) })
	t.Run("UpdateRace", func(t *testing.T) { testUpdateRace(t, mk) })
	t.Run("DeleteLastEnvelope", func(t *testing.T) { testDeleteLastEnvelope(t, mk) })
	t.Run("DeleteMessage", func(t *testing.T) { testDeleteMessage(t, mk) })
	t.Run("AddEnvelopeCommitted", func(t *testing.T) { testAddEnvelopeCommitted(t, mk) })
	t.Run("WalkPaging", func(t *testing.T) { testWalkPaging(t, mk) })
	t.Run("WalkCancel", func(t *testing.T) { testWalkCancel(t, mk) })
	t.Run("Checksum", func(t *testing.T) { testChecksum(t, mk) })
	t.Run("CorruptEnvelope", func(t *testing.T) { testCorruptEnvelope(t, mk) })
	t.Run("BadInput", func(t *testing.T) { testBadInput(t, mk) })
	t.Run("Closed", func(t *testing.T) { testClosed(t, mk) })
	t.Run("CancelledContext", func(t *testing.T) { testCancelledContext(t, mk) })
	t.Run("LargeMessage", func(t *testing.T) { testLargeMessage(t, mk) })
	t.Run("DeadStore", func(t *testing.T) { testDeadStore(t, mk) })
	runLeaseTests(t, mk)
}

// testBackend checks the driver contract directly.
func testBackend(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	b := e.backend()
	ctx := e.ctx
	put := func(key, data string, o driver.PutOptions) (driver.Version, error) {
		o.Size = int64(len(data))
		return b.Put(ctx, key, strings.NewReader(data), &o)
	}
	get := func(key string) (string, driver.Attrs, error) {
		rc, a, err := b.Get(ctx, key)
		if err != nil {
			return "", a, err
		}
		defer rc.Close()
		d, err := io.ReadAll(rc)
		return string(d), a, err
	}
	code := func(what string, err error, want driver.Code) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error, want code %d", what, want)
		}
		if got := b.ErrorCode(err); got != want {
			t.Fatalf("%s: ErrorCode(%v) = %d, want %d", what, err, got, want)
		}
	}

	t.Run("GetMissing", func(t *testing.T) {
		_, _, err := b.Get(ctx, "msg/00/00000001")
		code("Get missing", err, driver.CodeNotFound)
	})
	t.Run("PutGet", func(t *testing.T) {
		v, err := put("inc/00000002", "hello", driver.PutOptions{})
		wantErr(t, "Put", err, nil)
		d, a, err := get("inc/00000002")
		wantErr(t, "Get", err, nil)
		if d != "hello" || a.Version != v {
			t.Fatalf("Get = %q version %q, want %q version %q", d, a.Version, "hello", v)
		}
		if st, ok := b.(driver.Stater); ok {
			a, err := st.Stat(ctx, "inc/00000002")
			wantErr(t, "Stat", err, nil)
			if a.Version != v || a.Size != 5 {
				t.Fatalf("Stat = %+v, want version %q size 5", a, v)
			}
		}
	})
	t.Run("CreateOnly", func(t *testing.T) {
		_, err := put("inc/00000003", "one", driver.PutOptions{IfNoneMatch: true})
		wantErr(t, "first create", err, nil)
		_, err = put("inc/00000003", "two", driver.PutOptions{IfNoneMatch: true})
		code("second create", err, driver.CodePrecondition)
		if d, _, _ := get("inc/00000003"); d != "one" {
			t.Fatalf("after a refused create the object is %q, want %q", d, "one")
		}
	})
	t.Run("CreateOnlyRace", func(t *testing.T) {
		var wins, losses int
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := put("inc/00000004", fmt.Sprint(i), driver.PutOptions{IfNoneMatch: true})
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					wins++
				} else if b.ErrorCode(err) == driver.CodePrecondition {
					losses++
				} else {
					t.Errorf("create: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 || losses != 7 {
			t.Fatalf("8 racing creates: %d won, %d lost; want 1 and 7", wins, losses)
		}
	})
	t.Run("CompareAndSwap", func(t *testing.T) {
		v1, err := put("inc/00000005", "v1", driver.PutOptions{})
		wantErr(t, "Put", err, nil)
		v2, err := put("inc/00000005", "v2", driver.PutOptions{IfMatch: v1})
		wantErr(t, "CAS with the current version", err, nil)
		if v2 == v1 {
			t.Fatalf("CAS kept version %q", v1)
		}
		_, err = put("inc/00000005", "v3", driver.PutOptions{IfMatch: v1})
		code("CAS with a stale version", err, driver.CodePrecondition)
		if d, _, _ := get("inc/00000005"); d != "v2" {
			t.Fatalf("after a refused CAS the object is %q, want v2", d)
		}
		_, err = put("inc/00000006", "x", driver.PutOptions{IfMatch: v2})
		if err == nil {
			t.Fatal("CAS on a missing key succeeded")
		}
		c := b.ErrorCode(err)
		want := e.h.Capabilities().IfMatchMissing
		if c != driver.CodeNotFound && c != driver.CodePrecondition || want != 0 && c != want {
			t.Fatalf("CAS on a missing key: code %d (%v)", c, err)
		}
		if _, _, err := b.Get(ctx, "inc/00000006"); b.ErrorCode(err) != driver.CodeNotFound {
			t.Fatalf("a refused CAS on a missing key created it: %v", err)
		}
	})
	t.Run("CompareAndSwapRace", func(t *testing.T) {
		// Of writers that swap the same version, exactly one wins, round
		// after round.
		for round := range 3 {
			v, err := put("inc/00000009", "v0", driver.PutOptions{})
			wantErr(t, "Put", err, nil)
			var wins, losses atomic.Int32
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() {
					_, err := put("inc/00000009", fmt.Sprint("w", i), driver.PutOptions{IfMatch: v})
					switch {
					case err == nil:
						wins.Add(1)
					case b.ErrorCode(err) == driver.CodePrecondition:
						losses.Add(1)
					default:
						t.Errorf("CAS: %v (code %d)", err, b.ErrorCode(err))
					}
				})
			}
			wg.Wait()
			if wins.Load() != 1 || losses.Load() != 7 {
				t.Fatalf("round %d, 8 racing CAS: %d won, %d lost; want 1 and 7", round, wins.Load(), losses.Load())
			}
		}
	})
	t.Run("PutBrokenReader", func(t *testing.T) {
		// A body that breaks off, as a network body does, is not an
		// object: nothing may be stored. The error is the reader's own
		// io.ErrUnexpectedEOF, which io.ReadFull cannot tell from an end.
		for _, size := range []int64{-1, 8} { // unknown, or more than arrives
			r := io.MultiReader(strings.NewReader("part"), brokenReader{})
			_, err := b.Put(ctx, "inc/00000008", r, &driver.PutOptions{IfNoneMatch: true, Size: size})
			if err == nil {
				t.Fatalf("Put from a reader that broke off (size %d) succeeded", size)
			}
			if _, _, err := b.Get(ctx, "inc/00000008"); b.ErrorCode(err) != driver.CodeNotFound {
				t.Fatalf("Put from a reader that broke off (size %d) stored something: %v", size, err)
			}
		}
	})
	t.Run("Delete", func(t *testing.T) {
		_, err := put("inc/00000007", "x", driver.PutOptions{})
		wantErr(t, "Put", err, nil)
		wantErr(t, "Delete", b.Delete(ctx, "inc/00000007"), nil)
		_, _, err = b.Get(ctx, "inc/00000007")
		code("Get after Delete", err, driver.CodeNotFound)
		wantErr(t, "Delete missing", b.Delete(ctx, "inc/00000007"), nil)
	})
	t.Run("List", func(t *testing.T) {
		var want []string
		for i := range 25 {
			k := fmt.Sprintf("own/lister/%016x", i+1)
			want = append(want, k)
			if _, err := put(k, "x", driver.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		// Keys whose byte order differs from a path order, and keys just
		// outside the prefix on either side.
		want = append(want, "own/lister/0-", "own/lister/0.a", "own/lister/0_b", "own/lister/0/x", "own/lister/x")
		for _, k := range want[25:] {
			if _, err := put(k, "x", driver.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(want)
		for _, k := range []string{"own/listeq/z", "own/lister0/x", "own/listers"} {
			if _, err := put(k, "x", driver.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		after := ""
		for range 100 {
			keys, more, err := b.List(ctx, "own/lister/", after, 7)
			wantErr(t, "List", err, nil)
			if len(keys) > 7 {
				t.Fatalf("List returned %d keys over a limit of 7", len(keys))
			}
			got = append(got, keys...)
			if !more {
				break
			}
			after = keys[len(keys)-1]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("paged List = %v, want %v", got, want)
		}
		keys, _, err := b.List(ctx, "own/lister/", want[22], 1000)
		wantErr(t, "List", err, nil)
		if !slices.Equal(keys, want[23:]) {
			t.Fatalf("List after %s = %v, want %v", want[22], keys, want[23:])
		}
		keys, _, err = b.List(ctx, "own/", "own/lister0", 1000)
		wantErr(t, "List", err, nil)
		if want := []string{"own/lister0/x", "own/listers"}; !slices.Equal(keys, want) {
			t.Fatalf("List of own/ after own/lister0 = %v, want %v", keys, want)
		}
		keys, more, err := b.List(ctx, "nothing/", "", 10)
		if err != nil || len(keys) != 0 || more {
			t.Fatalf("List of an empty prefix = %q, more %v, %v", keys, more, err)
		}
	})
	t.Run("Ping", func(t *testing.T) {
		p, ok := b.(driver.Pinger)
		if !ok {
			t.Skip("not a Pinger")
		}
		wantErr(t, "Ping", p.Ping(ctx), nil)
	})
	t.Run("CancelledContext", func(t *testing.T) {
		// Once ctx is done, every method fails with ctx's error or one
		// that ErrorCode maps to CodeUnavailable.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		check := func(op string, err error) {
			t.Helper()
			if !errors.Is(err, context.Canceled) && (err == nil || b.ErrorCode(err) != driver.CodeUnavailable) {
				t.Errorf("%s with a cancelled ctx: %v", op, err)
			}
		}
		_, err := b.Put(cctx, "inc/0000000a", strings.NewReader("x"), &driver.PutOptions{Size: 1})
		check("Put", err)
		_, err = b.Put(cctx, "inc/0000000a", strings.NewReader("x"), &driver.PutOptions{Size: 1, IfNoneMatch: true})
		check("Put create-only", err)
		_, _, err = b.Get(cctx, "inc/00000002")
		check("Get", err)
		_, _, err = b.List(cctx, "inc/", "", 10)
		check("List", err)
		check("Delete", b.Delete(cctx, "inc/00000002"))
		if st, ok := b.(driver.Stater); ok {
			_, err := st.Stat(cctx, "inc/00000002")
			check("Stat", err)
		}
		if p, ok := b.(driver.Pinger); ok {
			check("Ping", p.Ping(cctx))
		}
	})
}

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
	a := e.store(&queue.Options{Rand: &scripted{vals: []uint32{x}}})
	tx, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	if tx.ID() != x {
		t.Fatalf("scripted ID: got %v", tx.ID())
	}
	// Another node draws the same ID while the first transaction is open.
	b := e.store(&queue.Options{Rand: &scripted{vals: []uint32{x, 0, y}}})
	tx2, err := b.Begin(e.ctx)
	wantErr(t, "Begin after a collision", err, nil)
	if tx2.ID() != y {
		t.Fatalf("colliding Begin got %v, want %08x", tx2.ID(), y)
	}
	if _, err := tx.AddEnvelope([]byte("one")); err != nil {
		t.Fatal(err)
	}
	wantErr(t, "Commit", tx.Commit(e.ctx), nil)
	a.Close() // finishes the reservation's cleanup
	// A committed message has no reservation left, and still collides.
	c := e.store(&queue.Options{Rand: &scripted{vals: []uint32{x, z}}})
	tx3, err := c.Begin(e.ctx)
	wantErr(t, "Begin after a collision with a committed message", err, nil)
	if tx3.ID() != z {
		t.Fatalf("Begin colliding with a committed message got %v, want %08x", tx3.ID(), z)
	}
	// Envelope IDs within one transaction never repeat.
	d := e.store(&queue.Options{Rand: &scripted{vals: []uint32{5, 5, 6}}})
	tx4, err := d.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	// The first value went to the message ID.
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

func testUpdateCAS(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	_, ids := e.commit(a, []byte("c"), "v0")
	env, err := a.Load(e.ctx, ids[0])
	wantErr(t, "Load", err, nil)
	stale := *env
	env.Data = []byte("v1")
	wantErr(t, "Update", a.Update(e.ctx, env), nil)
	if env.Version == stale.Version {
		t.Fatal("Update did not change the version")
	}
	got, err := b.Load(e.ctx, ids[0])
	wantErr(t, "Load on another node", err, nil)
	if string(got.Data) != "v1" || got.Version != env.Version {
		t.Fatalf("Load after Update = %q at %q, want v1 at %q", got.Data, got.Version, env.Version)
	}
	stale.Data = []byte("stale")
	wantErr(t, "Update with a stale version", b.Update(e.ctx, &stale), queue.ErrConflict)
	if got, _ := b.Load(e.ctx, ids[0]); string(got.Data) != "v1" {
		t.Fatalf("a refused Update wrote %q", got.Data)
	}
	big := &queue.Envelope{ID: ids[0], Version: env.Version, Data: make([]byte, 1<<20)}
	wantErr(t, "Update oversized", a.Update(e.ctx, big), queue.ErrInvalid)
	wantErr(t, "Update without a version", a.Update(e.ctx, &queue.Envelope{ID: ids[0], Data: []byte("x")}), queue.ErrInvalid)
}

// testUpdateRace races 16 updaters of one envelope on two nodes.
func testUpdateRace(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	nodes := []*queue.Store{e.store(nil), e.store(nil)}
	_, ids := e.commit(nodes[0], []byte("c"), "start")
	for round := range 3 {
		base, err := nodes[1].Load(e.ctx, ids[0])
		wantErr(t, "Load", err, nil)
		var wins, conflicts int
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				env := *base
				env.Data = fmt.Appendf(nil, "round %d writer %d", round, i)
				err := nodes[i%2].Update(e.ctx, &env)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins++
				case errors.Is(err, queue.ErrConflict):
					conflicts++
				default:
					t.Errorf("Update: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 || conflicts != 15 {
			t.Fatalf("round %d: %d updates won and %d conflicted; want 1 and 15", round, wins, conflicts)
		}
	}
}

func testDeleteLastEnvelope(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	m, ids := e.commit(a, []byte("content"), "a", "b")
	wantErr(t, "DeleteEnvelope", b.DeleteEnvelope(e.ctx, ids[0]), nil)
	_, err := a.Load(e.ctx, ids[0])
	wantErr(t, "Load of the deleted envelope", err, queue.ErrNotFound)
	if got, err := e.readContent(a, m); err != nil || string(got) != "content" {
		t.Fatalf("content with one envelope left = %q, %v", got, err)
	}
	wantErr(t, "DeleteEnvelope of the last one", b.DeleteEnvelope(e.ctx, ids[1]), nil)
	_, err = a.OpenContent(e.ctx, m)
	wantErr(t, "OpenContent after the last envelope went", err, queue.ErrNotFound)
	for _, p := range []string{"msg/", "due/", "evp/"} {
		if k := e.rawKeys(e.backend(), p); len(k) != 0 {
			t.Fatalf("left after the last envelope: %v", k)
		}
	}
}

func testDeleteMessage(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	m, ids := e.commit(a, []byte("content"), "a", "b", "c")
	other, _ := e.commit(a, []byte("other"), "x")
	wantErr(t, "DeleteMessage", b.DeleteMessage(e.ctx, m), nil)
	wantErr(t, "DeleteMessage of the other", b.DeleteMessage(e.ctx, other), nil)
	if k := e.rawKeys(e.backend(), "due/"); len(k) != 0 {
		t.Fatalf("due pointers left after DeleteMessage: %v", k)
	}
	other, _ = e.commit(a, []byte("other"), "x")
	for _, id := range ids {
		_, err := a.Load(e.ctx, id)
		wantErr(t, "Load after DeleteMessage", err, queue.ErrNotFound)
	}
	_, err := a.OpenContent(e.ctx, m)
	wantErr(t, "OpenContent after DeleteMessage", err, queue.ErrNotFound)
	if w := e.walk(a); len(w) != 1 || w[0].MsgID() != other {
		t.Fatalf("Walk after DeleteMessage = %v, want the other message only", w)
	}
}

func testAddEnvelopeCommitted(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	m, ids := e.commit(a, []byte("content"), "orig")
	bounce, err := b.AddEnvelope(e.ctx, m, []byte("bounce"))
	wantErr(t, "AddEnvelope", err, nil)
	if bounce.MsgID() != m || bounce == ids[0] {
		t.Fatalf("bounce ID %v for message %v", bounce, m)
	}
	env, err := a.Load(e.ctx, bounce)
	wantErr(t, "Load bounce", err, nil)
	if string(env.Data) != "bounce" {
		t.Fatalf("bounce data %q", env.Data)
	}
	// OpenSMTPD's order: the bounce is created, then the original deleted.
	wantErr(t, "DeleteEnvelope", a.DeleteEnvelope(e.ctx, ids[0]), nil)
	if got, err := e.readContent(b, m); err != nil || string(got) != "content" {
		t.Fatalf("content while the bounce is queued = %q, %v", got, err)
	}
	wantErr(t, "DeleteEnvelope bounce", a.DeleteEnvelope(e.ctx, bounce), nil)
	_, err = b.AddEnvelope(e.ctx, m, []byte("late"))
	wantErr(t, "AddEnvelope to a message that is gone", err, queue.ErrNotFound)
	if k := e.rawKeys(e.backend(), "evp/"); len(k) != 0 {
		t.Fatalf("a refused AddEnvelope left %v", k)
	}
}

// testWalkPaging walks more envelopes than one list page holds.
func testWalkPaging(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	const msgs, per = 260, 4 // 1040 envelopes
	want := make(map[queue.EvpID]bool)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range msgs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			tx, err := a.Begin(e.ctx)
			if err != nil {
				t.Error(err)
				return
			}
			var ids []queue.EvpID
			for j := range per {
				id, _ := tx.AddEnvelope(fmt.Appendf(nil, "m%d e%d", i, j))
				ids = append(ids, id)
			}
			if _, err := tx.WriteContent(e.ctx, strings.NewReader("x")); err != nil {
				t.Error(err)
				return
			}
			if err := tx.Commit(e.ctx); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			for _, id := range ids {
				want[id] = true
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// An open transaction must not show.
	tx, err := a.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	tx.AddEnvelope([]byte("open"))
	tx.WriteContent(e.ctx, strings.NewReader("open"))
	defer tx.Rollback(e.ctx)

	check := func(name string, got []queue.EvpID) {
		t.Helper()
		seen := make(map[queue.EvpID]bool)
		done := make(map[queue.MsgID]bool)
		var last queue.MsgID
		for _, id := range got {
			if seen[id] {
				t.Fatalf("%s yields %v twice", name, id)
			}
			seen[id] = true
			if !want[id] {
				t.Fatalf("%s yields %v, which was not committed", name, id)
			}
			if m := id.MsgID(); m != last {
				if done[m] {
					t.Fatalf("%s does not group message %v", name, m)
				}
				done[last] = true
				last = m
			}
		}
		if len(seen) != len(want) {
			t.Fatalf("%s yields %d envelopes, want %d", name, len(seen), len(want))
		}
	}
	check("Walk", e.walk(b))
	var paged []queue.EvpID
	cursor := ""
	for range 1000 {
		p, err := b.WalkPage(e.ctx, cursor, 300)
		wantErr(t, "WalkPage", err, nil)
		if len(p.IDs) > 300 {
			t.Fatalf("WalkPage returned %d over a limit of 300", len(p.IDs))
		}
		paged = append(paged, p.IDs...)
		if cursor = p.Cursor; cursor == "" {
			break
		}
	}
	check("WalkPage", paged)
	_, err = b.WalkPage(e.ctx, "not-a-cursor", 10)
	wantErr(t, "WalkPage with a bad cursor", err, queue.ErrInvalid)
}

func testWalkCancel(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	for range 5 {
		e.commit(a, []byte("x"), "a", "b")
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	n := 0
	var last error
	for _, err := range a.Walk(ctx) {
		if err != nil {
			last = err
			break
		}
		n++
		if n == 3 {
			cancel()
		}
	}
	if n != 3 || !errors.Is(last, context.Canceled) {
		t.Fatalf("Walk after cancel: %d yielded, error %v; want 3 and context.Canceled", n, last)
	}
	// Breaking out of a walk early is fine too.
	for range a.Walk(e.ctx) {
		break
	}
}

func testChecksum(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	raw := e.backend()
	content := []byte("the original content of the message")
	cases := []struct {
		name   string
		mangle func([]byte) []byte
	}{
		{"flipped byte", func(b []byte) []byte { b[3] ^= 0x20; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)-5] }},
		{"trailer cut", func(b []byte) []byte { return b[:10] }},
		{"appended", func(b []byte) []byte { return append(b, "more"...) }},
		{"empty", func([]byte) []byte { return nil }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, ids := e.commit(a, content, "a")
			key := layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)})
			rc, _, err := raw.Get(e.ctx, key)
			wantErr(t, "raw Get", err, nil)
			stored, _ := io.ReadAll(rc)
			rc.Close()
			bad := c.mangle(stored)
			if _, err := raw.Put(e.ctx, key, bytes.NewReader(bad), &driver.PutOptions{Size: int64(len(bad))}); err != nil {
				t.Fatal(err)
			}
			_, err = e.readContent(a, m)
			wantErr(t, "reading corrupt content", err, queue.ErrCorrupt)
			wantErr(t, "Quarantine", a.Quarantine(e.ctx, m, "checksum mismatch"), nil)
			_, err = a.Load(e.ctx, ids[0])
			wantErr(t, "Load of a quarantined envelope", err, queue.ErrNotFound)
			_, err = a.OpenContent(e.ctx, m)
			wantErr(t, "OpenContent of a quarantined message", err, queue.ErrNotFound)
			q, err := a.Quarantined(e.ctx)
			wantErr(t, "Quarantined", err, nil)
			found := false
			for _, x := range q {
				if x.ID == m {
					found = true
					if x.Reason != "checksum mismatch" || !slices.Equal(x.Envelopes, ids) {
						t.Fatalf("quarantine record %+v", x)
					}
				}
			}
			if !found {
				t.Fatalf("Quarantined = %+v, lacks %v", q, m)
			}
			rc, err = a.OpenQuarantined(e.ctx, m)
			wantErr(t, "OpenQuarantined", err, nil)
			kept, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(kept, bad) {
				t.Fatal("quarantine did not keep the content as it was")
			}
		})
	}
}

func testCorruptEnvelope(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	raw := e.backend()
	_, ids := e.commit(a, []byte("c"), "a")
	key := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(ids[0])})
	for _, c := range []struct{ name, data string }{
		{"garbage", "garbage"},
		{"no header end", "mxq-evp/1 {\"p\":1"},
		{"bad json", "mxq-evp/1 {nope}\nrest"},
		{"empty", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := raw.Put(e.ctx, key, strings.NewReader(c.data), &driver.PutOptions{Size: int64(len(c.data))}); err != nil {
				t.Fatal(err)
			}
			_, err := a.Load(e.ctx, ids[0])
			wantErr(t, "Load", err, queue.ErrCorrupt)
		})
	}
	// A stray object under the envelope prefix is skipped by walks.
	if _, err := raw.Put(e.ctx, "evp/zz/stray", strings.NewReader("x"), &driver.PutOptions{Size: 1}); err != nil {
		t.Fatal(err)
	}
	if w := e.walk(a); len(w) != 1 || w[0] != ids[0] {
		t.Fatalf("Walk with a stray key = %v", w)
	}
}

func testBadInput(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	ctx := e.ctx
	_, err := a.Load(ctx, 0)
	wantErr(t, "Load(0)", err, queue.ErrInvalid)
	_, err = a.Load(ctx, 0x0000000100000000)
	wantErr(t, "Load with a zero low half", err, queue.ErrInvalid)
	_, err = a.OpenContent(ctx, 0)
	wantErr(t, "OpenContent(0)", err, queue.ErrInvalid)
	wantErr(t, "DeleteMessage(0)", a.DeleteMessage(ctx, 0), queue.ErrInvalid)
	wantErr(t, "DeleteEnvelope(0)", a.DeleteEnvelope(ctx, 0), queue.ErrInvalid)
	_, err = a.Envelopes(ctx, 0)
	wantErr(t, "Envelopes(0)", err, queue.ErrInvalid)
	_, err = a.AddEnvelope(ctx, 0, []byte("x"))
	wantErr(t, "AddEnvelope(0)", err, queue.ErrInvalid)
	tx, err := a.Begin(ctx)
	wantErr(t, "Begin", err, nil)
	_, err = tx.AddEnvelope(make([]byte, 64<<10+1))
	wantErr(t, "AddEnvelope oversized", err, queue.ErrInvalid)
	_, err = tx.AddEnvelope(make([]byte, 64<<10))
	wantErr(t, "AddEnvelope at the limit", err, nil)
	_, err = tx.WriteContent(ctx, strings.NewReader("x"))
	wantErr(t, "WriteContent", err, nil)
	_, err = tx.WriteContent(ctx, strings.NewReader("x"))
	wantErr(t, "second WriteContent", err, queue.ErrInvalid)
	// A reader that fails makes WriteContent fail and leaves nothing.
	tx2, err := a.Begin(ctx)
	wantErr(t, "Begin", err, nil)
	tx2.AddEnvelope([]byte("x"))
	_, err = tx2.WriteContent(ctx, io.MultiReader(strings.NewReader("part"), errReader{}))
	if err == nil {
		t.Fatal("WriteContent from a failing reader succeeded")
	}
	_, err = tx2.WriteContent(ctx, io.MultiReader(strings.NewReader("part"), brokenReader{}))
	if err == nil {
		t.Fatal("WriteContent from a reader that broke off succeeded")
	}
	wantErr(t, "Rollback", tx2.Rollback(ctx), nil)
	if k := e.rawKeys(e.backend(), "msg/"+layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(tx2.ID())})[4:]); len(k) != 0 {
		t.Fatalf("a failed upload left %v", k)
	}
	wantErr(t, "Commit", tx.Commit(ctx), nil)
}

// brokenReader fails the way a network body cut short does.
type brokenReader struct{}

func (brokenReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("reader broke") }

func testClosed(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	_, ids := e.commit(a, []byte("c"), "a")
	wantErr(t, "Close", a.Close(), nil)
	wantErr(t, "second Close", a.Close(), queue.ErrClosed)
	_, err := a.Load(e.ctx, ids[0])
	wantErr(t, "Load after Close", err, queue.ErrClosed)
	_, err = a.Begin(e.ctx)
	wantErr(t, "Begin after Close", err, queue.ErrClosed)
	n := 0
	for _, err := range a.Walk(e.ctx) {
		wantErr(t, "Walk after Close", err, queue.ErrClosed)
		n++
	}
	if n != 1 {
		t.Fatalf("Walk after Close yielded %d results, want one error", n)
	}
}

func testCancelledContext(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	m, ids := e.commit(a, []byte("c"), "a")
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	_, err := a.Load(ctx, ids[0])
	wantErr(t, "Load", err, context.Canceled)
	_, err = a.Begin(ctx)
	wantErr(t, "Begin", err, context.Canceled)
	_, err = a.OpenContent(ctx, m)
	wantErr(t, "OpenContent", err, context.Canceled)
	_, err = a.WalkPage(ctx, "", 10)
	wantErr(t, "WalkPage", err, context.Canceled)
	dctx, dcancel := context.WithTimeout(e.ctx, time.Nanosecond)
	defer dcancel()
	<-dctx.Done()
	_, err = a.Load(dctx, ids[0])
	wantErr(t, "Load past the deadline", err, context.DeadlineExceeded)
}

// testLargeMessage stores and reads back 100 MiB, measuring the heap.
func testLargeMessage(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	const size = 100 << 20
	const bound = 64 << 20
	var m queue.MsgID
	put := heapPeak(func() {
		tx, err := a.Begin(e.ctx)
		wantErr(t, "Begin", err, nil)
		tx.AddEnvelope([]byte("big"))
		n, err := tx.WriteContent(e.ctx, newPattern(size, 42))
		wantErr(t, "WriteContent", err, nil)
		if n != size {
			t.Fatalf("WriteContent wrote %d bytes, want %d", n, size)
		}
		wantErr(t, "Commit", tx.Commit(e.ctx), nil)
		m = tx.ID()
	})
	h := sha256.New()
	io.Copy(h, newPattern(size, 42))
	want := h.Sum(nil)
	var n int64
	var sum []byte
	get := heapPeak(func() {
		rc, err := b.OpenContent(e.ctx, m)
		wantErr(t, "OpenContent", err, nil)
		defer rc.Close()
		h := sha256.New()
		n, err = io.Copy(h, rc)
		wantErr(t, "read", err, nil)
		sum = h.Sum(nil)
	})
	if n != size || !bytes.Equal(sum, want) {
		t.Fatalf("read back %d bytes with another checksum", n)
	}
	t.Logf("100 MiB message: heap peak %s writing, %s reading", mib(put), mib(get))
	limit := uint64(bound)
	if e.h.Capabilities().ContentInMemory {
		limit += 3 * size // the storage itself is in this process
	}
	if put > limit || get > limit {
		t.Fatalf("heap grew by %s writing and %s reading 100 MiB; the bound is %s", mib(put), mib(get), mib(limit))
	}
}

// testPrealloc uses a Store that reserves IDs ahead and checks that the
// pool changes nothing visible and leaves nothing behind.
func testPrealloc(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(&queue.Options{Prealloc: 3})
	b := e.store(nil)
	seen := make(map[queue.MsgID]bool)
	var all []queue.EvpID
	for i := range 8 {
		tx, err := a.Begin(e.ctx)
		wantErr(t, "Begin", err, nil)
		if seen[tx.ID()] {
			t.Fatalf("Begin handed out %v twice", tx.ID())
		}
		seen[tx.ID()] = true
		id, _ := tx.AddEnvelope(fmt.Appendf(nil, "%d", i))
		if i%3 == 2 {
			wantErr(t, "Rollback", tx.Rollback(e.ctx), nil)
			continue
		}
		_, err = tx.WriteContent(e.ctx, strings.NewReader("x"))
		wantErr(t, "WriteContent", err, nil)
		wantErr(t, "Commit", tx.Commit(e.ctx), nil)
		all = append(all, id)
	}
	// Unused reservations never show, and Close releases them.
	slices.Sort(all)
	if w := e.walk(b); !slices.Equal(w, all) {
		t.Fatalf("Walk = %v, want %v", w, all)
	}
	wantErr(t, "Close", a.Close(), nil)
	raw := e.backend()
	for _, k := range e.rawKeys(raw, "inc/") {
		rc, _, err := raw.Get(e.ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := io.ReadAll(rc)
		rc.Close()
		if !strings.Contains(string(d), `"aborted"`) {
			t.Fatalf("reservation %s left open after Close: %s", k, d)
		}
	}
	if w := e.walk(b); !slices.Equal(w, all) {
		t.Fatalf("Walk after Close = %v, want %v", w, all)
	}
}

// lostAnswer is a Backend whose compare-and-swap writes land but whose
// answers are lost, as over a network that fails at the wrong moment.
type lostAnswer struct{ driver.Backend }

var errLostAnswer = errors.New("conformance: the answer was lost")

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

// failDelete is a Backend whose deletes of keys ending in suffix fail.
type failDelete struct {
	driver.Backend
	suffix string
}

var errDeleteFailed = errors.New("conformance: delete failed")

func (f failDelete) Delete(ctx context.Context, key string) error {
	if strings.HasSuffix(key, f.suffix) {
		return errDeleteFailed
	}
	return f.Backend.Delete(ctx, key)
}

// testDeletePartial: a DeleteMessage that fails half-way keeps the
// content, so the message ID is not handed out again while envelopes of
// the old message remain.
func testDeletePartial(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	m, ids := e.commit(a, []byte("old"), "old1", "old2")
	d := e.storeOn(failDelete{e.backend(), ids[1].String()}, &queue.Options{Retries: -1})
	if err := d.DeleteMessage(e.ctx, m); !errors.Is(err, errDeleteFailed) {
		t.Fatalf("DeleteMessage with a failing delete: %v", err)
	}
	const other = 0x5a5a5a5a
	n := e.store(&queue.Options{Rand: &scripted{vals: []uint32{uint32(m), other}}})
	tx, err := n.Begin(e.ctx)
	wantErr(t, "Begin", err, nil)
	if tx.ID() != other {
		t.Fatalf("Begin reused %v while an envelope of the old message remains", tx.ID())
	}
	tx.Rollback(e.ctx)
	if got, err := e.readContent(a, m); err != nil || string(got) != "old" {
		t.Fatalf("content after a failed delete = %q, %v", got, err)
	}
	wantErr(t, "DeleteMessage again", a.DeleteMessage(e.ctx, m), nil)
}
