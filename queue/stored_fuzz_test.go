package queue_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// The records FuzzStoredRecord replaces with arbitrary bytes.
const (
	recEnvelope = iota
	recReservation
	recNode
	recQuarantine
	recContent
	recKinds
)

// fuzzClock is a clock that tests move by hand.
type fuzzClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fuzzClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fuzzClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// keepOpen is a Backend that Close leaves open, so that several Stores
// share it.
type keepOpen struct{ driver.Backend }

func (keepOpen) Close() error { return nil }

// FuzzStoredRecord writes arbitrary bytes where the queue keeps a record
// (an envelope, a transaction's reservation, a node's heartbeat, a
// quarantine record, a message's content) and has Stores read it back
// through the calls that parse it. Every call either succeeds or fails
// with ErrCorrupt (or, for an envelope, ErrNotFound or ErrConflict, which
// a record may mean), and one bad record never stops the work on the
// others: the other envelope of its message still loads and is due, a
// sweep still aborts an abandoned transaction, a takeover still takes a
// dead node's envelope.
func FuzzStoredRecord(f *testing.F) {
	f.Add(uint8(recEnvelope), []byte("mxq-evp/1 {\"h\":\"mx9\",\"t\":3,\"x\":1}\nrcpt"))
	f.Add(uint8(recEnvelope), []byte("mxq-evp/1 {\"g\":true}\n"))
	f.Add(uint8(recEnvelope), []byte("mxq-evp/1 {\"p\":42}\n"))
	f.Add(uint8(recEnvelope), []byte("mxq-evp/1 {\"d\":-9223372036854775808}\n"))
	f.Add(uint8(recReservation), []byte(`{"state":"open","created":"2000-01-01T00:00:00Z","nonce":1}`))
	f.Add(uint8(recReservation), []byte(`{"state":"aborted"}`))
	f.Add(uint8(recReservation), []byte(`not json`))
	f.Add(uint8(recNode), []byte(`{"name":"mx1","session":1,"expires":"2000-01-01T00:00:00Z"}`))
	f.Add(uint8(recNode), []byte(`{"session":18446744073709551615,"expires":"9999-01-01T00:00:00Z"}`))
	f.Add(uint8(recNode), []byte(`{`))
	f.Add(uint8(recQuarantine), []byte(`{"id":"00000001","reason":"x","envelopes":["0000000100000001"]}`))
	f.Add(uint8(recQuarantine), []byte(`{"id":"00000000"}`))
	f.Add(uint8(recContent), []byte("hello"))
	f.Add(uint8(recContent), []byte{})
	f.Fuzz(func(t *testing.T, kind uint8, raw []byte) {
		kind %= recKinds
		// A record that makes a call hang is a failure too: crash with
		// it, so that the fuzzer keeps the input.
		watchdog := time.AfterFunc(20*time.Second, func() {
			panic(fmt.Sprintf("a record of kind %d holding %q: the calls hang", kind, raw))
		})
		defer watchdog.Stop()
		ctx := t.Context()
		clock := &fuzzClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
		b := keepOpen{mem.OpenBackend("")} // shared by the Stores below
		open := func(node string) *queue.Store {
			s, err := queue.New(b, &queue.Options{Node: node, Clock: clock.Now, Grace: time.Minute, Retries: -1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
		// mx1 commits a message with two envelopes, claims the first and
		// dies; another transaction is left open.
		s1 := open("mx1")
		m, ids := commitMsg(t, s1, "content", "one", "two")
		if _, err := s1.Claim(ctx, ids[0], time.Hour); err != nil {
			t.Fatal(err)
		}
		tx, err := s1.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		abandoned := tx.ID()
		if _, err := tx.AddEnvelope([]byte("abandoned")); err != nil {
			t.Fatal(err)
		}
		s1.Close()
		if kind == recQuarantine {
			if err := open("mx1").Quarantine(ctx, m, "fuzz"); err != nil {
				t.Fatal(err)
			}
		}

		var key string
		switch kind {
		case recEnvelope:
			key = layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(ids[0])})
		case recReservation:
			key = layout.Key(layout.Handle{Kind: layout.Reservation, Msg: uint32(m)})
		case recNode:
			key = layout.Key(layout.Handle{Kind: layout.Node, Node: "mx1"})
		case recQuarantine:
			key = layout.Key(layout.Handle{Kind: layout.Quarantine, Msg: uint32(m)})
		case recContent:
			key = layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)})
		}
		if _, err := b.Put(ctx, key, bytes.NewReader(raw), &driver.PutOptions{Size: int64(len(raw))}); err != nil {
			t.Fatal(err)
		}
		clock.Advance(2 * time.Hour) // mx1's heartbeat and lease expire, grace passes

		// allowed reports whether err is a result a bad record may give.
		allowed := func(err error, also ...error) bool {
			if err == nil || errors.Is(err, queue.ErrCorrupt) {
				return true
			}
			for _, a := range also {
				if errors.Is(err, a) {
					return true
				}
			}
			return false
		}
		s := open("mx2")
		switch kind {
		case recEnvelope, recReservation:
			if _, err := s.Load(ctx, ids[0]); !allowed(err, queue.ErrNotFound) {
				t.Fatalf("Load of the envelope: %v", err)
			}
			if _, err := s.Claim(ctx, ids[0], time.Minute); !allowed(err, queue.ErrNotFound, queue.ErrConflict) {
				t.Fatalf("Claim of the envelope: %v", err)
			}
			var walked []queue.EvpID
			for id, err := range s.Walk(ctx) {
				if !allowed(err) {
					t.Fatalf("Walk: %v", err)
				}
				walked = append(walked, id)
			}
			if kind == recEnvelope {
				// Only the bad record is in question.
				e, err := s.Load(ctx, ids[1])
				if err != nil || string(e.Data) != "two" {
					t.Fatalf("Load of the other envelope: %v", err)
				}
				if !slices.Contains(walked, ids[1]) {
					t.Fatalf("Walk does not yield the other envelope")
				}
				due, err := s.Due(ctx, 100)
				if err != nil {
					t.Fatalf("Due: %v", err)
				}
				if !slices.ContainsFunc(due, func(e *queue.Envelope) bool { return e.ID == ids[1] }) {
					t.Fatalf("the other envelope is not due")
				}
			}
		case recNode:
			if _, err := s.Takeover(ctx); err != nil {
				t.Fatalf("Takeover past a heartbeat record of %q: %v", raw, err)
			}
			// A new process of mx1 replaces whatever its record holds.
			if err := open("mx1").Heartbeat(ctx); err != nil {
				t.Fatalf("Heartbeat over a record of %q: %v", raw, err)
			}
		case recQuarantine:
			qs, err := s.Quarantined(ctx)
			if !allowed(err) {
				t.Fatalf("Quarantined: %v", err)
			}
			for _, q := range qs {
				if q.ID != m {
					t.Fatalf("Quarantined yields message %v from the record of %v", q.ID, m)
				}
				for _, id := range q.Envelopes {
					if id.Valid() != nil || id.MsgID() != m {
						t.Fatalf("Quarantined yields envelope %v for message %v", id, m)
					}
				}
			}
		case recContent:
			rc, err := s.OpenContent(ctx, m)
			if err == nil {
				var got []byte
				got, err = io.ReadAll(rc)
				rc.Close()
				if err == nil && !bytes.HasPrefix(raw, got) {
					t.Fatalf("read %q from stored content %q", got, raw)
				}
			}
			if !allowed(err) {
				t.Fatalf("reading the content: %v", err)
			}
		}
		// Sweep aborts the abandoned transaction whatever the bad record.
		if _, err := s.Sweep(ctx); err != nil {
			t.Fatalf("Sweep: %v", err)
		}
		if ids, err := s.Envelopes(ctx, abandoned); err != nil || len(ids) != 0 {
			t.Fatalf("after Sweep, the abandoned transaction has envelopes %v (%v)", ids, err)
		}
	})
}
