package queue_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// TestLateWriteOfAbortedTransaction: an envelope write of a transaction
// that was still in flight when a sweep aborted the transaction, at the
// end of its block's use, and lands after that sweep never shows, and a
// later sweep removes it.
func TestLateWriteOfAbortedTransaction(t *testing.T) {
	ctx := t.Context()
	now := time.Now()
	clock := func() time.Time { return now }
	const grace = 15 * time.Minute
	b := mem.OpenBackend("")
	s, err := queue.New(b, &queue.Options{Node: "slow", Clock: clock, Grace: grace})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sw, err := queue.New(b, &queue.Options{Node: "sweeper", Clock: clock, Grace: grace})
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	tx := writtenTx(t, s)
	// Keep the envelope as written, to land it again late.
	keys, _, err := b.List(ctx, "evp/", "", 10)
	if err != nil || len(keys) != 1 {
		t.Fatalf("envelopes %v, %v", keys, err)
	}
	rc, _, err := b.Get(ctx, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	var data strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := rc.Read(buf)
		data.WriteString(string(buf[:n]))
		if err != nil {
			break
		}
	}
	rc.Close()

	now = now.Add(2*grace + time.Second) // the block is done with
	if _, err := sw.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, keys[0], strings.NewReader(data.String()), &driver.PutOptions{Size: -1}); err != nil {
		t.Fatal(err)
	}
	for id, err := range sw.Walk(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		t.Fatalf("walk shows %v of an aborted transaction", id)
	}
	// One sweep removes the late write and retires the record, the next
	// a grace period later removes the record.
	for range 2 {
		now = now.Add(grace)
		if _, err := sw.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if keys, _, _ := b.List(ctx, "evp/", "", 10); len(keys) != 0 {
		t.Fatalf("left after the sweeps: %v", keys)
	}
	if keys, _, _ := b.List(ctx, "blk/", "", 10); len(keys) != 0 {
		t.Fatalf("block records left after the sweeps: %v", keys)
	}
	if err := tx.Commit(ctx); err == nil {
		t.Fatal("commit of an aborted transaction succeeded")
	}
	_ = queue.ErrConflict
}
