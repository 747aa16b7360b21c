package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// counter counts requests by operation and kind of key ("put evp",
// "list due", ...).
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

// counting is a Backend that counts its requests.
type counting struct {
	driver.Backend
	*counter
}

func (c *counter) add(op, key string) {
	kind, _, _ := strings.Cut(key, "/")
	c.mu.Lock()
	c.n[op+" "+kind]++
	c.mu.Unlock()
}

func (c counting) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	c.add("get", key)
	return c.Backend.Get(ctx, key)
}

func (c counting) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	c.add("put", key)
	return c.Backend.Put(ctx, key, r, o)
}

func (c counting) Delete(ctx context.Context, key string) error {
	c.add("delete", key)
	return c.Backend.Delete(ctx, key)
}

func (c counting) List(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	c.add("list", prefix)
	return c.Backend.List(ctx, prefix, after, limit)
}

// take returns the counts so far and starts again from zero.
func (c *counter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = make(map[string]int)
	return n
}

func total(n map[string]int) (t int) {
	for _, v := range n {
		t += v
	}
	return t
}

func breakdown(n map[string]int, per int) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(n)) {
		fmt.Fprintf(&b, " %s %.2f;", k, float64(n[k])/float64(per))
	}
	return b.String()
}

// countedOpener opens "counted://" URLs on the shared mem storage name,
// counting the requests.
type countedOpener struct {
	name string
	c    *counter
}

func (o countedOpener) OpenStoreURL(_ context.Context, _ *url.URL, opts *queue.Options) (*queue.Store, error) {
	return queue.New(counting{mem.OpenBackend(o.name), o.c}, opts)
}

// TestCost counts the store requests of the MX per message: the accept
// path (enqueue, as Data runs it) and the delivery of a full queue by one
// instance, from its start until the queue is empty. Request counts are
// deterministic, so the bounds are tight enough to catch a loop that does
// more work than it should.
func TestCost(t *testing.T) {
	const messages, rcpts = 100, 2
	name := "cost-" + randHex(6)
	c := &counter{n: make(map[string]int)}
	mux := new(queue.URLMux)
	mux.Register("counted", countedOpener{name, c})
	s := newSink(t)
	cfg, err := parseFlags([]string{"--relay", s.addr, "--node", "mx1", "--hostname", "mx1", "--listen", "127.0.0.1:0", "--http", "", "--workers", "8", "--poll", "50ms"})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)

	// Accept: what Data does once the client has sent the message.
	st, err := mux.OpenOptions(t.Context(), "counted://", &queue.Options{Node: "mx1"})
	if err != nil {
		t.Fatal(err)
	}
	to := make([]string, rcpts)
	for i := range to {
		to[i] = fmt.Sprintf("r%d@dst.test", i)
	}
	mx := newMX(cfg, st, log)
	c.take()
	for i := range messages {
		text := mailText("alice@src.test", fmt.Sprint("m", i))
		if _, err := mx.enqueue(t.Context(), "alice@src.test", to, func(queue.MsgID) io.Reader { return strings.NewReader(text) }); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	accept := c.take()

	// Delivery: one instance, from its start until the queue is empty.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	cfg.Queue = "counted://"
	go func() { done <- serve(ctx, mux, cfg, log) }()
	s.wait("every envelope", func() bool {
		n := 0
		for _, m := range s.msgs {
			n += len(m.to)
		}
		return n == messages*rcpts
	})
	cancel() // a graceful stop: the deletes in flight finish
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	deliver := c.take()
	obs, err := queue.New(mem.OpenBackend(name), nil) // not counted
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	for id := range obs.Walk(t.Context()) {
		t.Errorf("%v left in the queue", id)
	}
	envs := messages * rcpts
	t.Logf("accept: %.2f requests per message of %d recipients:%s", float64(total(accept))/messages, rcpts, breakdown(accept, messages))
	// The accept path is the content, the envelopes and the due pointer,
	// then Commit's swap of the block record: R+3, and a block of IDs
	// (4 listings, a write, and a listing of its reservations again) for
	// the run.
	if got, want := total(accept), messages*(rcpts+3)+6; got > want {
		t.Errorf("accept: %d requests for %d messages of %d recipients, want at most %d", got, messages, rcpts, want)
	}
	// Delivery costs a claim (no claim pointer: the delivery ends within
	// a second), a fenced delete (here a tombstone, then its removal, one
	// key per request) and its share of Due and of the message's content
	// and pointers: about 7 requests per envelope, by how much of the
	// work Due finds again while it is in flight. A loop that polls when
	// it should wait, or claims what it has, blows past the bound.
	if got := float64(total(deliver)) / float64(envs); got > 10 {
		t.Errorf("delivery: %.2f requests per envelope, want at most 10", got)
	}
	t.Logf("delivery: %.2f requests per envelope, %d envelopes by one instance in %d SMTP transactions:%s", float64(total(deliver))/float64(envs), envs, len(s.messages()), breakdown(deliver, envs))
}
