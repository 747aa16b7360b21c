package conformance

// Walks: paging, snapshots and cancellation.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/mxqueue/mxq/queue"
)

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
