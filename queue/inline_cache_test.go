package queue

import (
	"testing"
	"time"
)

// TestInlineCacheBounded: the cache keeps at most inlineCacheBytes, and
// an ID put again and again takes one place in its order, not one per
// put.
func TestInlineCacheBounded(t *testing.T) {
	var c inlineCache
	now := time.Now()
	for i := range 100000 {
		c.put(MsgID(i%10+1), make([]byte, 100), now)
	}
	if len(c.order) != 10 || len(c.m) != 10 || c.size != 1000 {
		t.Fatalf("10 IDs put 10,000 times each: order %d, entries %d, size %d", len(c.order), len(c.m), c.size)
	}
	for i := range 1000 {
		c.put(MsgID(i+100), make([]byte, 64<<10), now)
	}
	if c.size > inlineCacheBytes || len(c.order) > len(c.m)*4+64 {
		t.Fatalf("size %d over %d, or order %d for %d entries", c.size, inlineCacheBytes, len(c.order), len(c.m))
	}
	if _, ok := c.get(MsgID(1099), now, time.Minute); !ok {
		t.Fatal("the newest entry is gone")
	}
	if _, ok := c.get(MsgID(1099), now.Add(time.Minute), time.Minute); ok {
		t.Fatal("an entry older than its age limit was returned")
	}
	c.remove(MsgID(1099))
	if _, ok := c.get(MsgID(1099), now, time.Minute); ok {
		t.Fatal("a removed entry was returned")
	}
}
