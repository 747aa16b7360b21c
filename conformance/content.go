package conformance

// Content: checksums, corrupt records, large messages.

import (
	"bytes"
	"crypto/sha256"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// testChecksum damages content objects: those of a Store that keeps no
// content in its envelopes (testInlineContent damages the others).
func testChecksum(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(&queue.Options{InlineContent: -1})
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

// testInlineContent: a message of one envelope and small content is one
// object, the envelope with the content at its end. Another node reads
// the content and its size; an envelope added to the message first gives
// the content an object of its own, which outlives the first envelope;
// the last delete leaves nothing. Damage to the content kept in an
// envelope is ErrCorrupt, and the quarantine keeps it as it was.
func testInlineContent(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	raw := e.backend()
	plain := raw // the records as a Store reads them
	if eh, ok := e.h.(encryptedHarness); ok {
		var err error
		if plain, err = queue.Sealed(raw, eh.encryption()); err != nil {
			t.Fatal(err)
		}
	}
	content := []byte("a message small enough to travel in its envelope")
	m, ids := e.commit(a, content, "a")
	msgKey := layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)})
	if keys := e.rawKeys(raw, msgKey); len(keys) != 0 {
		t.Fatalf("a small message of one envelope has a content object: %v", keys)
	}
	b := e.store(nil) // another node, with nothing cached
	got, err := e.readContent(b, m)
	wantErr(t, "another node's OpenContent", err, nil)
	if !bytes.Equal(got, content) {
		t.Fatalf("content read by another node: %q, want %q", got, content)
	}
	size, err := e.store(nil).ContentSize(e.ctx, m)
	wantErr(t, "ContentSize", err, nil)
	if size != int64(len(content)) {
		t.Fatalf("ContentSize = %d, want %d", size, len(content))
	}
	second, err := a.AddEnvelope(e.ctx, m, []byte("b"))
	wantErr(t, "AddEnvelope", err, nil)
	if keys := e.rawKeys(raw, msgKey); len(keys) != 1 {
		t.Fatalf("after AddEnvelope the content has no object of its own: %v", keys)
	}
	wantErr(t, "DeleteEnvelope of the first", a.DeleteEnvelope(e.ctx, ids[0]), nil)
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	got, err = e.readContent(e.store(nil), m)
	wantErr(t, "OpenContent after the first envelope went", err, nil)
	if !bytes.Equal(got, content) {
		t.Fatalf("content after the first envelope went: %q, want %q", got, content)
	}
	wantErr(t, "DeleteEnvelope of the second", a.DeleteEnvelope(e.ctx, second), nil)
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	for _, p := range []string{msgKey, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)})} {
		if keys := e.rawKeys(raw, p); len(keys) != 0 {
			t.Fatalf("left after the last delete: %v", keys)
		}
	}
	_, err = e.readContent(e.store(nil), m)
	wantErr(t, "OpenContent of a deleted message", err, queue.ErrNotFound)

	// Large content keeps an object of its own.
	big := bytes.Repeat([]byte("x"), 40<<10)
	m, _ = e.commit(a, big, "a")
	if keys := e.rawKeys(raw, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)})); len(keys) != 1 {
		t.Fatalf("content of %d bytes is kept in its envelope", len(big))
	}

	// A flipped byte of the content kept in the envelope.
	m, ids = e.commit(a, content, "a")
	key := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(ids[0])})
	rc, _, err := plain.Get(e.ctx, key)
	wantErr(t, "raw Get", err, nil)
	stored, _ := io.ReadAll(rc)
	rc.Close()
	i := bytes.LastIndex(stored, content[:10])
	if i < 0 {
		t.Fatalf("the envelope %q does not hold the content", stored)
	}
	stored[i] ^= 0x20
	if _, err := plain.Put(e.ctx, key, bytes.NewReader(stored), &driver.PutOptions{Size: int64(len(stored))}); err != nil {
		t.Fatal(err)
	}
	c := e.store(nil)
	_, err = e.readContent(c, m)
	wantErr(t, "reading corrupt content kept in the envelope", err, queue.ErrCorrupt)
	wantErr(t, "Quarantine", c.Quarantine(e.ctx, m, "checksum mismatch"), nil)
	rc, err = c.OpenQuarantined(e.ctx, m)
	wantErr(t, "OpenQuarantined", err, nil)
	rc.Close()
	rc, _, err = plain.Get(e.ctx, layout.Key(layout.Handle{Kind: layout.QuarantineContent, Msg: uint32(m)}))
	wantErr(t, "raw Get of the quarantined content", err, nil)
	kept, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Contains(kept, stored[i:i+10]) {
		t.Fatalf("the quarantine kept %q, not the damaged content", kept)
	}
}

