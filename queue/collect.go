package queue

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// collectDelay is how long the clean-up of a delivery may wait for others
// to share its requests.
const collectDelay = 100 * time.Millisecond

// blockListing is the number of messages of one block, gathered for
// clean-up, from which one listing of the block's envelopes tells which
// of them are gone, rather than a listing per message.
const blockListing = 4

// collector gathers the clean-up that follows Claim.Delete and
// DeleteEnvelope: the pointers that named a deleted envelope, and the
// messages that may have lost their last envelope. It sends them in
// batches: one multi-object delete for many pointers and contents (see
// driver.MultiDeleter), and one listing per block for many messages. None of it is needed for
// correctness: a due scan drops a stale due pointer, Owned and Takeover a
// stale claim pointer, and Sweep the content of a committed message with
// no envelope left; so a crash that loses a batch loses nothing.
type collector struct {
	mu   sync.Mutex
	keys []string
	msgs map[MsgID][]string // a message, with its pointers that go with it
	// pending holds the keys gathered and not yet sent: a due scan of
	// this Store skips those pointers rather than read them again. The
	// pointers of msgs are not among them.
	pending map[string]bool
	running bool
	busy    int           // batches being sent
	idle    *sync.Cond    // signalled when busy drops to 0; uses mu
	full    chan struct{} // a batch is full: send it now
	stop    chan struct{} // closed by Close: send what is left now
}

func newCollector() *collector {
	c := &collector{full: make(chan struct{}, 1), stop: make(chan struct{})}
	c.idle = sync.NewCond(&c.mu)
	return c
}

// take returns what the collector holds, as a batch being sent; done
// must follow.
func (c *collector) take() ([]string, map[MsgID][]string) {
	keys, msgs := c.keys, c.msgs
	c.keys, c.msgs = nil, nil
	c.busy++
	return keys, msgs
}

// isPending reports whether key is gathered for deletion and not deleted
// yet.
func (c *collector) isPending(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending[key]
}

// done ends a batch that take returned.
func (c *collector) done(keys []string) {
	c.mu.Lock()
	for _, k := range keys {
		delete(c.pending, k)
	}
	c.busy--
	if c.busy == 0 {
		c.idle.Broadcast()
	}
	c.mu.Unlock()
}

// Flush sends the clean-up that deliveries left to the background, and
// the due groups and committed bits that Tx.CommitContent left to it
// (other nodes' due scans find such a message once its group is
// stored), and returns once
// it is done, whoever sent it. Claim.Delete removes the
// envelope at once, but leaves the pointers that named it and, after a
// message's last envelope, the content, to be removed in batches within
// a moment. Close flushes too. A crash before then leaves them to the
// due scans and to Sweep.
func (s *Store) Flush(ctx context.Context) error {
	if err := s.check("flush"); err != nil {
		return err
	}
	if err := s.flushBits(ctx); err != nil {
		return err
	}
	c := s.gc
	c.mu.Lock()
	keys, msgs := c.take()
	c.mu.Unlock()
	s.sweepUp(ctx, keys, msgs)
	c.done(keys)
	c.mu.Lock()
	for c.busy > 0 {
		c.idle.Wait()
	}
	c.mu.Unlock()
	return ctx.Err()
}

// collect hands keys, and the message m (0 for none) with its pointers
// ofMsg, to the collector, which deletes them in the background. After
// Close, it does the work itself.
func (s *Store) collect(ctx context.Context, keys []string, m MsgID, ofMsg []string) {
	c := s.gc
	c.mu.Lock()
	if c.pending == nil {
		c.pending = make(map[string]bool)
	}
	c.keys = append(c.keys, keys...)
	for _, k := range keys {
		c.pending[k] = true
	}
	if m != 0 {
		if c.msgs == nil {
			c.msgs = make(map[MsgID][]string)
		}
		// Not pending: the message's pointers go only if it has no
		// envelope left.
		c.msgs[m] = append(c.msgs[m], ofMsg...)
	}
	if len(c.keys)+len(c.msgs) >= driver.MaxMultiDelete {
		select {
		case c.full <- struct{}{}:
		default:
		}
	}
	start := !c.running
	c.running = true
	c.mu.Unlock()
	if !start {
		return
	}
	if !s.background(ctx, s.collectLoop) {
		s.collectLoop(ctx)
	}
}

