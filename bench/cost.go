package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Cost is the number of requests one operation makes, on average, beside
// the fewest the store needs for it.
type Cost struct {
	Op       string  `json:"op"`
	Requests float64 `json:"requests"` // per operation, background work included
	Floor    float64 `json:"floor"`    // the fewest requests the operation needs
	By       Counts  `json:"by"`       // the requests of all n operations, by kind
	N        int     `json:"n"`        // operations measured
}

// Costs measures the requests of each queue operation on b: commit with 1
// and 10 recipients, load, claim, update, defer, delete, delivery (due
// scan, claim and delete of one envelope) and walk (per 1,000 envelopes).
// Each operation runs n times through a Store of its own over a Counter,
// and that Store is closed before the count is read, so the requests it
// leaves to the background are counted too. The Stores keep their queue
// under a prefix of b of their own, which is removed at the end, so other
// messages in b are neither counted nor changed. node names the Stores'
// node.
func Costs(ctx context.Context, b driver.Backend, node string, n int) ([]Cost, error) {
	if n < 1 {
		return nil, fmt.Errorf("bench: costs of %d operations", n)
	}
	// A queue of its own, under a prefix of b, so that other messages in
	// b are neither counted nor touched.
	pb := driver.Prefixed(b, "bench-costs-"+randHex(6))
	defer CleanAll(context.WithoutCancel(ctx), pb)
	c := Count(pb)
	opts := &queue.Options{Node: node, Grace: time.Hour}
	var out []Cost
	// phase runs fn on a fresh Store and records the requests it made,
	// from the first call of fn to the Store's Close, as op.
	phase := func(op string, floor float64, ops int, fn func(s *queue.Store) error) error {
		s, err := queue.New(c.Backend(), opts)
		if err != nil {
			return err
		}
		base := c.Counts()
		err = fn(s)
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("bench: %s: %w", op, err)
		}
		if ops > 0 {
			d := c.Counts().Sub(base)
			out = append(out, Cost{Op: op, Requests: float64(d.Total()) / float64(ops), Floor: floor, By: d, N: ops})
		}
		return nil
	}
	content := bytes.Repeat([]byte("x"), 4096)
	commit := func(s *queue.Store, rcpts int) ([]queue.EvpID, error) {
		tx, err := s.Begin(ctx)
		if err != nil {
			return nil, err
		}
		for i := range rcpts {
			if _, err := tx.AddEnvelope(fmt.Appendf(nil, "rcpt%d@example.org", i)); err != nil {
				return nil, err
			}
		}
		_, err = tx.CommitContent(ctx, bytes.NewReader(content))
		return tx.Envelopes(), err
	}
	var ones, tens []queue.EvpID
	for _, r := range []int{1, 10} {
		err := phase(fmt.Sprintf("commit, %d rcpt", r), float64(r+1), n, func(s *queue.Store) error {
			for range n {
				ids, err := commit(s, r)
				if err != nil {
					return err
				}
				if r == 1 {
					ones = append(ones, ids...)
				} else {
					tens = append(tens, ids...)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	err := phase("walk, per 1,000 envelopes", 1, 0, func(s *queue.Store) error {
		base, seen := c.Counts(), 0
		for _, err := range s.Walk(ctx) {
			if err != nil {
				return err
			}
			seen++
		}
		d := c.Counts().Sub(base)
		out = append(out, Cost{Op: "walk, per 1,000 envelopes", Requests: float64(d.Total()) * 1000 / float64(max(seen, 1)), Floor: 1, By: d, N: seen})
		return nil
	})
	if err != nil {
		return nil, err
	}
	each := func(op string, floor float64, fn func(s *queue.Store, id queue.EvpID) error) error {
		return phase(op, floor, len(ones), func(s *queue.Store) error {
			for _, id := range ones {
				if err := fn(s, id); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := each("load", 1, func(s *queue.Store, id queue.EvpID) error {
		_, err := s.Load(ctx, id)
		return err
	}); err != nil {
		return nil, err
	}
	// The node's first heartbeat is a cost of the node, not of a claim:
	// it is written before each Store's count starts.
	held := func(op string, floor float64, fn func(cl *queue.Claim) error) error {
		return each(op, floor, func(s *queue.Store, id queue.EvpID) error {
			cl, err := s.Claim(ctx, id, time.Minute)
			if err != nil {
				return err
			}
			if fn == nil {
				return cl.Release(ctx)
			}
			return fn(cl)
		})
	}
	heartbeat := func() error {
		s, err := queue.New(c.Backend(), opts)
		if err != nil {
			return err
		}
		defer s.Close()
		return s.Heartbeat(ctx)
	}
	if err := heartbeat(); err != nil {
		return nil, err
	}
	if err := held("claim + release", 2, nil); err != nil {
		return nil, err
	}
	if err := held("claim + update + release", 3, func(cl *queue.Claim) error {
		if err := cl.Update(ctx, []byte("updated@example.org")); err != nil {
			return err
		}
		return cl.Release(ctx)
	}); err != nil {
		return nil, err
	}
	if err := held("claim + defer", 2, func(cl *queue.Claim) error {
		return cl.Defer(ctx, cl.Envelope().Data, time.Now().Add(time.Hour))
	}); err != nil {
		return nil, err
	}
	if err := held("claim + delete (last envelope)", 3, func(cl *queue.Claim) error {
		return cl.Delete(ctx)
	}); err != nil {
		return nil, err
	}
	// Delivery: what a worker pays per envelope to find due mail, take it
	// and remove it. The 10-recipient messages go first, so that the due
	// scan finds only the envelopes delivered.
	var due []queue.EvpID
	if err := phase("", 0, 0, func(s *queue.Store) error {
		// A due scan drops the due pointers that the phases above left
		// stale (a deferred envelope leaves its message's pointer), so
		// that the delivery below pays only for its own.
		if _, err := s.Due(ctx, 1000); err != nil {
			return err
		}
		for i, id := range tens {
			if i > 0 && id.MsgID() == tens[i-1].MsgID() {
				continue
			}
			if err := s.DeleteMessage(ctx, id.MsgID()); err != nil && !errors.Is(err, queue.ErrNotFound) {
				return err
			}
		}
		for range n {
			ids, err := commit(s, 1)
			if err != nil {
				return err
			}
			due = append(due, ids...)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := phase("deliver (due scan, claim, delete)", 3, len(due), func(s *queue.Store) error {
		left := slices.Clone(due)
		for round := 0; len(left) > 0; round++ {
			if round > 10*len(due) {
				return fmt.Errorf("%d envelopes never came due", len(left))
			}
			envs, err := s.Due(ctx, 100)
			if err != nil {
				return err
			}
			progress := false
			for _, e := range envs {
				i := slices.Index(left, e.ID)
				if i < 0 {
					continue
				}
				cl, err := s.ClaimEnvelope(ctx, e, time.Minute)
				if err != nil {
					return err
				}
				if err := cl.Delete(ctx); err != nil {
					return err
				}
				left = slices.Delete(left, i, i+1)
				progress = true
			}
			if !progress && len(left) > 0 {
				return fmt.Errorf("a due scan found none of %d envelopes", len(left))
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return out, nil
}