// testDueGroup: messages of one envelope committed by one Store within a
// moment share one due pointer, their group, written after the commits;
// another node's due scan finds every one of them by it, and the scan
// after the last delivery removes it.
func testDueGroup(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a := e.store(nil)
	raw := e.backend()
	const n = 5
	want := map[queue.EvpID]bool{}
	for range n {
		_, ids := e.commit(a, []byte("grouped"), "rcpt")
		want[ids[0]] = true
	}
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	due := e.rawKeys(raw, layout.Key(layout.Handle{Kind: layout.Due}))
	groups := 0
	for _, k := range due {
		if h, err := layout.Parse(k); err == nil && h.Kind == layout.DueGroup {
			groups++
		}
	}
	if groups == 0 || len(due) != groups {
		t.Fatalf("due pointers %v after %d commits, want their group alone", due, n)
	}
	b := e.store(nil)
	got, err := b.Due(e.ctx, 2*n)
	wantErr(t, "another node's Due", err, nil)
	if len(got) != n {
		t.Fatalf("another node's Due = %d envelopes, want the %d the group names", len(got), n)
	}
	for _, env := range got {
		if !want[env.ID] {
			t.Fatalf("Due returned %v, which was not committed here", env.ID)
		}
		c, err := b.ClaimEnvelope(e.ctx, env, time.Minute)
		wantErr(t, "ClaimEnvelope", err, nil)
		wantErr(t, "Delete", c.Delete(e.ctx), nil)
	}
	wantErr(t, "Flush", b.Flush(e.ctx), nil)
	got, err = b.Due(e.ctx, 2*n)
	wantErr(t, "Due after the deliveries", err, nil)
	if len(got) != 0 {
		t.Fatalf("Due after the deliveries = %d envelopes", len(got))
	}
	wantErr(t, "Flush", b.Flush(e.ctx), nil)
	if keys := e.rawKeys(raw, layout.Key(layout.Handle{Kind: layout.Due})); len(keys) != 0 {
		t.Fatalf("due pointers %v left after every delivery", keys)
	}
}

// testCommitSeveral: a message of several envelopes committed in one round
// by CommitContent is whole for another node at once, before its
// committer stores its bit: every envelope loads and walks, and once the
// committer flushes, the other node's due scan yields them all.
func testCommitSeveral(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	a, b := e.store(nil), e.store(nil)
	m, ids := e.commit(a, []byte("several"), "one", "two", "three")
	for i, id := range ids {
		env, err := b.Load(e.ctx, id)
		wantErr(t, "another node's Load", err, nil)
		if want := []string{"one", "two", "three"}[i]; string(env.Data) != want {
			t.Fatalf("Load(%v) = %q, want %q", id, env.Data, want)
		}
	}
	if got, err := e.readContent(b, m); err != nil || string(got) != "several" {
		t.Fatalf("another node's content = %q, %v", got, err)
	}
	if w := e.walk(b); len(w) != len(ids) {
		t.Fatalf("Walk = %v, want the %d envelopes", w, len(ids))
	}
	wantErr(t, "Flush", a.Flush(e.ctx), nil)
	due, err := b.Due(e.ctx, 10)
	wantErr(t, "another node's Due", err, nil)
	if len(due) != len(ids) {
		t.Fatalf("another node's Due = %d envelopes, want %d", len(due), len(ids))
	}
}
