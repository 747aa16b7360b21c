package queue_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/layout"
	"github.com/mxqueue/mxq/queue/seal"
)

func TestReseal(t *testing.T) {
	ctx := t.Context()
	k1, k2 := testKey(t, 1), testKey(t, 2)
	open := sealedStores(t)
	plain := open(nil)
	ma, ia := commitMsg(t, plain, "plain message", "rcpt a1", "rcpt a2")
	mc, ic := commitMsg(t, plain, "to quarantine", "rcpt c")
	if err := plain.Quarantine(ctx, mc, "test"); err != nil {
		t.Fatal(err)
	}
	old := open(&queue.Encryption{Keys: seal.NewKeyring(k1)})
	mb, ib := commitMsg(t, old, "under the old key", "rcpt b")
	// A lease held by a node without a key: its envelope stays as it is.
	claim, err := plain.Claim(ctx, ia[1], time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{contentKey(ma), envKey(ia[0]), contentKey(mb), envKey(ib[0]),
		layout.Key(layout.Handle{Kind: layout.QuarantineContent, Msg: uint32(mc)}),
		layout.Key(layout.Handle{Kind: layout.QuarantineEnvelope, Evp: uint64(ic[0])})}

	s := open(&queue.Encryption{Keys: seal.NewKeyring(k2, k1)})
	var calls int
	p, err := s.Reseal(ctx, func(queue.ResealProgress) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if want := (queue.ResealProgress{Scanned: 7, Resealed: 6, Busy: 1}); p != want || calls != 7 {
		t.Fatalf("progress %+v after %d calls, want %+v after 7", p, calls, want)
	}
	for _, key := range keys {
		h, err := seal.ParseHeader(rawGet(t, s, key))
		if err != nil || !h.Encrypted || h.Key != k2.ID() {
			t.Fatalf("%s: header %+v, %v", key, h, err)
		}
	}
	if h, _ := seal.ParseHeader(rawGet(t, s, envKey(ia[1]))); h.Sealed {
		t.Fatal("the leased envelope was rewritten")
	}

	// Everything but the leased envelope reads with the new key alone,
	// plain objects refused.
	strict := open(&queue.Encryption{Keys: seal.NewKeyring(k2), Require: true})
	for _, m := range []struct {
		m  queue.MsgID
		id queue.EvpID
		c  string
	}{{ma, ia[0], "plain message"}, {mb, ib[0], "under the old key"}} {
		c, _, err := readMsg(strict, m.m, m.id)
		if err != nil || c != m.c {
			t.Fatalf("%v: %q, %v", m.m, c, err)
		}
	}
	if _, err := strict.Load(ctx, ia[1]); !errors.Is(err, queue.ErrCorrupt) {
		t.Fatalf("leased plain envelope under Require: %v", err)
	}

	// Again: nothing left to do but the leased envelope; once released,
	// it is resealed too.
	if p, err = s.Reseal(ctx, nil); err != nil || p != (queue.ResealProgress{Scanned: 7, Current: 6, Busy: 1}) {
		t.Fatalf("second run: %+v, %v", p, err)
	}
	if err := claim.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err = s.Reseal(ctx, nil); err != nil || p != (queue.ResealProgress{Scanned: 7, Current: 6, Resealed: 1}) {
		t.Fatalf("after release: %+v, %v", p, err)
	}
	if e, err := strict.Load(ctx, ia[1]); err != nil || !bytes.Equal(e.Data, []byte("rcpt a2")) {
		t.Fatalf("released envelope: %v", err)
	}

	t.Run("corrupt objects are left alone", func(t *testing.T) {
		md, id := commitMsg(t, old, "soon corrupt", "rcpt d")
		b := rawGet(t, s, contentKey(md))
		b[len(b)-1] ^= 1
		rawPut(t, s, contentKey(md), b)
		p, err := s.Reseal(ctx, nil)
		if err != nil || p.Corrupt != 1 || p.Resealed != 1 {
			t.Fatalf("%+v, %v", p, err)
		}
		if !bytes.Equal(rawGet(t, s, contentKey(md)), b) {
			t.Fatal("corrupt content rewritten")
		}
		if h, _ := seal.ParseHeader(rawGet(t, s, envKey(id[0]))); h.Key != k2.ID() {
			t.Fatal("its envelope was not resealed")
		}
	})
	t.Run("no current key", func(t *testing.T) {
		if _, err := open(&queue.Encryption{Keys: seal.NewKeyring(nil, k1)}).Reseal(ctx, nil); !errors.Is(err, queue.ErrInvalid) {
			t.Fatalf("err %v", err)
		}
	})
}
