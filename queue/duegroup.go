package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// The due group.
//
// A message of one envelope committed by Tx.CommitContent writes no due
// pointer of its own on its critical path. Its committer collects the
// envelope with the others it commits within collectDelay, and before it
// sets their committed bits in the block record (settleLater), writes one
// object for them all: the group, under due/<bucket>/g<first envelope ID>,
// which lists their envelope IDs. So a commit is one write, the envelope,
// and the group and the bits are a fraction of a write each under load.
//
// The rules, beside those of the commit in one round:
//   - The group is written before the bits it carries, so a message whose
//     bit is set has a pointer. A committer that dies between its commit
//     and the group leaves the bit unset; whoever sets it for it (a reader
//     that rolls the message forward, or Sweep) writes the envelope's own
//     pointer first, as rollForward does for every such message.
//   - A group lists only messages whose commit returned, so an entry whose
//     envelope is missing is gone for good.
//   - An entry makes its envelope due as the envelope's own pointer would:
//     while the envelope has no pointer of its message (ByMsg) and is due
//     in the group's bucket. An envelope rescheduled to another bucket
//     since has a pointer of its own, and the entry is stale; one
//     rescheduled within the bucket has both, which is harmless.
//   - A due scan that finds every entry of a group stale removes it.

// groupMagic starts a group object; the number of entries follows.
const groupMagic = "mxq-due/1 "

// maxGroup bounds the entries of one group: the committed bits of one
// block that wait together.
const maxGroup = layout.BlockSize

// encodeGroup returns the object of a group of the given envelopes.
func encodeGroup(ids []EvpID) []byte {
	b := make([]byte, 0, len(groupMagic)+8+17*len(ids))
	b = append(b, groupMagic...)
	b = strconv.AppendInt(b, int64(len(ids)), 10)
	b = append(b, '\n')
	for _, id := range ids {
		b = append(b, id.String()...)
		b = append(b, '\n')
	}
	return b
}

// decodeGroup parses the group object stored at key. Anything but what
// encodeGroup writes, with the envelope that names the group first, is
// ErrCorrupt.
func decodeGroup(key string, first EvpID, b []byte) ([]EvpID, error) {
	bad := func(why string) error {
		return fmt.Errorf("%w: due group %s: %s", ErrCorrupt, key, why)
	}
	rest, ok := bytes.CutPrefix(b, []byte(groupMagic))
	if !ok {
		return nil, bad("no header")
	}
	line, rest, ok := bytes.Cut(rest, []byte{'\n'})
	n, err := strconv.Atoi(string(line))
	if !ok || err != nil || n < 1 || n > maxGroup || strconv.Itoa(n) != string(line) {
		return nil, bad("bad count")
	}
	if len(rest) != 17*n {
		return nil, bad("length does not match the count")
	}
	ids := make([]EvpID, n)
	for i := range ids {
		e := rest[17*i : 17*i+17]
		v, err := strconv.ParseUint(string(e[:16]), 16, 64)
		if err != nil || e[16] != '\n' || EvpID(v).String() != string(e[:16]) || EvpID(v).Valid() != nil {
			return nil, bad(fmt.Sprintf("bad entry %d", i))
		}
		ids[i] = EvpID(v)
	}
	if ids[0] != first {
		return nil, bad("the first entry is not the one it is named after")
	}
	for _, id := range ids {
		if layout.BlockOf(uint32(id.MsgID())) != layout.BlockOf(uint32(first.MsgID())) {
			return nil, bad("entries of more than one block")
		}
	}
	return ids, nil
}

// groupEntry is a message of one envelope committed by this Store whose
// due pointer is a group's.
type groupEntry struct {
	id  EvpID
	due int64 // Unix seconds
}

