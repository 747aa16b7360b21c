package conformance

// Bad input, a closed Store and a cancelled context.

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/layout"
)

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