// collectLoop sends the gathered clean-up, a batch at a time, until there
// is none left. Each batch has a minute.
func (s *Store) collectLoop(ctx context.Context) {
	c := s.gc
	base := context.WithoutCancel(ctx)
	for {
		t := time.NewTimer(collectDelay)
		select {
		case <-t.C:
		case <-c.full:
		case <-c.stop:
		}
		t.Stop()
		c.mu.Lock()
		if len(c.keys) == 0 && len(c.msgs) == 0 {
			c.running = false
			c.mu.Unlock()
			return
		}
		keys, msgs := c.take()
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(base, time.Minute)
		s.sweepUp(ctx, keys, msgs)
		cancel()
		c.done(keys)
	}
}

// stopCollector makes the collector send what it holds at once, and
// every batch after it: Close calls it before it waits for the background
// work, so that a Store closed cleanly leaves no garbage.
func (s *Store) stopCollector() {
	close(s.gc.stop)
}

// sweepUp deletes keys, then, of msgs, those messages that have no
// envelope left: their content and their pointers. Failures are left to
// the scans and to Sweep.
func (s *Store) sweepUp(ctx context.Context, keys []string, msgs map[MsgID][]string) {
	s.deleteMulti(ctx, keys)
	if len(msgs) == 0 {
		return
	}
	byBlock := make(map[uint32][]MsgID)
	for m := range msgs {
		first := layout.BlockOf(uint32(m))
		byBlock[first] = append(byBlock[first], m)
	}
	var gone []string
	for first, ms := range byBlock {
		live, err := s.liveMessages(ctx, first, ms)
		if err != nil {
			continue
		}
		for _, m := range ms {
			if live[m] {
				continue
			}
			s.committed.remove(m)
			gone = append(gone, msgs[m]...)
			gone = append(gone, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)}))
		}
	}
	s.deleteMulti(ctx, gone)
}

// liveMessages reports which of ms, messages of the block that starts at
// first, have an envelope stored: with one listing per message for a few,
// and with one listing of the block's envelopes from the first of ms to
// the last for more.
func (s *Store) liveMessages(ctx context.Context, first uint32, ms []MsgID) (map[MsgID]bool, error) {
	live := make(map[MsgID]bool)
	if len(ms) < blockListing {
		for _, m := range ms {
			var keys []string
			err := s.retry(ctx, func() error {
				var err error
				keys, _, err = s.b.List(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)}), "", 1)
				return err
			})
			if err != nil {
				return nil, err
			}
			live[m] = len(keys) > 0
		}
		return live, nil
	}
	slices.Sort(ms)
	last := ms[len(ms)-1]
	prefix := layout.BlockPrefix(layout.Envelope, first)
	// The key of a message's envelopes' directory without its "/" sorts
	// before all of them.
	from := layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(ms[0])})
	after := from[:len(from)-1]
	for {
		var keys []string
		var more bool
		err := s.retry(ctx, func() error {
			var err error
			keys, more, err = s.b.List(ctx, prefix, after, driver.MaxMultiDelete)
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			id, err := parseEnvelopeKey(k)
			if err != nil {
				continue
			}
			if id.MsgID() > last {
				return live, nil
			}
			live[id.MsgID()] = true
		}
		if !more || len(keys) == 0 {
			return live, nil
		}
		after = keys[len(keys)-1]
	}
}

// deleteMulti deletes keys in batches, retrying what fails for a moment;
// what still fails is left to the scans and to Sweep.
func (s *Store) deleteMulti(ctx context.Context, keys []string) {
	for len(keys) > 0 {
		n := min(len(keys), driver.MaxMultiDelete)
		batch := keys[:n]
		s.retry(ctx, func() error { return driver.DeleteMulti(ctx, s.b, batch) })
		keys = keys[n:]
	}
}
