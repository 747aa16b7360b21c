package queue_test

import (
	"io"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
)

// TestInlineCommit: a message of one envelope and content within
// Options.InlineContent commits in one write of one object, its envelope
// with the content at its end, and that alone; another node that
// finds it before its bit is stored commits it without looking for a
// content object; the committer's delivery reads the content with no
// request; content one byte larger gets an object of its own.
func TestInlineCommit(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	ca, cb := bench.Count(raw), bench.Count(raw)
	g := &gated{Backend: ca.Backend()}
	a, err := queue.New(g, &queue.Options{Node: "a", InlineContent: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := queue.New(cb.Backend(), &queue.Options{Node: "b"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	tx, id := aloneTx(t, a)
	g.refuseBlk(true) // a cannot store the bit: b must
	before := ca.Counts()
	if _, err := tx.CommitContent(ctx, strings.NewReader("sixteen bytes!!!")); err != nil {
		t.Fatal(err)
	}
	if c := ca.Counts().Sub(before); c.Put != 1 || c.Total() != 1 {
		t.Errorf("the commit made %+v, want 1 write: the envelope with its content", c)
	}
	g.refusePrefix("due/") // nor its group: b writes its own pointer
	a.Flush(ctx)
	g.refusePrefix("")
	if keys := keysUnder(t, raw, "msg/"); len(keys) != 0 {
		t.Errorf("content objects %v of a message that keeps its content in its envelope", keys)
	}
	before = cb.Counts()
	e, err := b.Load(ctx, id)
	if err != nil || string(e.Data) != "rcpt@example.org" {
		t.Fatalf("another node's Load = %v, %v", e, err)
	}
	// The envelope, the block record, and the record again for the swap
	// of its bit; the pointer and the swap.
	if c := cb.Counts().Sub(before); c.Stat != 0 || c.Get > 3 || c.Put != 2 {
		t.Errorf("another node's Load made %+v, want the pointer and the swap of the bit, and no Stat or read of a content object", c)
	}
	before = ca.Counts()
	rc, err := a.OpenContent(ctx, tx.ID())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(got) != "sixteen bytes!!!" {
		t.Fatalf("OpenContent = %q, %v", got, err)
	}
	if c := ca.Counts().Sub(before); c.Total() != 0 {
		t.Errorf("the committer's OpenContent made %+v, want no request", c)
	}

	tx2, _ := aloneTx(t, a)
	if _, err := tx2.CommitContent(ctx, strings.NewReader("seventeen bytes!!")); err != nil {
		t.Fatal(err)
	}
	if keys := keysUnder(t, raw, "msg/"); len(keys) != 1 {
		t.Errorf("content objects %v, want the one of the message of 17 bytes", keys)
	}
	rc, err = b.OpenContent(ctx, tx2.ID())
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(rc)
	rc.Close()
	if string(got) != "seventeen bytes!!" {
		t.Fatalf("another node read %q", got)
	}
}

// TestInlineReaderFails: a content reader that fails before its end
// fails the commit, and nothing is stored.
func TestInlineReaderFails(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	a := node(t, raw, "a")
	tx, _ := aloneTx(t, a)
	_, err := tx.CommitContent(ctx, io.MultiReader(strings.NewReader("partial"), errReader{}))
	if err == nil || !strings.Contains(err.Error(), "broken source") {
		t.Fatalf("CommitContent with a broken reader = %v, want its error", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"evp/", "msg/", "due/"} {
		if keys := keysUnder(t, raw, p); len(keys) != 0 {
			t.Errorf("stored after a failed commit: %v", keys)
		}
	}
}

// TestInlineFailedCommitForgotten: the content of a commit whose write
// failed is not carried by the envelope's next write: a second commit,
// of content too large for the envelope, stores the envelope without it,
// and every reader reads the second content.
func TestInlineFailedCommitForgotten(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	a, err := queue.New(g, &queue.Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	tx, id := aloneTx(t, a)
	g.refusePrefix("evp/")
	if _, err := tx.CommitContent(ctx, strings.NewReader("first attempt")); err == nil {
		t.Fatal("CommitContent succeeded without its envelope")
	}
	g.refusePrefix("")
	second := strings.Repeat("second attempt ", 3000)
	if _, err := tx.CommitContent(ctx, strings.NewReader(second)); err != nil {
		t.Fatal(err)
	}
	rc, _, err := g.Backend.Get(ctx, envKey(id))
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := io.ReadAll(rc)
	rc.Close()
	if strings.Contains(string(rec), "first attempt") {
		t.Fatalf("the envelope carries the failed commit's content: %q", rec)
	}
	b := node(t, g.Backend, "b")
	if _, err := b.Load(ctx, id); err != nil {
		t.Fatal(err)
	}
	rc, err = b.OpenContent(ctx, tx.ID())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != second {
		t.Fatalf("another node read %d bytes, want the second commit's %d", len(got), len(second))
	}
}