// writeGroups writes the due pointers of entries: a group for each
// bucket, or where a group's write fails, the envelopes' own pointers. It
// returns the entries that have a pointer stored.
func (s *Store) writeGroups(ctx context.Context, entries []groupEntry) []groupEntry {
	if len(entries) == 0 {
		return nil
	}
	byBucket := make(map[int64][]EvpID)
	var buckets []int64
	for _, e := range entries {
		b := max(dueBucket(e.due), 1)
		if byBucket[b] == nil {
			buckets = append(buckets, b)
		}
		byBucket[b] = append(byBucket[b], e.id)
	}
	slices.Sort(buckets)
	var stored []groupEntry
	var mu sync.Mutex
	for _, b := range buckets {
		ids := byBucket[b]
		key := layout.Key(layout.Handle{Kind: layout.DueGroup, Due: b, Evp: uint64(ids[0])})
		_, err := s.putBytes(ctx, key, encodeGroup(ids), driver.PutOptions{})
		if err == nil {
			s.groups.put(key, ids) // this Store's scans need not read it
			for _, id := range ids {
				stored = append(stored, groupEntry{id, b * dueWidth})
			}
			continue
		}
		// The envelopes' own pointers, as a reader that rolls them
		// forward would write.
		s.parallel(ctx, len(ids), func(ctx context.Context, i int) error {
			_, err := s.putBytes(ctx, dueKey(b*dueWidth, ids[i]), nil, driver.PutOptions{})
			if err == nil {
				mu.Lock()
				stored = append(stored, groupEntry{ids[i], b * dueWidth})
				mu.Unlock()
			}
			return nil
		})
	}
	return stored
}

// groupCache keeps the entries of the groups read lately: a group is
// written once and never changes, so a due scan reads each one once. It
// also remembers when each was listed (listGroup).
type groupCache struct {
	mu     sync.Mutex
	m      map[string][]EvpID
	order  []string
	listed map[string]time.Time
}

// listable reports whether the group at key was not listed within
// offerTime, and if so, records that it is listed now.
func (c *groupCache) listable(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.listed[key]; ok && now.Sub(t) < offerTime {
		return false
	}
	if c.listed == nil || len(c.listed) >= maxCachedGroups {
		c.listed = make(map[string]time.Time)
	}
	c.listed[key] = now
	return true
}

// maxCachedGroups bounds the group cache: 1,024 groups, of a few dozen
// entries each under a steady load, and at most maxGroup.
const maxCachedGroups = 1024

func (c *groupCache) get(key string) ([]EvpID, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids, ok := c.m[key]
	return ids, ok
}

func (c *groupCache) put(key string, ids []EvpID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string][]EvpID)
	}
	if _, ok := c.m[key]; ok {
		return
	}
	for len(c.order) >= maxCachedGroups {
		delete(c.m, c.order[0])
		c.order = c.order[1:]
	}
	c.m[key] = ids
	c.order = append(c.order, key)
}

func (c *groupCache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
	delete(c.listed, key)
	if i := slices.Index(c.order, key); i >= 0 {
		c.order = slices.Delete(c.order, i, i+1)
	}
}

// goneSet holds the envelopes this Store deleted lately, or found missing
// or rescheduled in a due scan, bounded: an envelope never comes back,
// nor needs its group again once it has a pointer of its own, so a due
// scan skips a group's entry for it with no read.
type goneSet struct {
	mu    sync.Mutex
	m     map[EvpID]bool
	order []EvpID
}

// maxGone bounds the gone set.
const maxGone = 1 << 17

func (g *goneSet) add(id EvpID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = make(map[EvpID]bool)
	}
	if g.m[id] {
		return
	}
	if len(g.order) >= maxGone {
		n := maxGone / 4
		for _, old := range g.order[:n] {
			delete(g.m, old)
		}
		g.order = append(g.order[:0], g.order[n:]...)
	}
	g.m[id] = true
	g.order = append(g.order, id)
}

func (g *goneSet) has(id EvpID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.m[id]
}

// readGroup returns the entries of the group at key, from the cache or
// the store. A group removed meanwhile has none.
func (s *Store) readGroup(ctx context.Context, key string, first EvpID) ([]EvpID, error) {
	if ids, ok := s.groups.get(key); ok {
		return ids, nil
	}
	b, _, err := s.getBytes(ctx, key, int64(len(groupMagic)+8+17*maxGroup))
	if s.isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	ids, err := decodeGroup(key, first, b)
	if err != nil {
		return nil, err
	}
	s.groups.put(key, ids)
	return ids, nil
}

