package opensmtpd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ctx5(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func body(t *testing.T) *os.File {
	f, _ := os.CreateTemp(t.TempDir(), "b")
	f.WriteString("Subject: x\n\nhi\n")
	f.Seek(0, 0)
	return f
}

// A corrupt envelope record must not keep the start-up walk from ending.
func TestWalkSkipsCorruptRecord(t *testing.T) {
	b := mem.OpenBackend("")
	s1, _ := queue.New(b, &queue.Options{Node: "n", SelfScheduled: true})
	q1 := NewQueue(s1, &QueueOptions{Logger: quiet(), TempDir: t.TempDir()})
	q1.Init(ctx5(t), 2)
	m, _ := q1.MessageCreate(ctx5(t))
	e1, _ := q1.EnvelopeCreate(ctx5(t), m, blob("a"))
	e2, _ := q1.EnvelopeCreate(ctx5(t), m, blob("b"))
	if err := q1.MessageCommit(ctx5(t), m, body(t)); err != nil {
		t.Fatal(err)
	}
	q1.Shutdown(context.Background())
	// corrupt e1's record
	key := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: e1})
	if _, err := b.Put(context.Background(), key, bytes.NewReader([]byte("garbage")), &driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	s2, _ := queue.New(b, &queue.Options{Node: "n", SelfScheduled: true})
	q2 := NewQueue(s2, &QueueOptions{Logger: quiet(), TempDir: t.TempDir()})
	q2.Init(ctx5(t), 2)
	defer q2.Shutdown(context.Background())
	start := time.Now()
	var got []uint64
	skips := 0
	for time.Since(start) < 3*time.Second {
		id, _, err := q2.EnvelopeWalk(ctx5(t))
		if err == io.EOF {
			t.Logf("walk ended: %x", got)
			return
		}
		if errors.Is(err, ErrSkip) {
			skips++
			continue
		}
		got = append(got, id)
	}
	t.Errorf("walk did not end after 3s: %d skips, returned %x (e1=%x e2=%x)", skips, got, e1, e2)
}

type sharedEnv struct {
	b          driver.Backend
	a, sb      *queue.Store
	q          *Queue
	mu         sync.Mutex
	discovered []queue.EvpID
}

func setupShared(t *testing.T) (*sharedEnv, uint32, []uint64) {
	se := &sharedEnv{b: mem.OpenBackend("")}
	se.a, _ = queue.New(se.b, &queue.Options{Node: "a", HeartbeatInterval: 20 * time.Millisecond, NodeTTL: 60 * time.Millisecond, SelfScheduled: true})
	qa := NewQueue(se.a, &QueueOptions{Logger: quiet(), TempDir: t.TempDir(), Shared: true, Discover: func(context.Context, queue.EvpID) error { return nil }})
	// Not Init: no RunNode for a; Tx.Claim writes its heartbeat.
	m, _ := qa.MessageCreate(ctx5(t))
	e1, _ := qa.EnvelopeCreate(ctx5(t), m, blob("a"))
	e2, _ := qa.EnvelopeCreate(ctx5(t), m, blob("b"))
	if err := qa.MessageCommit(ctx5(t), m, body(t)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond) // a is dead
	se.sb, _ = queue.New(se.b, &queue.Options{Node: "b", HeartbeatInterval: time.Hour, SelfScheduled: true})
	se.q = NewQueue(se.sb, &QueueOptions{Logger: quiet(), TempDir: t.TempDir(), Shared: true, Discover: func(_ context.Context, id queue.EvpID) error {
		se.mu.Lock()
		se.discovered = append(se.discovered, id)
		se.mu.Unlock()
		return nil
	}})
	se.q.Init(ctx5(t), 2)
	t.Cleanup(func() { se.q.Shutdown(context.Background()) })
	return se, m, []uint64{e1, e2}
}

func (se *sharedEnv) walk(t *testing.T) []uint64 {
	var got []uint64
	for {
		id, _, err := se.q.EnvelopeWalk(ctx5(t))
		if err == io.EOF {
			return got
		}
		if errors.Is(err, ErrSkip) {
			continue
		}
		got = append(got, id)
	}
}

func (se *sharedEnv) disc() []queue.EvpID {
	time.Sleep(300 * time.Millisecond)
	se.mu.Lock()
	defer se.mu.Unlock()
	return append([]queue.EvpID(nil), se.discovered...)
}

// A takeover that lands while the start-up walk lists this node's
// envelopes must not hand smtpd, through discover, what the walk gave it.
func TestTakeoverDuringWalkNoDuplicate(t *testing.T) {
	se, m, evs := setupShared(t)
	ids, err := se.sb.Takeover(ctx5(t)) // RunNode's scan, running during the walk
	if err != nil || len(ids) != 2 {
		t.Fatalf("takeover %v %v", ids, err)
	}
	walked := se.walk(t) // walk lists own/b/ before OnTakeover ran
	se.q.takenOver(ids)  // OnTakeover after Takeover returns
	d := se.disc()
	t.Logf("msg %08x envelopes %x; walked %x; discovered %v", m, evs, walked, d)
	if len(walked) > 0 && len(d) > 0 {
		t.Errorf("smtpd got %d envelopes from the walk AND %d via discover (rehomed copies included): duplicate delivery", len(walked), len(d))
	}
}

// Envelopes of one message handed over in two batches: smtpd knows the
// message after the first, so the second must be moved into a message of
// its own, not discovered as it is (smtpd 6.8 would ignore it).
func TestHandOverSplitBatches(t *testing.T) {
	se, m, _ := setupShared(t)
	walked := se.walk(t) // walk first, nothing owned yet
	ids, err := se.sb.Takeover(ctx5(t))
	if err != nil || len(ids) != 2 {
		t.Fatalf("takeover %v %v", ids, err)
	}
	se.q.takenOver(ids[:1])
	se.disc()
	se.q.takenOver(ids[1:])
	d := se.disc()
	t.Logf("walked %x discovered %v", walked, d)
	n := 0
	for _, id := range d {
		if uint32(id.MsgID()) == m {
			n++
		}
	}
	if n > 1 {
		t.Errorf("discover called for %d envelopes of msgid %08x; smtpd ignores all but the first", n, m)
	}
}
