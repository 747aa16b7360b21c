package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// commitN commits n messages of rcpts envelopes each and returns their
// envelopes.
func commitN(t *testing.T, s *queue.Store, n, rcpts int) []queue.EvpID {
	t.Helper()
	var ids []queue.EvpID
	for range n {
		tx, err := s.Begin(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for i := range rcpts {
			if _, err := tx.AddEnvelope(fmt.Appendf(nil, "rcpt%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := tx.WriteContent(t.Context(), bytes.NewReader([]byte("content"))); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tx.Envelopes()...)
	}
	return ids
}

// rawCount returns the number of keys under prefix in b.
func rawCount(t *testing.T, b driver.Backend, prefix string) int {
	t.Helper()
	keys, _, err := b.List(t.Context(), prefix, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// TestDeleteCollectsInBatches: the pointers and contents that deliveries
// leave go in a few multi-object deletes, and the envelopes' presence is
// read with one listing per block rather than one per message; Flush and
// Close leave nothing behind. The fenced delete is one conditional delete
// where the backend has it, and otherwise a tombstone, which goes with the
// pointers: in a multi-object delete where the backend has one (S3,
// MinIO), and with a delete of its own where it does not.
func TestDeleteCollectsInBatches(t *testing.T) {
	for _, how := range []string{"flush", "close", "tombstone", "tombstone in batches"} {
		t.Run(how, func(t *testing.T) {
			ctx := t.Context()
			raw := mem.OpenBackend("")
			var b driver.Backend = raw
			puts := 2
			switch how {
			case "tombstone":
				// The Backend alone: no optional capability.
				b = struct{ driver.Backend }{raw}
				puts = 3
			case "tombstone in batches":
				b = struct {
					driver.Backend
					driver.MultiDeleter
				}{raw, raw.(driver.MultiDeleter)}
				puts = 3
			}
			c := bench.Count(b)
			s, err := queue.New(c.Backend(), &queue.Options{Node: "n"})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			const n = 50
			ids := commitN(t, s, n, 2)
			// One envelope of each message first: the messages stay.
			for i := 0; i < len(ids); i += 2 {
				cl, err := s.Claim(ctx, ids[i], time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if err := cl.Delete(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if got := rawCount(t, raw, "msg/"); got != n {
				t.Fatalf("%d contents after half the envelopes went, want %d", got, n)
			}
			base := c.Counts()
			for i := 1; i < len(ids); i += 2 {
				cl, err := s.Claim(ctx, ids[i], time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if err := cl.Delete(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if how == "close" {
				err = s.Close()
			} else {
				err = s.Flush(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			d := c.Counts().Sub(base)
			// Per envelope: a load, the claim, its pointer and the
			// conditional delete (or a tombstone); then, for all of
			// them, a few listings and multi-object deletes (one per
			// key without the capability).
			maxDel := int64(n + 10)
			switch how {
			case "tombstone":
				maxDel = 4 * n // the envelope, the claim and due pointers, the content
			case "tombstone in batches":
				maxDel = 10
			}
			// The listings depend on how the deliveries fall into the
			// collector's 100 ms batches (one per block of at least four
			// messages, else one per message): about 4 on an idle
			// machine, more on a loaded one, and 50 without batches.
			if d.Get != n || d.Put != int64(puts*n) || d.Delete > maxDel || d.List > n/2 {
				t.Errorf("requests %+v for %d deliveries: want %d gets, %d puts, at most %d deletes and %d listings", d, n, n, puts*n, maxDel, n/2)
			}
			for _, p := range []string{"msg/", "evp/", "due/", "own/"} {
				if got := rawCount(t, raw, p); got != 0 {
					t.Errorf("%d keys left under %s", got, p)
				}
			}
		})
	}
}

// TestSweepCollectsDeliveredContent: the content of a delivered message
// whose clean-up was lost (the node died first) is removed by Sweep, and
// the content of a message with an envelope left is not.
func TestSweepCollectsDeliveredContent(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	s, err := queue.New(raw, &queue.Options{Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ids := commitN(t, s, 2, 1)
	// The delivery of the first removed its envelope, and died before
	// the rest.
	if err := raw.Delete(ctx, envKey(ids[0])); err != nil {
		t.Fatal(err)
	}
	st, err := s.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Collected != 1 {
		t.Errorf("Sweep collected %d, want 1", st.Collected)
	}
	if _, err := s.OpenContent(ctx, ids[1].MsgID()); err != nil {
		t.Errorf("the content of the message left: %v", err)
	}
	if got := rawCount(t, raw, "msg/"); got != 1 {
		t.Errorf("%d contents left, want 1", got)
	}
}

// TestLocalClaimRace: of two workers of one Store that claim the same
// envelope from the same read, the second learns from memory that it
// lost, with no request; a claim from a read made after the first claim
// goes to the store.
func TestLocalClaimRace(t *testing.T) {
	ctx := t.Context()
	c := bench.Count(mem.OpenBackend(""))
	s, err := queue.New(c.Backend(), &queue.Options{Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ids := commitN(t, s, 1, 1)
	if err := s.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	e, err := s.Load(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	cl, err := s.ClaimEnvelope(ctx, e, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	base := c.Counts()
	if _, err := s.ClaimEnvelope(ctx, e, time.Minute); !errors.Is(err, queue.ErrConflict) {
		t.Fatalf("a second claim from the same read: %v, want ErrConflict", err)
	}
	if d := c.Counts().Sub(base); d.Total() != 0 {
		t.Errorf("the lost claim made requests: %+v", d)
	}
	if err := cl.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, ids[0], time.Minute); err != nil {
		t.Fatalf("a claim after the release: %v", err)
	}
}

// gatedBackend holds the writes of envelopes until open is closed.
type gatedBackend struct {
	driver.Backend
	open chan struct{}
}

func (g *gatedBackend) Put(ctx context.Context, key string, r io.Reader, o *driver.PutOptions) (driver.Version, error) {
	if strings.HasPrefix(key, "evp/") {
		<-g.open
	}
	return g.Backend.Put(ctx, key, r, o)
}

// TestDueKeepsPointerOfCommitInFlight: a commit writes the due pointer of
// its one envelope in parallel with the envelope, so a due scan may meet
// the pointer first. It must leave the pointer, or the committed message
// would be due for no one.
func TestDueKeepsPointerOfCommitInFlight(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	g := &gatedBackend{Backend: raw, open: make(chan struct{})}
	s, err := queue.New(g, &queue.Options{Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tx, err := s.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, err := tx.AddEnvelope([]byte("rcpt"))
	if err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() {
		_, err := tx.WriteContent(ctx, bytes.NewReader([]byte("content")))
		if err == nil {
			err = tx.Commit(ctx)
		}
		committed <- err
	}()
	// The pointer lands; the envelope waits at the gate.
	ptr := ""
	for i := 0; ptr == ""; i++ {
		if i == 500 {
			t.Fatal("the commit wrote no due pointer")
		}
		keys, _, err := raw.List(ctx, "due/", "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) > 0 {
			ptr = keys[0]
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	if due, err := s.Due(ctx, 10); err != nil || len(due) != 0 {
		t.Fatalf("Due during the commit: %d envelopes, %v", len(due), err)
	}
	close(g.open)
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	if _, _, err := raw.Get(ctx, ptr); err != nil {
		t.Fatalf("the due pointer of the commit that was in flight: %v", err)
	}
	due, err := s.Due(ctx, 10)
	if err != nil || len(due) != 1 || due[0].ID != id {
		t.Fatalf("Due after the commit: %v, %v; want %v", due, err, id)
	}
}
