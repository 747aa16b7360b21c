package queue

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mxqueue/mxq/queue/layout"
)

// StatsOptions configure Store.Stats. The zero value gives the defaults.
type StatsOptions struct {
	// Sizes makes Stats add up the content sizes, with one metadata
	// request (HEAD) per message. Default: false, Bytes is -1.
	Sizes bool
}

// Stats describes a queue as Store.Stats found it.
type Stats struct {
	// Time is when the figures were taken.
	Time time.Time `json:"time"`
	// Messages and Envelopes count the committed ones.
	Messages  int64 `json:"messages"`
	Envelopes int64 `json:"envelopes"`
	// Bytes adds up the content of the committed messages, or is -1
	// without StatsOptions.Sizes or when the store does not tell sizes.
	Bytes int64 `json:"bytes"`
	// Oldest is the oldest message by its commit time, to the minute, and
	// one of its envelopes; nil when no message has a commit time (see
	// AgeUnknown). The commit time is that of the message's due pointer.
	// A message without one (committed claimed, with Tx.ClaimOnCommit, or
	// into a self-scheduled queue, or of one envelope that has been
	// deferred since) counts from when its block of IDs was taken, which
	// is at most twice Options.Grace earlier.
	Oldest *OldestMessage `json:"oldest,omitempty"`
	// AgeUnknown counts the messages whose commit time the listing does not
	// tell: those without a due pointer of their own and outside a block
	// of IDs (imported, or stored by an earlier version).
	AgeUnknown int64 `json:"age_unknown"`
	// Due is a histogram of the envelopes' due times.
	Due DueHistogram `json:"due"`
	// Held counts the envelopes claimed, by node name.
	Held map[string]int64 `json:"held"`
	// Nodes are the nodes with a heartbeat record.
	Nodes []NodeStat `json:"nodes"`
	// Quarantined counts the quarantined messages.
	Quarantined int64 `json:"quarantined"`
	// Transactions counts the uncommitted transactions.
	Transactions TxStats `json:"transactions"`
	// Cost is what the Stats call cost in requests.
	Cost StatsCost `json:"cost"`
}

// OldestMessage is the oldest message of Stats.
type OldestMessage struct {
	ID       MsgID     `json:"msgid"`
	Envelope EvpID     `json:"envelope"`
	Time     time.Time `json:"time"`
}

// DueHistogram counts envelopes by due time, as of Stats.Time.
type DueHistogram struct {
	Now         int64 `json:"now"`         // due now, or overdue
	Hour        int64 `json:"hour"`        // within the hour
	Day         int64 `json:"day"`         // within a day
	Later       int64 `json:"later"`       // later than that
	Unscheduled int64 `json:"unscheduled"` // no due pointer: claimed at commit, or self-scheduled
}

// NodeStat describes a node's heartbeat.
type NodeStat struct {
	Name    string    `json:"name"`
	Alive   bool      `json:"alive"`
	Beat    time.Time `json:"beat"`
	Expires time.Time `json:"expires"`
}

// TxStats counts uncommitted transactions.
type TxStats struct {
	// Open counts the transactions within Options.Grace.
	Open int64 `json:"open"`
	// Abandoned counts the open transactions older than Options.Grace,
	// which the next Sweep aborts.
	Abandoned int64 `json:"abandoned"`
	// Aborted counts the aborted transactions whose tombstones a Sweep
	// removes after Options.Grace.
	Aborted int64 `json:"aborted"`
}

// StatsCost counts the requests of a Stats call: listing pages, reads of
// whole objects, and metadata reads.
type StatsCost struct {
	Lists int64 `json:"lists"`
	Gets  int64 `json:"gets"`
	Heads int64 `json:"heads"`
}

// msgStat is what Stats keeps per committed message.
type msgStat struct {
	first EvpID
	n     int32 // envelopes
	own   int32 // envelopes with a due pointer of their own
	due   int64 // the message's due bucket, 0 if none
}

