package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// counts holds the requests of every countmem:// storage, by storage name
// and operation.
var counts = struct {
	sync.Mutex
	n map[string]map[string]int
}{n: map[string]map[string]int{}}

func init() { queue.DefaultURLMux().Register("countmem", countOpener{}) }

// countOpener opens countmem://name: mem://name, with its requests counted.
type countOpener struct{}

func (countOpener) OpenStoreURL(ctx context.Context, u *url.URL, opts *queue.Options) (*queue.Store, error) {
	return queue.New(countBackend{mem.OpenBackend(u.Host).(driver.Backend), u.Host}, opts)
}

type countBackend struct {
	driver.Backend
	name string
}

func (c countBackend) add(op string) {
	counts.Lock()
	if counts.n[c.name] == nil {
		counts.n[c.name] = map[string]int{}
	}
	counts.n[c.name][op]++
	counts.Unlock()
}

func (c countBackend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	c.add("get")
	return c.Backend.Get(ctx, key)
}

func (c countBackend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	c.add("head")
	return c.Backend.(driver.Stater).Stat(ctx, key)
}

func (c countBackend) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	c.add("put")
	return c.Backend.Put(ctx, key, r, o)
}

func (c countBackend) Delete(ctx context.Context, key string) error {
	c.add("delete")
	return c.Backend.Delete(ctx, key)
}

func (c countBackend) List(ctx context.Context, prefix, after string, limit int) ([]string, bool, error) {
	c.add("list")
	return c.Backend.List(ctx, prefix, after, limit)
}

func takeCounts(name string) (map[string]int, int) {
	counts.Lock()
	defer counts.Unlock()
	n := counts.n[name]
	delete(counts.n, name)
	t := 0
	for _, v := range n {
		t += v
	}
	return n, t
}

// TestMigrateCost counts the requests of a migration of 20 messages of two
// envelopes, per message, on each side: docs/operations.md quotes them.
func TestMigrateCost(t *testing.T) {
	src, dst := "countmem://"+strings.ToLower(t.Name())+"-src", "countmem://"+strings.ToLower(t.Name())+"-dst"
	const n = 20
	for i := range n {
		if code, _, errs := runMxq(t, fmt.Sprintf("message %d\r\n", i), "--queue", src, "put", "-r", "a@example.org", "-r", "b@example.org"); code != 0 {
			t.Fatal(errs)
		}
	}
	srcName, dstName := strings.TrimPrefix(src, "countmem://"), strings.TrimPrefix(dst, "countmem://")
	takeCounts(srcName)
	for _, tc := range []struct {
		name           string
		args           []string
		maxSrc, maxDst float64 // requests per message
	}{
		// Each message was put by a process of its own, so each is in a
		// block of IDs of its own, whose record SRC reads once; a queue
		// filled by long-lived nodes reads one per 4,096 messages.
		// Imported messages have no block: DST looks for one.
		{"dry run", []string{"--dry-run"}, 3.5, 1.5},
		{"copy", nil, 5.5, 13.5},
		{"move of copied messages", []string{"--move"}, 20, 6.5},
	} {
		code, _, errs := runMxq(t, "", append(append([]string{"--node", "migrate-cost", "migrate"}, tc.args...), src, dst)...)
		if code != 0 {
			t.Fatalf("%s: %s", tc.name, errs)
		}
		sn, st := takeCounts(srcName)
		dn, dt := takeCounts(dstName)
		t.Logf("%-24s SRC %.1f/message %v; DST %.1f/message %v", tc.name, float64(st)/n, sn, float64(dt)/n, dn)
		if float64(st)/n > tc.maxSrc || float64(dt)/n > tc.maxDst {
			t.Errorf("%s: %.1f requests per message on SRC, %.1f on DST; want at most %.1f and %.1f", tc.name, float64(st)/n, float64(dt)/n, tc.maxSrc, tc.maxDst)
		}
	}
}
