package conformance

// Envelopes after the commit: updates, deletes, and envelopes added later.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

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
	// The content goes in a batch; Flush sends it.
	wantErr(t, "Flush", b.Flush(e.ctx), nil)
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
	// The message of one envelope is named by a due group that a writes
	// after the commit; Flush writes it now, so that the deletes below
	// meet it and not a group written after them.
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	wantErr(t, "DeleteMessage", b.DeleteMessage(e.ctx, m), nil)
	wantErr(t, "DeleteMessage of the other", b.DeleteMessage(e.ctx, other), nil)
	// DeleteMessage removes the message's own pointers. A group it was
	// named in may name other messages too, so it stays until the next
	// due scan finds none of its entries alive.
	for _, k := range e.rawKeys(e.backend(), "due/") {
		if h, err := layout.Parse(k); err != nil || h.Kind != layout.DueGroup {
			t.Fatalf("due pointer %s left after DeleteMessage", k)
		}
	}
	due, err := b.Due(e.ctx, 10)
	wantErr(t, "Due after DeleteMessage", err, nil)
	if len(due) != 0 {
		t.Fatalf("Due after DeleteMessage = %d envelopes", len(due))
	}
	wantErr(t, "Flush", b.Flush(e.ctx), nil)
	if k := e.rawKeys(e.backend(), "due/"); len(k) != 0 {
		t.Fatalf("due pointers left after DeleteMessage and a due scan: %v", k)
	}
	other, _ = e.commit(a, []byte("other"), "x")
	for _, id := range ids {
		_, err := a.Load(e.ctx, id)
		wantErr(t, "Load after DeleteMessage", err, queue.ErrNotFound)
	}
	_, err = a.OpenContent(e.ctx, m)
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
	// The clean-up that follows a delete keeps the content of a message
	// with an envelope left.
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	if got, err := e.readContent(b, m); err != nil || string(got) != "content" {
		t.Fatalf("content while the bounce is queued = %q, %v", got, err)
	}
	wantErr(t, "DeleteEnvelope bounce", a.DeleteEnvelope(e.ctx, bounce), nil)
	// The message is gone once its clean-up is done.
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	_, err = b.AddEnvelope(e.ctx, m, []byte("late"))
	wantErr(t, "AddEnvelope to a message that is gone", err, queue.ErrNotFound)
	if k := e.rawKeys(e.backend(), "evp/"); len(k) != 0 {
		t.Fatalf("a refused AddEnvelope left %v", k)
	}
}

// failDelete is a Backend whose deletes of keys ending in suffix fail.
type failDelete struct {
	driver.Backend
	suffix string
}

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
	// Even should the record of its block go, a block taken again skips
	// the ID while the message has objects left.
	raw := e.backend()
	wantErr(t, "deleting the block record", raw.Delete(e.ctx, layout.Key(layout.Handle{Kind: layout.Block, Msg: uint32(m)})), nil)
	n := e.store(&queue.Options{Rand: &scripted{vals: []uint32{uint32(m)}}})
	for range uint32(m)%layout.BlockSize + 1 {
		tx, err := n.Begin(e.ctx)
		wantErr(t, "Begin", err, nil)
		if tx.ID() == m {
			t.Fatalf("Begin reused %v while an envelope of the old message remains", tx.ID())
		}
		tx.Rollback(e.ctx)
	}
	if got, err := e.readContent(a, m); err != nil || string(got) != "old" {
		t.Fatalf("content after a failed delete = %q, %v", got, err)
	}
	wantErr(t, "DeleteMessage again", a.DeleteMessage(e.ctx, m), nil)
}

var errDeleteFailed = errors.New("conformance: delete failed")
