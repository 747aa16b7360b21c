package opensmtpd

import (
	"container/list"
	"sync"

	"github.com/mxqueue/mxq/queue"
)

// envCache is a bounded LRU of envelopes with their stored versions.
type envCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[queue.EvpID]*list.Element
}

func (c *envCache) init(max int) {
	c.max = max
	c.ll = list.New()
	c.m = make(map[queue.EvpID]*list.Element)
}

// get returns a copy of the cached envelope, or nil.
func (c *envCache) get(id queue.EvpID) *queue.Envelope {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[id]
	if !ok {
		return nil
	}
	c.ll.MoveToFront(el)
	e := *el.Value.(*queue.Envelope)
	return &e
}

func (c *envCache) put(e *queue.Envelope) {
	if e == nil || e.Version == "" {
		return
	}
	cp := *e
	cp.Data = nil // the blob is not needed to update
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[e.ID]; ok {
		el.Value = &cp
		c.ll.MoveToFront(el)
		return
	}
	c.m[e.ID] = c.ll.PushFront(&cp)
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*queue.Envelope).ID)
	}
}

func (c *envCache) drop(id queue.EvpID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.m[id]; ok {
		c.ll.Remove(el)
		delete(c.m, id)
	}
}
