package queue_test

import (
	"context"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// takeHook runs hook once, with the block's first message ID, when a
// block is taken: after the taker listed the block, before its record is
// written.
type takeHook struct {
	driver.Backend
	once sync.Once
	hook func(first uint32)
}

func (h *takeHook) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	if hi, ok := strings.CutPrefix(key, "blk/"); ok && opts.IfNoneMatch {
		if v, err := strconv.ParseUint(hi, 16, 32); err == nil {
			h.once.Do(func() { h.hook(uint32(v) << layout.BlockBits) })
		}
	}
	return h.Backend.Put(ctx, key, r, opts)
}

// TestImportWhileBlockTaken: a message imported into a block while a node
// takes that block, after the node listed it, is either refused or marked
// foreign: it shows, survives sweeps, and its ID is never handed out.
func TestImportWhileBlockTaken(t *testing.T) {
	ctx := t.Context()
	now := time.Now()
	clock := func() time.Time { return now }
	b := mem.OpenBackend("")
	imp, err := queue.New(b, &queue.Options{Node: "importer", Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer imp.Close()
	var m queue.MsgID
	var imported bool
	h := &takeHook{Backend: b, hook: func(first uint32) {
		m = queue.MsgID(first | 7)
		_, err := imp.Import(ctx, m, []queue.ImportEnvelope{{ID: m.Evp(1), Data: []byte("x")}}, strings.NewReader("body"))
		imported = err == nil
	}}
	s, err := queue.New(h, &queue.Options{Node: "taker", Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for range 10 {
		tx, err := s.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tx.ID() == m {
			t.Fatalf("ID %v of an imported message handed out", m)
		}
		tx.Rollback(ctx)
	}
	if !imported {
		t.Skip("the import was refused") // also correct
	}
	shows := func() bool {
		for id, err := range imp.Walk(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			if id == m.Evp(1) {
				return true
			}
		}
		return false
	}
	if !shows() {
		t.Fatalf("the imported message %v does not show", m)
	}
	now = now.Add(time.Hour) // both blocks' grace periods over
	if _, err := imp.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if !shows() {
		t.Fatalf("a sweep removed the imported message %v", m)
	}
}
