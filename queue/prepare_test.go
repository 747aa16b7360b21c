package queue_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// keysUnder lists every key of b under prefix.
func keysUnder(t *testing.T, b driver.Backend, prefix string) []string {
	t.Helper()
	var all []string
	after := ""
	for range 100 {
		keys, more, err := b.List(t.Context(), prefix, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, keys...)
		if !more || len(keys) == 0 {
			return all
		}
		after = keys[len(keys)-1]
	}
	t.Fatalf("listing %s did not end", prefix)
	return nil
}

// node opens a Store of node on b.
func node(t *testing.T, b driver.Backend, name string) *queue.Store {
	t.Helper()
	s, err := queue.New(b, &queue.Options{Node: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitStored waits, a bounded time, until key is stored.
func waitStored(t *testing.T, b driver.Backend, key string) {
	t.Helper()
	for range 500 {
		if rc, _, err := b.Get(t.Context(), key); err == nil {
			rc.Close()
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%s was not stored within a second", key)
}

// TestPrepare: the envelope that Prepare writes ahead stays invisible to
// every node, and the commit that follows writes the content alone, after
// which every node sees the message; its due group follows.
func TestPrepare(t *testing.T) {
	ctx := t.Context()
	g := &gated{Backend: mem.OpenBackend("")}
	a, b := node(t, g, "a"), node(t, g.Backend, "b")
	tx, id := aloneTx(t, a)
	tx.Prepare(ctx)
	waitStored(t, g, envKey(id))
	if due := keysUnder(t, g, "due/"); len(due) != 0 {
		t.Fatalf("Prepare wrote the due pointer %v; the commit writes it", due)
	}
	if _, err := b.Load(ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("another node's Load of a prepared envelope = %v, want ErrNotFound", err)
	}
	if due, err := b.Due(ctx, 10); err != nil || len(due) != 0 {
		t.Fatalf("another node's due scan of a prepared envelope = %v, %v", due, err)
	}
	var mu sync.Mutex
	var wrote []string
	g.mu.Lock()
	g.onPut = func(key string) {
		mu.Lock()
		wrote = append(wrote, key)
		mu.Unlock()
	}
	g.mu.Unlock()
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(wrote) != 1 || !slices.Contains(wrote, contentKey(tx.ID())) {
		t.Errorf("the commit of a prepared message wrote %v, want its content alone", wrote)
	}
	mu.Unlock()
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if due := keysUnder(t, g, "due/"); len(due) != 1 || !strings.Contains(due[0], "/g") {
		t.Errorf("due pointers %v after the commit, want the group that names the message", due)
	}
	e, err := b.Load(ctx, id)
	if err != nil || string(e.Data) != "rcpt@example.org" {
		t.Fatalf("another node's Load after the commit = %v, %v", e, err)
	}
}

// TestPrepareCosts: a prepared message of one envelope costs the requests
// of one that is not, and its commit, on a store that schedules itself,
// writes the content alone; one of two envelopes costs two writes more,
// the rewrites of the first.
func TestPrepareCosts(t *testing.T) {
	ctx := t.Context()
	for _, rcpts := range []int{1, 2} {
		count := func(prepare bool) (all, commit int64) {
			raw := mem.OpenBackend("")
			c := bench.Count(raw)
			s, err := queue.New(c.Backend(), &queue.Options{Node: "a", SelfScheduled: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Begin(ctx); err != nil { // the block of IDs
				t.Fatal(err)
			}
			base := c.Counts()
			tx, err := s.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range rcpts {
				if _, err := tx.AddEnvelope([]byte(fmt.Sprintf("rcpt%d", i))); err != nil {
					t.Fatal(err)
				}
				if prepare {
					tx.Prepare(ctx)
				}
			}
			if prepare {
				waitStored(t, raw, envKey(tx.Envelopes()[0])) // uncounted
			}
			before := c.Counts()
			if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
				t.Fatal(err)
			}
			commit = c.Counts().Sub(before).Total()
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			return c.Counts().Sub(base).Total(), commit
		}
		plain, _ := count(false)
		prepared, commit := count(true)
		// For one recipient, one request more: the content goes beside
		// the envelope written ahead, where a commit without Prepare
		// keeps it in the envelope. For two, two more: the first is
		// rewritten without the flag of a message of one envelope, in
		// the background, then again by the commit, with its sibling,
		// in one round.
		want := plain + int64(rcpts)
		if prepared != want {
			t.Errorf("%d rcpt: %d requests prepared, %d not; want %d", rcpts, prepared, plain, want)
		}
		if rcpts == 1 && commit != 1 {
			t.Errorf("the commit after Prepare made %d requests, want 1: the content", commit)
		}
	}
}

// TestPrepareSecondEnvelope: an envelope added after Prepare makes the
// first one of several, in the store before the content is written: a
// reader that finds the first envelope and the content, as a committer
// that died in the commit leaves them, does not commit the message
// without the second. The commit then shows both, with the one pointer
// of a message of several envelopes.
func TestPrepareSecondEnvelope(t *testing.T) {
	ctx := t.Context()
	back := mem.OpenBackend("")
	a, b := node(t, back, "a"), node(t, back, "b")

	// The committer dies after the content landed.
	tx, first := aloneTx(t, a)
	tx.Prepare(ctx)
	second, err := tx.AddEnvelope([]byte("two@example.org"))
	if err != nil {
		t.Fatal(err)
	}
	// The content's write waits for the rewrite of the first envelope,
	// as a commit's does.
	if _, err := tx.WriteContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	waitStored(t, back, envKey(second))
	if e, err := b.Load(ctx, first); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("another node's Load of the first envelope = %v, %v: it committed a message of two envelopes with one", e, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	tx, first = aloneTx(t, a)
	tx.Prepare(ctx)
	if second, err = tx.AddEnvelope([]byte("two@example.org")); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	for _, id := range []queue.EvpID{first, second} {
		if _, err := b.Load(ctx, id); err != nil {
			t.Fatalf("Load(%v) after the commit: %v", id, err)
		}
	}
	a.Flush(ctx)
	if due := keysUnder(t, back, "due/"); len(due) != 1 || !strings.HasSuffix(due[0], tx.ID().String()) {
		t.Fatalf("due pointers %v, want the message's one", due)
	}
}

// TestPrepareRollback: a rollback after Prepare leaves nothing of the
// message in the store.
func TestPrepareRollback(t *testing.T) {
	ctx := t.Context()
	back := mem.OpenBackend("")
	a := node(t, back, "a")
	tx, id := aloneTx(t, a)
	tx.Prepare(ctx)
	waitStored(t, back, envKey(id))
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"evp/", "due/", "msg/"} {
		if keys := keysUnder(t, back, p); len(keys) != 0 {
			t.Errorf("left after the rollback: %v", keys)
		}
	}
}

// lostAnswer stores the first write under prefix and then reports it
// failed, as a write whose answer was lost.
type lostAnswer struct {
	driver.Backend
	prefix string
	mu     sync.Mutex
	done   bool
}

func (l *lostAnswer) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	v, err := l.Backend.Put(ctx, key, r, o)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil && !l.done && strings.HasPrefix(key, l.prefix) {
		l.done = true
		return "", errors.New("connection reset")
	}
	return v, err
}

// TestPrepareLostAnswer: the commit writes again an envelope whose write
// ahead failed, replacing it should it have landed, and commits.
func TestPrepareLostAnswer(t *testing.T) {
	ctx := t.Context()
	back := &lostAnswer{Backend: mem.OpenBackend(""), prefix: "evp/"}
	a := node(t, back, "a")
	tx, id := aloneTx(t, a)
	tx.Prepare(ctx)
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatalf("commit after a lost answer to the write ahead: %v", err)
	}
	back.mu.Lock()
	lost := back.done
	back.mu.Unlock()
	if !lost {
		t.Fatal("no write ahead was made")
	}
	if e, err := a.Load(ctx, id); err != nil || string(e.Data) != "rcpt@example.org" {
		t.Fatalf("Load = %v, %v", e, err)
	}
}

// TestPrepareOnePointer: envelopes of one message written at different
// minutes (ahead, rewritten, added at the commit) name one pointer, so
// that no pointer outlives its envelopes when some of them fail to land.
func TestPrepareOnePointer(t *testing.T) {
	ctx := t.Context()
	back := mem.OpenBackend("")
	clk := &fuzzClock{now: time.Now()}
	a := clocked(t, back, "a", clk, 0)
	defer a.Close()
	tx, first := aloneTx(t, a)
	tx.Prepare(ctx)
	waitStored(t, back, envKey(first))
	clk.Advance(2 * time.Minute)
	// The rewrite of the first, then all three by the commit.
	if _, err := tx.AddEnvelope([]byte("two@example.org")); err != nil {
		t.Fatal(err)
	}
	third, err := tx.AddEnvelope([]byte("three@example.org"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	if due := keysUnder(t, back, "due/"); len(due) != 1 {
		t.Fatalf("due pointers %v, want the message's one", due)
	}
	if _, err := a.Load(ctx, third); err != nil {
		t.Fatal(err)
	}
}

// failKey fails every write of one key, once set, as a crash that lets
// the writes beside it land. The failure waits until a key under after
// is stored, for at most 5 s: a commit cancels its writes still in flight
// when one fails, so a failure that came first could stop them.
type failKey struct {
	driver.Backend
	mu    sync.Mutex
	key   string
	after string
}

func (f *failKey) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	f.mu.Lock()
	fail, after := key == f.key, f.after
	f.mu.Unlock()
	if !fail {
		return f.Backend.Put(ctx, key, r, o)
	}
	for deadline := time.Now().Add(5 * time.Second); after != "" && time.Now().Before(deadline); {
		if keys, _, err := f.Backend.List(ctx, after, "", 1); err == nil && len(keys) > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return "", errors.New("crashed")
}

// TestPrepareSweptWhole: a committer of three envelopes, the first two
// written ahead, dies in the commit after its content and its pointer
// landed but not its third envelope; the survivor's sweep leaves nothing
// of the message, its pointer included.
func TestPrepareSweptWhole(t *testing.T) {
	ctx := t.Context()
	back := mem.OpenBackend("")
	f := &failKey{Backend: back}
	clk := &fuzzClock{now: time.Now()}
	victim := clocked(t, f, "victim", clk, 0)
	tx, _ := aloneTx(t, victim)
	tx.Prepare(ctx)
	if _, err := tx.AddEnvelope([]byte("two@example.org")); err != nil {
		t.Fatal(err)
	}
	third, err := tx.AddEnvelope([]byte("three@example.org"))
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.key, f.after = envKey(third), "due/"
	f.mu.Unlock()
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err == nil {
		t.Fatal("the commit succeeded without its third envelope")
	}
	if due := keysUnder(t, back, "due/"); len(due) != 1 {
		t.Fatalf("due pointers after the failed commit: %v, want the one that landed", due)
	}
	victim.Close()
	clk.Advance(time.Hour)
	survivor := clocked(t, back, "survivor", clk, 0)
	defer survivor.Close()
	for range 2 {
		if _, err := survivor.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Hour)
	}
	for _, p := range []string{"evp/", "msg/", "due/"} {
		if keys := keysUnder(t, back, p); len(keys) != 0 {
			t.Errorf("left after the sweep: %v", keys)
		}
	}
}

// TestPrepareRewriteFails: when the rewrite of the envelope written ahead
// fails, and so does every later write of it and of the second envelope,
// the commit fails before the content is stored: no reader can find the
// first envelope, still marked as a message's only one, beside the
// content, and commit the message without the second.
func TestPrepareRewriteFails(t *testing.T) {
	ctx := t.Context()
	back := mem.OpenBackend("")
	f := &failKeys{Backend: back}
	a := node(t, f, "a")
	b := node(t, back, "b")
	tx, first := aloneTx(t, a)
	tx.Prepare(ctx)
	waitStored(t, back, envKey(first))
	var second queue.EvpID
	f.fail = func(key string) bool { return key == envKey(first) || key == envKey(second) }
	f.mu.Lock()
	var err error
	second, err = tx.AddEnvelope([]byte("two@example.org")) // its rewrite fails
	f.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.CommitContent(ctx, strings.NewReader("hello")); err == nil {
		t.Fatal("the commit succeeded without its envelopes")
	}
	if keys := keysUnder(t, back, "msg/"); len(keys) != 0 {
		t.Errorf("the content %v is stored beside an envelope marked as the message's only one", keys)
	}
	if e, err := b.Load(ctx, first); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("another node's Load of the first envelope = %v, %v: the message is half-visible", e, err)
	}
}

// failKeys fails the writes of the keys fail names.
type failKeys struct {
	driver.Backend
	mu   sync.Mutex
	fail func(key string) bool
}

func (f *failKeys) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	f.mu.Lock()
	fail := f.fail != nil && f.fail(key)
	f.mu.Unlock()
	if fail {
		return "", errors.New("refused")
	}
	return f.Backend.Put(ctx, key, r, o)
}
