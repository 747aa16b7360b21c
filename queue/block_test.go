package queue

import (
	"bytes"
	"testing"
	"time"
)

func TestBitmap(t *testing.T) {
	var b bitmap
	if b.has(0) || b.has(4095) {
		t.Fatal("an empty bitmap has a bit")
	}
	b.set(9)
	if len(b) != 2 || !b.has(9) || b.has(8) || b.has(10) || b.has(4095) {
		t.Fatalf("after set(9): %x", b)
	}
	b.set(4095)
	if len(b) != maxBitmap || !b.has(4095) || !b.has(9) {
		t.Fatalf("after set(4095): len %d", len(b))
	}
	var a bitmap
	a.set(0)
	a.or(bitmap{0x02})
	if !a.has(0) || !a.has(1) || len(a) != 1 {
		t.Fatalf("or of a shorter bitmap: %x", a)
	}
	a.or(b)
	if len(a) != maxBitmap || !a.has(0) || !a.has(1) || !a.has(9) || !a.has(4095) || a.has(2) {
		t.Fatalf("or of a longer bitmap: len %d", len(a))
	}
	if !bytes.Equal(b[:2], []byte{0, 0x02}) {
		t.Fatalf("or changed its argument: %x", b[:2])
	}
}

func TestBlockCache(t *testing.T) {
	var c blockCache
	const first = 0x12345000
	t0 := time.Now()
	r := &blockRecord{Nonce: 7}
	r.Committed.set(1)
	c.putAt(first, r, t0)
	r.Committed.set(2) // put keeps a copy
	if !c.committed(first|1, 7) || c.committed(first|2, 7) {
		t.Fatal("put did not keep a copy of the record")
	}
	if c.committed(first|1, 8) {
		t.Fatal("committed does not match the nonce")
	}
	if !c.committedRecent(first|1, t0.Add(time.Minute), time.Hour) || c.committedRecent(first|1, t0.Add(time.Hour), time.Hour) {
		t.Fatal("committedRecent does not trust a record read within the window, and only then")
	}

	// The same nonce: bits merge, none clears.
	r2 := &blockRecord{Nonce: 7}
	r2.Committed.set(3)
	r2.Aborted.set(4)
	c.putAt(first, r2, t0)
	if !c.committed(first|1, 7) || !c.committed(first|3, 7) {
		t.Fatal("a record of the same nonce did not merge")
	}
	if got := c.m[first]; !got.Aborted.has(4) {
		t.Fatal("the aborted bits did not merge")
	}

	// Another nonce: the record replaces the cached one.
	r3 := &blockRecord{Nonce: 8}
	r3.Committed.set(5)
	c.putAt(first, r3, t0)
	if c.committed(first|1, 7) || c.committedRecent(first|1, t0, time.Hour) || !c.committed(first|5, 8) {
		t.Fatal("a record of another nonce did not replace the cached one")
	}
	if got := c.m[first]; got.Nonce != 8 || got.Aborted.has(4) {
		t.Fatalf("cached %+v", got)
	}

	// A foreign ID is never committed by its block.
	r4 := &blockRecord{Nonce: 9}
	r4.Committed.set(6)
	r4.Foreign.set(6)
	c.putAt(first, r4, t0)
	if c.committed(first|6, 9) {
		t.Fatal("a foreign ID counts as committed")
	}

	c.drop(first)
	if c.m[first] != nil || c.committed(first|5, 8) {
		t.Fatal("drop kept the record")
	}
}