// Stats describes the queue from listings of its key layout: it lists the
// envelopes, transactions, due pointers, claim pointers, nodes and
// quarantine, reads the records of the (few) transactions, nodes and due
// groups, and reads no envelope and no content. With StatsOptions.Sizes it also makes
// one metadata request per message. opts may be nil. Stats.Cost reports
// the requests.
//
// The figures come from the pointers the queue keeps beside its envelopes,
// so they are those of a quiescent queue: an envelope whose due time
// changes during the call may be counted in either bucket, and a pointer
// that a failed request left behind counts until Due removes it. Memory
// grows with the number of messages, by a few words each.
func (s *Store) Stats(ctx context.Context, opts *StatsOptions) (*Stats, error) {
	if err := s.check("stats"); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &StatsOptions{}
	}
	now := s.now()
	st := &Stats{Time: now.UTC(), Bytes: -1, Held: map[string]int64{}, Nodes: []NodeStat{}}
	var lists, gets, heads atomic.Int64
	// listKeys lists prefix, counting its pages; an empty listing is a
	// request too.
	listKeys := func(prefix string, fn func(key string)) error {
		pages := int64(0)
		err := s.list(ctx, prefix, func(keys []string) error {
			pages++
			for _, k := range keys {
				fn(k)
			}
			return nil
		})
		lists.Add(max(pages, 1))
		return err
	}
	list := func(k layout.Kind, fn func(handle, string)) error {
		return listKeys(layout.Key(layout.Handle{Kind: k}), func(key string) {
			if h, err := parseHandle(key); err == nil && h.Kind == k {
				fn(h, key)
			}
		})
	}
	wrap := func(err error) error { return s.wrap("stats", "", err, nil) }

	// Transactions: the messages that are not committed.
	uncommitted := map[MsgID]bool{}
	var resv []MsgID
	if err := list(layout.Reservation, func(h handle, _ string) { resv = append(resv, h.Msg) }); err != nil {
		return nil, wrap(err)
	}
	for _, m := range resv {
		gets.Add(1)
		r, _, err := s.readReservation(ctx, m)
		if s.isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, wrap(err)
		}
		switch r.State {
		case stateOpen:
			uncommitted[m] = true
			if now.Sub(r.Created) < s.opts.Grace {
				st.Transactions.Open++
			} else {
				st.Transactions.Abandoned++
			}
		case stateAborted:
			uncommitted[m] = true
			st.Transactions.Aborted++
		}
	}

	// Envelopes, by message.
	msgs := map[MsgID]*msgStat{}
	err := list(layout.Envelope, func(h handle, _ string) {
		m := h.Evp.MsgID()
		if uncommitted[m] {
			return
		}
		ms := msgs[m]
		if ms == nil {
			ms = &msgStat{first: h.Evp}
			msgs[m] = ms
		}
		ms.n++
	})
	if err != nil {
		return nil, wrap(err)
	}
	// Messages of blocks: their records tell the uncommitted ones.
	blocks := make(map[uint32]*blockRecord)
	for m := range msgs {
		blocks[layout.BlockOf(uint32(m))] = nil
	}
	if len(blocks) > 8 {
		lists.Add(1)
	}
	if err := s.readBlocks(ctx, blocks); err != nil {
		return nil, wrap(err)
	}
	for _, r := range blocks {
		if r != nil {
			gets.Add(1)
		}
	}
	for m := range msgs {
		r := blocks[layout.BlockOf(uint32(m))]
		if r == nil {
			continue
		}
		switch lo := lowBits(m); {
		case r.Foreign.has(lo) || r.Committed.has(lo):
			continue
		case r.Aborted.has(lo):
			st.Transactions.Aborted++
		case now.Sub(r.Created) < 2*s.opts.Grace:
			st.Transactions.Open++
		default:
			st.Transactions.Abandoned++
		}
		uncommitted[m] = true
		delete(msgs, m)
	}
	st.Messages = int64(len(msgs))
	for _, ms := range msgs {
		st.Envelopes += int64(ms.n)
	}

	// Due pointers: an envelope's own, or its message's, written at
	// commit, whose bucket is the commit time.
	nowBucket := dueBucket(now.Unix())
	count := func(bucket, n int64) {
		switch d := bucket - nowBucket; {
		case d <= 0:
			st.Due.Now += n
		case d <= 3600/dueWidth:
			st.Due.Hour += n
		case d <= 86400/dueWidth:
			st.Due.Day += n
		default:
			st.Due.Later += n
		}
	}
	var groups []handle
	err = listKeys(layout.Key(layout.Handle{Kind: layout.Due}), func(key string) {
		h, err := parseHandle(key)
		if err != nil {
			return
		}
		switch {
		case h.Kind == layout.DueGroup:
			groups = append(groups, h)
			return
		case h.Kind != layout.Due:
			return
		case h.Msg != 0:
			if ms := msgs[h.Msg]; ms != nil && (ms.due == 0 || h.Due < ms.due) {
				ms.due = h.Due
			}
			return
		}
		if ms := msgs[h.Evp.MsgID()]; ms != nil && ms.own < ms.n {
			ms.own++
			count(h.Due, 1)
		}
	})
	if err != nil {
		return nil, wrap(err)
	}
	// Due groups: one read each, of the entries of many messages, up to
	// Options.Concurrency at a time.
	entries := make([][]EvpID, len(groups))
	err = s.parallel(ctx, len(groups), func(ctx context.Context, i int) error {
		h := groups[i]
		key := layout.Key(layout.Handle{Kind: layout.DueGroup, Due: h.Due, Evp: uint64(h.Evp)})
		if _, ok := s.groups.get(key); !ok {
			gets.Add(1)
		}
		ids, err := s.readGroup(ctx, key, h.Evp)
		if errors.Is(err, ErrCorrupt) {
			return nil // its messages count as unscheduled
		}
		entries[i] = ids
		return err
	})
	if err != nil {
		return nil, wrap(err)
	}
	for i, h := range groups {
		for _, id := range entries[i] {
			if ms := msgs[id.MsgID()]; ms != nil && ms.own < ms.n {
				ms.own++
				count(h.Due, 1)
			}
		}
	}
	for m, ms := range msgs {
		rest := int64(ms.n - ms.own)
		var t time.Time
		if ms.due == 0 {
			st.Due.Unscheduled += rest
			// The message's pointer is gone, or it never had one:
			// its block of IDs tells when it was committed, to
			// within twice the grace period.
			r := blocks[layout.BlockOf(uint32(m))]
			if r == nil || r.Foreign.has(lowBits(m)) {
				st.AgeUnknown++
				continue
			}
			t = r.Created.UTC().Truncate(time.Minute)
		} else {
			count(ms.due, rest)
			t = time.Unix(ms.due*dueWidth, 0).UTC()
		}
		if o := st.Oldest; o == nil || t.Before(o.Time) || t.Equal(o.Time) && m < o.ID {
			st.Oldest = &OldestMessage{ID: m, Envelope: ms.first, Time: t}
		}
	}

	// Claims, by node: a pointer names an envelope, or every envelope of
	// a message claimed at its commit that has not been rescheduled.
	err = list(layout.Claim, func(h handle, _ string) {
		switch {
		case h.Evp != 0:
			if msgs[h.Evp.MsgID()] != nil {
				st.Held[h.Node]++
			}
		case msgs[h.Msg] != nil:
			ms := msgs[h.Msg]
			st.Held[h.Node] += int64(ms.n - ms.own)
		}
	})
	if err != nil {
		return nil, wrap(err)
	}

	// Nodes: few, each read.
	var names []string
	if err := list(layout.Node, func(h handle, _ string) { names = append(names, h.Node) }); err != nil {
		return nil, wrap(err)
	}
	for _, n := range names {
		gets.Add(1)
		rec, _, err := s.readNode(ctx, n)
		if err != nil {
			return nil, wrap(err)
		}
		if rec != nil {
			st.Nodes = append(st.Nodes, NodeStat{Name: n, Alive: now.Before(rec.Expires), Beat: rec.Beat.UTC(), Expires: rec.Expires.UTC()})
		}
	}

	// Quarantine: one info record per message.
	err = listKeys(layout.Key(layout.Handle{Kind: layout.Quarantine}), func(k string) {
		if strings.HasSuffix(k, "/info") {
			st.Quarantined++
		}
	})
	if err != nil {
		return nil, wrap(err)
	}

	if opts.Sizes {
		ids := make([]MsgID, 0, len(msgs))
		for m := range msgs {
			ids = append(ids, m)
		}
		var total atomic.Int64
		var unknown atomic.Bool
		err := s.parallel(ctx, len(ids), func(ctx context.Context, i int) error {
			heads.Add(1)
			size, err := s.contentSize(ctx, ids[i])
			if s.isNotFound(err) {
				return nil // delivered meanwhile
			}
			if err != nil {
				return err
			}
			if size < 0 {
				unknown.Store(true)
			} else {
				total.Add(max(size-trailerSize, 0))
			}
			return nil
		})
		if err != nil {
			return nil, wrap(err)
		}
		if !unknown.Load() {
			st.Bytes = total.Load()
		}
	}
	st.Cost = StatsCost{Lists: lists.Load(), Gets: gets.Load(), Heads: heads.Load()}
	return st, nil
}

// CommitTimes returns the commit time, to the minute, of every committed
// message that has one in its due pointer: those committed neither
// claimed (Tx.ClaimOnCommit) nor into a self-scheduled queue. It lists the due
// pointers and reads nothing: one request per 1000 pointers. Messages gone
// since their pointer was written may be among them.
func (s *Store) CommitTimes(ctx context.Context) (map[MsgID]time.Time, error) {
	if err := s.check("commit times"); err != nil {
		return nil, err
	}
	out := map[MsgID]time.Time{}
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Due}), func(keys []string) error {
		for _, k := range keys {
			if h, err := parseHandle(k); err == nil && h.Kind == layout.Due && h.Msg != 0 {
				t := time.Unix(h.Due*dueWidth, 0)
				if old, ok := out[h.Msg]; !ok || t.Before(old) {
					out[h.Msg] = t
				}
			}
		}
		return nil
	})
	return out, s.wrap("commit times", "", err, nil)
}
