package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
)

// TestStats builds a queue with envelopes in every due bucket, claims of
// two nodes, a quarantined message and an open transaction, and checks
// every figure of Stats and what it cost.
func TestStats(t *testing.T) {
	ctx := t.Context()
	open := memNodes(t)
	a, b := open("a"), open("b")
	var bytes int64
	commit := func(s *queue.Store, n int, body string, claim bool) []queue.EvpID {
		t.Helper()
		tx, err := s.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			if _, err := tx.AddEnvelope([]byte("rcpt")); err != nil {
				t.Fatal(err)
			}
		}
		if claim {
			tx.ClaimOnCommit(0)
		}
		if _, err := tx.WriteContent(ctx, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return tx.Envelopes()
	}
	deferBy := func(id queue.EvpID, d time.Duration) {
		t.Helper()
		c, err := a.Claim(ctx, id, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Defer(ctx, nil, time.Now().Add(d)); err != nil {
			t.Fatal(err)
		}
	}
	m1 := commit(a, 2, "one", false)
	m2 := commit(a, 1, "twotwo", false)
	deferBy(m2[0], 30*time.Minute)
	m3 := commit(a, 3, "three", false)
	deferBy(m3[0], 5*time.Hour)
	deferBy(m3[1], 72*time.Hour)
	commit(a, 2, "four", true)
	bytes = int64(len("one") + len("twotwo") + len("three") + len("four"))
	m5 := commit(a, 1, "quarantined", false)
	if err := a.Quarantine(ctx, m5[0].MsgID(), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Claim(ctx, m1[0], 0); err != nil {
		t.Fatal(err)
	}
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx.AddEnvelope([]byte("open"))
	if _, err := tx.WriteContent(ctx, strings.NewReader("open")); err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	st, err := a.Stats(ctx, &queue.StatsOptions{Sizes: true})
	if err != nil {
		t.Fatal(err)
	}
	want := queue.DueHistogram{Now: 3, Hour: 1, Day: 1, Later: 1, Unscheduled: 2}
	if st.Messages != 4 || st.Envelopes != 8 || st.Bytes != bytes || st.Due != want {
		t.Errorf("messages %d, envelopes %d, bytes %d, due %+v; want 4, 8, %d, %+v", st.Messages, st.Envelopes, st.Bytes, st.Due, bytes, want)
	}
	if st.Held["a"] != 2 || st.Held["b"] != 1 || len(st.Held) != 2 {
		t.Errorf("held %v, want a:2 b:1", st.Held)
	}
	if len(st.Nodes) != 2 || !st.Nodes[0].Alive || !st.Nodes[1].Alive {
		t.Errorf("nodes %+v, want a and b alive", st.Nodes)
	}
	// Every message is of a block of IDs, which tells its age when it
	// has no due pointer: the claimed one, and the deferred one of one
	// envelope.
	if st.Quarantined != 1 || st.Transactions.Open != 1 || st.AgeUnknown != 0 {
		t.Errorf("quarantined %d, open %d, age unknown %d; want 1, 1, 0", st.Quarantined, st.Transactions.Open, st.AgeUnknown)
	}
	if o := st.Oldest; o == nil || o.Envelope.MsgID() != o.ID || (o.ID != m1[0].MsgID() && o.ID != m2[0].MsgID() && o.ID != m3[0].MsgID()) || time.Since(o.Time) > time.Hour {
		t.Errorf("oldest %+v, want one of the messages committed unclaimed", st.Oldest)
	}
	// One page of each of six listings, a HEAD per message, and no read
	// of an envelope or a content: the reads are of the transactions (at
	// most one per message) and of the two nodes.
	if st.Cost.Lists != 6 || st.Cost.Heads != 4 || st.Cost.Gets < 3 || st.Cost.Gets > 2+6 {
		t.Errorf("cost %+v; want 6 lists, 4 heads, 3 to 8 gets", st.Cost)
	}

	st, err = a.Stats(ctx, nil)
	if err != nil || st.Bytes != -1 || st.Cost.Heads != 0 {
		t.Errorf("without sizes: bytes %d, heads %d, %v; want -1, 0", st.Bytes, st.Cost.Heads, err)
	}
}
