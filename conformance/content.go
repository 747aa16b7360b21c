package conformance

// Content: checksums, corrupt records, large messages.

import (
	"bytes"
	"crypto/sha256"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

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