// dueGroup adds to out the envelopes of the group at key that are due and
// free now, at most limit in all, and removes the group once every entry
// is stale. An entry that another caller of this Store was offered lately
// is skipped, and reported, unless last. It reports whether out has room
// left, and whether it skipped an offered entry.
func (s *Store) dueGroup(ctx context.Context, key string, h handle, now time.Time, out *[]*Envelope, limit int, last bool, mine map[EvpID]bool) (more, skipped bool, err error) {
	ids, err := s.readGroup(ctx, key, h.Evp)
	if errors.Is(err, ErrCorrupt) {
		return true, false, nil // Stats counts the messages it leaves unscheduled
	}
	if err != nil || len(ids) == 0 {
		return err == nil, false, err
	}
	live, listed := false, false
	for i, id := range ids {
		if len(*out) >= limit {
			return false, skipped, nil
		}
		if s.gone.has(id) {
			continue
		}
		if s.claims.has(id, now) || mine[id] {
			live = true // this Store's caller is on it, or this scan has it
			continue
		}
		if !last {
			if !s.claims.offer(id, now) {
				live, skipped = true, true
				continue
			}
			mine[id] = true
		}
		n := len(*out)
		stale, missing, err := s.dueEntry(ctx, id, h.Due, now, out)
		if missing && !listed {
			// Other nodes deliver from the group too: one listing
			// may save a read of each envelope they deleted. Its
			// failure costs those reads, and fails no scan.
			listed = true
			s.listGroup(ctx, key, ids[i+1:], now)
		}
		if !last && len(*out) == n {
			s.claims.unoffer(id)
			delete(mine, id)
		}
		if err != nil {
			return false, skipped, err
		}
		if !stale {
			live = true
		}
	}
	if !live {
		s.groups.drop(key)
		s.del(ctx, key)
	}
	return true, skipped, nil
}

// listGroup marks gone the entries ids of the group at key that a
// listing of their envelopes does not show, when more than a few are
// unknown to this Store: a due scan calls it once it met an entry that
// another node deleted, and one listing of the range of IDs that the
// entries span costs less than a read of each envelope deleted. A Store
// lists a group at most once in offerTime.
func (s *Store) listGroup(ctx context.Context, key string, ids []EvpID, now time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	unknown := 0
	lo, hi := ids[0], ids[0]
	for _, id := range ids {
		if !s.gone.has(id) && !s.claims.has(id, now) {
			unknown++
		}
		lo, hi = min(lo, id), max(hi, id)
	}
	if unknown < minListGroup || !s.groups.listable(key, now) {
		return nil
	}
	m := lo.MsgID()
	prefix := layout.BlockPrefix(layout.Envelope, uint32(m))
	// Start just before the first envelope of the lowest message.
	after := layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)})
	after = after[:len(after)-1]
	last := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(hi)})
	seen := make(map[EvpID]bool, len(ids))
	errPast := errors.New("past the group")
	err := s.listFrom(ctx, prefix, after, func(keys []string) error {
		for _, k := range keys {
			if id, err := parseEnvelopeKey(k); err == nil {
				seen[id] = true
			}
		}
		if keys[len(keys)-1] >= last {
			return errPast
		}
		return nil
	})
	if err != nil && err != errPast {
		return err
	}
	for _, id := range ids {
		if !seen[id] {
			s.gone.add(id)
		}
	}
	return nil
}

// minListGroup is how many entries of a group must be unknown to a Store
// for a due scan to list them rather than read each.
const minListGroup = 4

// dueEntry adds to out the envelope id of a group of the given bucket if it
// is due and free now, and reports whether the entry is stale (the
// envelope gone, or rescheduled since), and whether it is missing.
func (s *Store) dueEntry(ctx context.Context, id EvpID, bucket int64, now time.Time, out *[]*Envelope) (stale, missing bool, err error) {
	key := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})
	b, a, err := s.getBytes(ctx, key, s.maxRecord())
	if s.isNotFound(err) {
		s.gone.add(id)
		return true, true, nil
	}
	if err != nil {
		return false, false, err
	}
	h, data, err := decodeRecord(key, b)
	if err != nil {
		return false, false, nil // corrupt: Load and Quarantine deal with it
	}
	if h.Gone {
		s.gone.add(id)
		s.background(ctx, func(ctx context.Context) { s.finishDelete(ctx, id, h) })
		return true, true, nil
	}
	if h.ByMsg || h.Due == 0 || max(dueBucket(h.Due), 1) != bucket || h.Held {
		// Rescheduled since, with a pointer of its own: an envelope
		// is in one group, and never needs it again.
		s.gone.add(id)
		return true, false, nil
	}
	// The group lists only messages whose commit returned: committed,
	// whether or not the bit is stored yet.
	if held, err := s.held(ctx, h); err != nil {
		return false, false, err
	} else if held {
		return false, false, nil
	}
	if len(h.content) > 0 {
		s.inline.put(id.MsgID(), h.content, now)
	}
	if h.Due <= now.Unix() {
		e := &Envelope{ID: id, Data: data, Version: a.Version, hdr: *h, loaded: true}
		e.fill()
		*out = append(*out, e)
	}
	return false, false, nil
}
