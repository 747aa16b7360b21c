package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// Message IDs come in blocks. A node takes a block of layout.BlockSize IDs
// with one create-only write of its record (layout.Block) and hands them
// out from memory, so Begin makes no request. The record is also the
// commit point of every transaction of the block: a commit is a
// compare-and-swap that sets the message's bit in the record's committed
// bitmap, and commits that wait at the same time share one (group commit).
// A sweep aborts an abandoned transaction with a compare-and-swap that sets
// its aborted bit, so exactly one of the two wins, as with a reservation.
// Envelopes written before the commit carry the block's nonce (envHeader.
// Block), and are visible once their bit is set; bits never clear, so
// readers cache them.
//
// A block is used for at most Options.Grace, then the node takes another;
// every transaction of a block is therefore over (committed, or old enough
// to be aborted) once the block is twice Grace old. Sweep retires the
// record of such a block a grace period later, once none of its objects
// is left, and removes it a grace period after that, when no node trusts
// a copy it cached before (blockCache.committedRecent). A block is taken
// again only after that, and its allocation lists the objects under
// its prefixes first, so that IDs of messages stored otherwise (by Import,
// or left over) are marked foreign and never handed out.

// maxBitmap is the size of a block's bitmaps, in bytes.
const maxBitmap = layout.BlockSize / 8

// maxBlockRecord bounds the size of a block record that is read.
const maxBlockRecord = 16 << 10

// bitmap is a set of the low bits of a block's message IDs. JSON encodes
// it in base64; a short bitmap has its missing bytes zero.
type bitmap []byte

func (b bitmap) has(lo uint32) bool {
	i := int(lo / 8)
	return i < len(b) && b[i]&(1<<(lo%8)) != 0
}

func (b *bitmap) set(lo uint32) {
	for len(*b) <= int(lo/8) {
		*b = append(*b, 0)
	}
	(*b)[lo/8] |= 1 << (lo % 8)
}

// or adds the bits of o to b.
func (b *bitmap) or(o bitmap) {
	for len(*b) < len(o) {
		*b = append(*b, 0)
	}
	for i, v := range o {
		(*b)[i] |= v
	}
}

// blockRecord is the record at layout.Block.
type blockRecord struct {
	// Node took the block.
	Node string `json:"node"`
	// Nonce tells this use of the block from an earlier one; envelopes
	// written before their commit carry it.
	Nonce   uint64    `json:"nonce"`
	Created time.Time `json:"created"`
	// Committed and Aborted are the ended transactions.
	Committed bitmap `json:"committed,omitempty"`
	Aborted   bitmap `json:"aborted,omitempty"`
	// Foreign are the IDs that held objects when the block was taken:
	// messages stored by Import or left over. They are never handed out,
	// and their visibility is decided as for a reservation.
	Foreign bitmap `json:"foreign,omitempty"`
	// Retired is when a sweep found the block done with and empty and
	// marked it to be removed; it is removed a grace period later, so a
	// reader that cached it earlier trusts its cache no longer by then.
	Retired time.Time `json:"retired,omitzero"`

	fetched time.Time // when a cached record was read; not stored
}

func (r *blockRecord) encode() []byte {
	b, _ := json.Marshal(r)
	return b
}

func (r *blockRecord) clone() blockRecord {
	c := *r
	c.Committed = append(bitmap(nil), r.Committed...)
	c.Aborted = append(bitmap(nil), r.Aborted...)
	c.Foreign = append(bitmap(nil), r.Foreign...)
	return c
}

func decodeBlock(key string, b []byte) (*blockRecord, error) {
	var r blockRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: block record %s does not parse: %v", ErrCorrupt, key, err)
	}
	if r.Nonce == 0 || len(r.Committed) > maxBitmap || len(r.Aborted) > maxBitmap || len(r.Foreign) > maxBitmap {
		return nil, fmt.Errorf("%w: block record %s is not valid", ErrCorrupt, key)
	}
	return &r, nil
}

func blockKey(first uint32) string {
	return layout.Key(layout.Handle{Kind: layout.Block, Msg: first})
}

// lowBits returns m's position in its block.
func lowBits(m MsgID) uint32 { return uint32(m) & (layout.BlockSize - 1) }

// readBlock reads the record of the block that starts at first.
func (s *Store) readBlock(ctx context.Context, first uint32) (*blockRecord, Version, error) {
	key := blockKey(first)
	b, a, err := s.getBytes(ctx, key, maxBlockRecord)
	if err != nil {
		return nil, "", err
	}
	r, err := decodeBlock(key, b)
	return r, a.Version, err
}

// idBlock is a block that this Store hands IDs out of.
type idBlock struct {
	first   uint32
	nonce   uint64
	created time.Time
	foreign bitmap
	next    uint32 // the next low bits to hand out; Store.blkMu guards it
	dead    atomic.Bool

	mu    sync.Mutex // guards queue and busy
	queue []*bitReq
	busy  bool
	// rec and ver are the record as last written or read; only the
	// goroutine that settles (busy) uses them. ver "" means unknown: read
	// the record before the next write.
	rec blockRecord
	ver Version
	// lazy are the committed bits that settleLater holds back to send
	// together; armed says a sender waits for them; sending are those a
	// sendLazy took and has not queued yet, while it writes their due
	// groups; backoff is the wait before bits whose group failed are
	// tried again; arms counts the senders armed, so that one whose
	// bits a Flush sent first stands down. mu guards them.
	lazy    []*bitReq
	armed   bool
	arms    uint64
	sending []*bitReq
	backoff time.Duration
}

// bitReq asks to set a transaction's committed or aborted bit.
type bitReq struct {
	lo    uint32
	abort bool
	// group is the envelope whose due pointer a group written before
	// the bit carries (see writeGroups), for settleLater, or zero.
	group groupEntry
	err   error
	done  chan struct{}
}

// errAborted and errCommitted are settle's answers for a bit already set
// the other way.
var (
	errAborted   = errors.New("the transaction was aborted by a sweep before it committed")
	errCommitted = errors.New("the transaction was committed")
)

// maxSettleRounds bounds the compare-and-swap rounds of one settle that
// keep finding the record changed.
const maxSettleRounds = 10

// beginBlock starts a transaction with the next free ID of one of this
// Store's blocks, in turn (see Options.Blocks), taking a new block when
// there is none, it is used up or it is older than Options.Grace.
func (s *Store) beginBlock(ctx context.Context) (*Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, &Error{Op: "begin", Err: err}
	}
	// A Begin that waits for another's allocation of a block waits no
	// longer than its ctx allows.
	select {
	case s.blkMu <- struct{}{}:
	case <-ctx.Done():
		return nil, &Error{Op: "begin", Err: ctx.Err()}
	}
	defer func() { <-s.blkMu }()
	i := s.blkTurn
	s.blkTurn = (s.blkTurn + 1) % len(s.blks)
	for range 2 {
		now := s.now()
		if b := s.blks[i]; b != nil && !b.dead.Load() && now.Sub(b.created) < s.opts.Grace {
			for b.next < layout.BlockSize {
				lo := b.next
				b.next++
				if !b.foreign.has(lo) {
					return &Tx{s: s, id: MsgID(b.first | lo), blk: b, opened: now}, nil
				}
			}
		}
		b, err := s.takeBlock(ctx)
		if err != nil {
			return nil, err
		}
		s.blks[i] = b
	}
	return nil, errorf("begin", "", ErrExists, "a new block of message IDs has none free")
}

// ownBlock reports whether this Store hands out IDs of the block that
// starts at first; when ctx ends first, it answers true, which keeps the
// block's record.
func (s *Store) ownBlock(ctx context.Context, first uint32) bool {
	select {
	case s.blkMu <- struct{}{}:
	case <-ctx.Done():
		return true
	}
	defer func() { <-s.blkMu }()
	for _, b := range s.blks {
		if b != nil && b.first == first {
			return true
		}
	}
	return false
}

// takeBlock takes a free block of message IDs: it lists what is stored
// under the block's prefixes, and takes the block with a create-only
// write of its record naming those IDs foreign.
func (s *Store) takeBlock(ctx context.Context) (*idBlock, error) {
	for range maxIDAttempts {
		r, err := s.rand32()
		if err != nil {
			return nil, &Error{Op: "begin", Err: err}
		}
		first := layout.BlockOf(r)
		if first == 0 {
			continue
		}
		used, err := s.blockObjects(ctx, first, layout.Reservation, layout.Content, layout.Envelope, layout.Quarantine)
		if err != nil {
			return nil, s.wrap("begin", "", err, nil)
		}
		nonce, err := s.rand64()
		if err != nil {
			return nil, &Error{Op: "begin", Err: err}
		}
		rec := blockRecord{Node: s.opts.Node, Nonce: nonce, Created: s.now()}
		for lo := range used {
			rec.Foreign.set(lo)
		}
		v, err := s.putBytes(ctx, blockKey(first), rec.encode(), driver.PutOptions{IfNoneMatch: true})
		if s.isPrecondition(err) {
			continue // another node's block
		}
		if err != nil {
			return nil, s.wrap("begin", "", err, ErrExists)
		}
		// A message imported (or reserved by an earlier version) between
		// the listing and the write did not see the record: its
		// reservation, written before it looks, shows in a listing now,
		// and one written later finds the record.
		if v, err = s.markForeign(ctx, first, &rec, v); err != nil {
			return nil, s.wrap("begin", "", err, nil)
		}
		s.blocks.putAt(first, &rec, s.now())
		return &idBlock{first: first, nonce: nonce, created: rec.Created, foreign: rec.Foreign, rec: rec.clone(), ver: v}, nil
	}
	return nil, errorf("begin", "", ErrExists, "no free block of message IDs after %d attempts", maxIDAttempts)
}

// markForeign lists the reservations of the block that starts at first,
// which this Store just took with the record rec at version v, and marks
// foreign in the record those it does not name yet. It returns the
// record's version.
func (s *Store) markForeign(ctx context.Context, first uint32, rec *blockRecord, v Version) (Version, error) {
	used, err := s.blockObjects(ctx, first, layout.Reservation)
	if err != nil {
		return "", err
	}
	for range maxSettleRounds {
		add := false
		for lo := range used {
			add = add || !rec.Foreign.has(lo)
		}
		if !add {
			return v, nil
		}
		next := rec.clone()
		for lo := range used {
			next.Foreign.set(lo)
		}
		nv, err := s.putBytes(ctx, blockKey(first), next.encode(), driver.PutOptions{IfMatch: v})
		if err == nil {
			*rec = next
			return nv, nil
		}
		if !s.isPrecondition(err) {
			return "", err
		}
		// A sweep wrote it meanwhile: merge into what it wrote.
		r, rv, err := s.readBlock(ctx, first)
		if err != nil {
			return "", err
		}
		if r.Nonce != rec.Nonce {
			return "", fmt.Errorf("%w: the block record was replaced", ErrConflict)
		}
		*rec, v = *r, rv
	}
	return "", fmt.Errorf("%w: the block record kept changing", ErrConflict)
}

// blockObjects lists the objects of the given kinds under the prefixes of
// the block that starts at first, and returns them by the low bits of
// their message IDs.
func (s *Store) blockObjects(ctx context.Context, first uint32, kinds ...layout.Kind) (map[uint32][]string, error) {
	used := make(map[uint32][]string)
	var mu sync.Mutex
	err := s.parallel(ctx, len(kinds), func(ctx context.Context, i int) error {
		return s.list(ctx, layout.BlockPrefix(kinds[i], first), func(keys []string) error {
			mu.Lock()
			defer mu.Unlock()
			for _, k := range keys {
				h, err := parseHandle(k)
				if err != nil {
					continue
				}
				m := h.Msg
				if h.Evp != 0 {
					m = h.Evp.MsgID()
				}
				if layout.BlockOf(uint32(m)) == first {
					used[lowBits(m)] = append(used[lowBits(m)], k)
				}
			}
			return nil
		})
	})
	return used, err
}

// settle sets the committed bit of the transaction with the low bits lo
// of block b, or with abort its aborted bit. The first caller to find no
// write in flight writes the record for every caller waiting by then.
func (s *Store) settle(ctx context.Context, b *idBlock, lo uint32, abort bool) error {
	// Count a possible leader as background work before queueing, and
	// none once Close waits: Close must not return while a swap that it
	// did not wait for may still be written.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return &Error{Op: "settle", Kind: ErrClosed}
	}
	s.bg.Add(1)
	s.mu.Unlock()
	r := &bitReq{lo: lo, abort: abort, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, r)
	lead := !b.busy
	b.busy = true
	b.mu.Unlock()
	if lead {
		go func() {
			defer s.bg.Done()
			s.settleAll(context.WithoutCancel(ctx), b)
		}()
	} else {
		s.bg.Done()
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// settleLater sets the committed bit of lo in b's record in the
// background, within collectDelay, with one swap for every bit that comes
// meanwhile: the bits of messages committed by Tx.CommitContent, which
// are committed without them. Flush and Close send them at once. A
// message whose due pointer is left to its group (g.id set) gets it
// before its bit: one group for every such bit sent at once.
func (s *Store) settleLater(ctx context.Context, b *idBlock, lo uint32, g groupEntry) {
	b.mu.Lock()
	b.lazy = append(b.lazy, &bitReq{lo: lo, group: g, done: make(chan struct{})})
	b.mu.Unlock()
	s.armLazy(ctx, b, collectDelay)
}

// armLazy makes sure that a sender sends the bits that b holds back
// within delay, or at once when the Store closes.
func (s *Store) armLazy(ctx context.Context, b *idBlock, delay time.Duration) {
	b.mu.Lock()
	arm := !b.armed && len(b.lazy) > 0
	b.armed = b.armed || arm
	if arm {
		b.arms++
	}
	gen := b.arms
	b.mu.Unlock()
	if !arm {
		return
	}
	s.lazyMu.Lock()
	if s.lazy == nil {
		s.lazy = make(map[*idBlock]bool)
	}
	s.lazy[b] = true
	s.lazyMu.Unlock()
	wait := func(ctx context.Context) {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.gc.stop:
		}
		t.Stop()
		b.mu.Lock()
		// A Flush sent what this was armed for, and what it holds now
		// (a failed group's retry) has a timer of its own with a
		// backoff: that timer sends it, not this one.
		stale := b.arms != gen
		b.mu.Unlock()
		if !stale {
			s.sendLazy(ctx, b, true)
		}
	}
	if !s.background(ctx, wait) {
		s.sendLazy(context.WithoutCancel(ctx), b, false) // closing: send now
	}
}

// sendLazy hands the bits that settleLater holds for b to settle's
// queue, and writes them unless a writer is at work, which takes them on.
// It returns them. The due groups go first, so that no bit is stored for
// a message without a pointer; the bits whose group and pointers all
// failed wait and are tried again, with a growing backoff, if retry is
// set (the Store is not closing). Meanwhile the message is committed,
// and not due: a reader of another node that finds it, or Sweep, writes
// its pointer and sets its bit.
func (s *Store) sendLazy(ctx context.Context, b *idBlock, retry bool) []*bitReq {
	b.mu.Lock()
	reqs := b.lazy
	b.lazy, b.armed = nil, false
	b.sending = append(b.sending, reqs...)
	b.mu.Unlock()
	var entries []groupEntry
	for _, r := range reqs {
		if r.group.id != 0 {
			entries = append(entries, r.group)
		}
	}
	ready, failed := reqs, []*bitReq(nil)
	if len(entries) > 0 {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		stored := make(map[EvpID]bool, len(entries))
		for _, e := range s.writeGroups(wctx, entries) {
			stored[e.id] = true
		}
		cancel()
		ready = nil
		for _, r := range reqs {
			if r.group.id == 0 || stored[r.group.id] {
				ready = append(ready, r)
				continue
			}
			r.err = fmt.Errorf("%w: the due pointer of %v was not stored", ErrConflict, r.group.id)
			close(r.done)
			failed = append(failed, &bitReq{lo: r.lo, group: r.group, done: make(chan struct{})})
		}
	}
	b.mu.Lock()
	b.sending = slices.DeleteFunc(b.sending, func(r *bitReq) bool { return slices.Contains(reqs, r) })
	b.queue = append(b.queue, ready...)
	lead := !b.busy && len(b.queue) > 0
	b.busy = b.busy || lead
	var backoff time.Duration
	if len(failed) > 0 && retry {
		b.lazy = append(b.lazy, failed...)
		b.backoff = min(max(2*b.backoff, time.Second), 30*time.Second)
		backoff = b.backoff
	} else if len(entries) > 0 {
		b.backoff = 0
	}
	b.mu.Unlock()
	if backoff > 0 {
		s.armLazy(ctx, b, backoff)
	}
	s.lazyMu.Lock()
	b.mu.Lock()
	if len(b.lazy) == 0 && len(b.sending) == 0 && !b.armed {
		delete(s.lazy, b)
	}
	b.mu.Unlock()
	s.lazyMu.Unlock()
	if lead {
		s.settleAll(context.WithoutCancel(ctx), b)
	}
	return reqs
}

// flushBits sends the bits that settleLater holds, and waits for them.
// Those whose due group failed are tried again later, in the background.
func (s *Store) flushBits(ctx context.Context) error {
	s.lazyMu.Lock()
	var blks []*idBlock
	for b := range s.lazy {
		blks = append(blks, b)
	}
	s.lazyMu.Unlock()
	for _, b := range blks {
		// Those another sender is at, writing their groups, too.
		b.mu.Lock()
		reqs := slices.Clone(b.sending)
		b.mu.Unlock()
		reqs = append(reqs, s.sendLazy(ctx, b, true)...)
		for _, r := range reqs {
			select {
			case <-r.done:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// rollForward commits the message of the envelope id, which a reader
// found with header h written by Tx.CommitContent in one round
// (envHeader.Alone or envHeader.Siblings) with the message's bit neither
// committed nor aborted as far as it knows. The message is committed if
// its content and every sibling are stored too; then this writes the due
// or claim pointer that the commit wrote in parallel, in case the
// committer died before it landed, and sets the committed bit, as the
// committer does in the background, so that no sweep can abort it any
// more. It reports whether the message is committed.
func (s *Store) rollForward(ctx context.Context, id EvpID, h *envHeader) (bool, error) {
	m, nonce := id.MsgID(), h.Block
	first, lo := layout.BlockOf(uint32(m)), lowBits(m)
	whole, err := s.wholeOneRound(ctx, id, h)
	if err != nil {
		return false, err
	}
	if !whole {
		if len(h.Siblings) == 0 {
			return false, nil // not stored yet, or never will be
		}
		// A sibling is missing: not stored yet, or delivered and
		// deleted after the commit, which a reader with an old copy of
		// the record did not see. The record tells.
		r, _, err := s.fetchBlock(ctx, first)
		if err != nil {
			return false, err
		}
		return r != nil && r.Nonce == nonce && r.Committed.has(lo), nil
	}
	// A message without its pointer would be committed and never due:
	// the pointer goes first, as in the commit.
	for _, k := range commitPointers(id, h) {
		if _, err := s.putBytes(ctx, k, nil, driver.PutOptions{}); err != nil {
			return false, err
		}
	}
	if b := s.ownIDBlock(ctx, first, nonce); b != nil {
		// This Store's own block: the bit goes with the next swap.
		switch err := s.settle(ctx, b, lo, false); err {
		case nil:
			return true, nil
		case errAborted:
			return false, nil
		default:
			return false, err
		}
	}
	for range maxSettleRounds {
		r, v, err := s.fetchBlock(ctx, first)
		switch {
		case err != nil:
			return false, err
		case r == nil || r.Nonce != nonce || r.Foreign.has(lo) || r.Aborted.has(lo):
			return false, nil
		case r.Committed.has(lo):
			return true, nil
		}
		next := r.clone()
		next.Committed.set(lo)
		_, err = s.putBytes(ctx, blockKey(first), next.encode(), driver.PutOptions{IfMatch: v})
		if err == nil {
			s.blocks.putAt(first, &next, s.now())
			return true, nil
		}
		if !s.isPrecondition(err) && !s.isNotFound(err) {
			return false, err
		}
	}
	return false, fmt.Errorf("%w: the block record kept changing", ErrConflict)
}

// wholeOneRound reports whether everything a commit in one round wrote
// beside the envelope id with header h is stored: the content, unless
// the envelope keeps it, and the envelope's siblings, all looked up in
// parallel. A header whose siblings do not name the envelope itself is
// not whole.
func (s *Store) wholeOneRound(ctx context.Context, id EvpID, h *envHeader) (bool, error) {
	var keys []string
	if len(h.content) == 0 {
		keys = append(keys, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(id.MsgID())}))
	}
	if len(h.Siblings) > 0 {
		if !slices.Contains(h.Siblings, uint32(id)) {
			return false, nil
		}
		for _, lo := range h.Siblings {
			if sib := id.MsgID().Evp(lo); sib != id {
				keys = append(keys, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(sib)}))
			}
		}
	}
	if len(keys) == 0 {
		return true, nil
	}
	var missing atomic.Bool
	err := s.parallel(ctx, len(keys), func(ctx context.Context, i int) error {
		_, err := s.stat(ctx, keys[i])
		if s.isNotFound(err) {
			missing.Store(true)
			return nil
		}
		return err
	})
	if err != nil {
		return false, err
	}
	return !missing.Load(), nil
}

// ownIDBlock returns the block of this Store that starts at first with
// the given nonce, or nil.
func (s *Store) ownIDBlock(ctx context.Context, first uint32, nonce uint64) *idBlock {
	select {
	case s.blkMu <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	defer func() { <-s.blkMu }()
	for _, b := range s.blks {
		if b != nil && b.first == first && b.nonce == nonce && !b.dead.Load() {
			return b
		}
	}
	return nil
}

// settleAll writes the bits that callers of settle wait for, a batch per
// write, until none waits.
func (s *Store) settleAll(ctx context.Context, b *idBlock) {
	for {
		b.mu.Lock()
		batch := b.queue
		b.queue = nil
		if len(batch) == 0 {
			b.busy = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		batch = s.writeBits(wctx, b, batch)
		cancel()
		for _, r := range batch {
			close(r.done)
		}
	}
}

// writeBits sets the bits of batch in b's record with one compare-and-swap,
// reading the record again and retrying when it changed meanwhile, and
// answers each request. It returns the requests it answered: batch, and
// those it took on while it waited to retry.
func (s *Store) writeBits(ctx context.Context, b *idBlock, batch []*bitReq) []*bitReq {
	pending := batch
	retries, delay := 0, 50*time.Millisecond
	for range maxSettleRounds + max(s.opts.Retries, 0) {
		if b.ver == "" {
			rec, v, err := s.readBlock(ctx, b.first)
			if s.isNotFound(err) || err == nil && rec.Nonce != b.nonce {
				// Swept: the block outlived its use.
				b.dead.Store(true)
				for _, r := range pending {
					r.err = errAborted
					if r.abort {
						r.err = nil
					}
				}
				return batch
			}
			if err != nil {
				for _, r := range pending {
					r.err = err
				}
				return batch
			}
			b.rec, b.ver = *rec, v
		}
		rec := b.rec.clone()
		// A request is answered from the record as stored, never from a
		// bit set by this batch: a commit and an abort of one transaction
		// (a commit given up on, then rolled back) may wait together, and
		// the one after the other waits for the next write.
		var todo, later []*bitReq
		for _, r := range pending {
			switch {
			case b.rec.Aborted.has(r.lo):
				if !r.abort {
					r.err = errAborted
				}
			case b.rec.Committed.has(r.lo):
				if r.abort {
					r.err = errCommitted
				}
			case r.abort && rec.Committed.has(r.lo) || !r.abort && rec.Aborted.has(r.lo):
				later = append(later, r)
			case r.abort:
				rec.Aborted.set(r.lo)
				todo = append(todo, r)
			default:
				rec.Committed.set(r.lo)
				todo = append(todo, r)
			}
		}
		pending = append(todo, later...)
		if len(todo) == 0 {
			return batch
		}
		v, err := s.putBytes(ctx, blockKey(b.first), rec.encode(), driver.PutOptions{IfMatch: b.ver})
		if err == nil {
			b.rec, b.ver = rec, v
			s.blocks.putAt(b.first, &rec, s.now())
			if len(later) == 0 {
				return batch
			}
			pending = later
			continue
		}
		b.ver = ""
		if s.isPrecondition(err) || s.isNotFound(err) {
			continue // a sweep aborted some, or our own write landed unanswered
		}
		if s.b.ErrorCode(err) == driver.CodeUnavailable && retries < s.opts.Retries {
			// A store that limits the writes to one object (GCS about
			// one a second) answers so when commits come faster than
			// that: wait, and the next swap carries every commit that
			// arrived meanwhile. The record is read again first, in
			// case this one landed.
			retries++
			t := time.NewTimer(delay)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			delay = min(2*delay, time.Second)
			b.mu.Lock()
			pending = append(pending, b.queue...)
			batch = append(batch, b.queue...)
			b.queue = nil
			b.mu.Unlock()
			continue
		}
		for _, r := range pending {
			r.err = err
		}
		return batch
	}
	for _, r := range pending {
		r.err = fmt.Errorf("%w: the block record kept changing", ErrConflict)
	}
	return batch
}

// blockCache keeps the block records read, by first message ID. Bits
// only ever get set within one nonce, so a cached set bit stays true for
// envelopes that carry that nonce.
type blockCache struct {
	mu sync.Mutex
	m  map[uint32]*blockRecord
}

// maxCachedBlocks bounds the block cache.
const maxCachedBlocks = 4096

// putAt records r, read or written at now, merging it into a cached
// record of the same nonce.
func (c *blockCache) putAt(first uint32, r *blockRecord, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[first]; old != nil && old.Nonce == r.Nonce {
		old.Committed.or(r.Committed)
		old.Aborted.or(r.Aborted)
		if now.After(old.fetched) {
			old.fetched, old.Retired = now, r.Retired
		}
		return
	}
	if c.m == nil || len(c.m) >= maxCachedBlocks {
		c.m = make(map[uint32]*blockRecord)
	}
	cp := r.clone()
	cp.fetched = now
	c.m[first] = &cp
}

// committedRecent reports whether the bit of m is committed in a cached
// record of any nonce, read less than trust before now and not retired:
// a record is removed, and its block may be taken again with the same IDs,
// only a grace period after it was retired, so a record read before
// that is still the block's own while trust is below a grace period.
func (c *blockCache) committedRecent(m MsgID, now time.Time, trust time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.m[layout.BlockOf(uint32(m))]
	return r != nil && r.Retired.IsZero() && now.Sub(r.fetched) < trust && r.Committed.has(lowBits(m)) && !r.Foreign.has(lowBits(m))
}

// markCommitted sets the committed bit of lo in the cached record of the
// block use nonce that starts at first: a transaction of this Store
// committed with Tx.CommitContent, whose bit is not written yet.
func (c *blockCache) markCommitted(first uint32, nonce uint64, lo uint32, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.m[first]
	if r == nil || r.Nonce != nonce {
		if c.m == nil || len(c.m) >= maxCachedBlocks {
			c.m = make(map[uint32]*blockRecord)
		}
		r = &blockRecord{Nonce: nonce, fetched: now}
		c.m[first] = r
	}
	r.Committed.set(lo)
}

func (c *blockCache) drop(first uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, first)
}

// committed reports whether the bit of m is set in the committed bitmap
// of a cached record with the given nonce.
func (c *blockCache) committed(m MsgID, nonce uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.m[layout.BlockOf(uint32(m))]
	return r != nil && r.Nonce == nonce && r.Committed.has(lowBits(m)) && !r.Foreign.has(lowBits(m))
}

// blockVisible reports whether the transaction of m in the block use
// with the given nonce committed.
func (s *Store) blockVisible(ctx context.Context, m MsgID, nonce uint64) (bool, error) {
	if s.blocks.committed(m, nonce) {
		return true, nil
	}
	r, _, err := s.fetchBlock(ctx, layout.BlockOf(uint32(m)))
	if r == nil || err != nil {
		// Swept, or never written: its transaction did not commit.
		return false, err
	}
	return r.Nonce == nonce && r.Committed.has(lowBits(m)), nil
}

// fetchBlock reads the record of the block that starts at first and
// caches it; a missing record is nil, with no error, and leaves the block
// out of the cache.
func (s *Store) fetchBlock(ctx context.Context, first uint32) (*blockRecord, Version, error) {
	r, v, err := s.readBlock(ctx, first)
	if s.isNotFound(err) {
		s.blocks.drop(first)
		return nil, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	s.blocks.putAt(first, r, s.now())
	return r, v, nil
}

// msgState tells whether the message m is committed, open or aborted
// ("" for a message with neither a block transaction nor a reservation:
// committed by the reservation protocol, or gone), knowing only its ID.
func (s *Store) msgState(ctx context.Context, m MsgID) (string, error) {
	if s.blocks.committedRecent(m, s.now(), s.opts.Grace/2) {
		return stateCommitted, nil
	}
	first := layout.BlockOf(uint32(m))
	r, _, err := s.readBlock(ctx, first)
	switch {
	case s.isNotFound(err):
		s.blocks.drop(first)
	case err != nil:
		return "", err
	default:
		s.blocks.putAt(first, r, s.now())
		if lo := lowBits(m); !r.Foreign.has(lo) {
			switch {
			case r.Committed.has(lo):
				return stateCommitted, nil
			case r.Aborted.has(lo):
				return stateAborted, nil
			}
			// Open, or committed in one round and its bit not set
			// yet, or stored under an ID of the block by a node of an
			// earlier version: its envelopes' header tells.
			in, done, err := s.msgInBlock(ctx, m)
			switch {
			case err != nil:
				return stateOpen, err
			case done:
				return stateCommitted, nil
			case in:
				return stateOpen, nil
			}
		}
	}
	return s.reservationState(ctx, m)
}

// msgInBlock reports whether the message m, whose ID lies in a block, was
// written by a transaction of the block rather than under a reservation,
// by the header of its first envelope, and whether it committed in one
// round (see rollForward). A message without envelopes counts as a
// block's, not committed.
func (s *Store) msgInBlock(ctx context.Context, m MsgID) (in, committed bool, err error) {
	var first string
	err = s.retry(ctx, func() error {
		keys, _, err := s.b.List(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)}), "", 1)
		if len(keys) > 0 {
			first = keys[0]
		}
		return err
	})
	if err != nil || first == "" {
		return true, false, err
	}
	h, evp, ok, err := s.firstHeader(ctx, []string{first})
	switch {
	case err != nil || !ok:
		return true, false, err
	case h.Block == 0:
		return false, false, nil
	case h.oneRound():
		committed, err = s.rollForward(ctx, evp, h)
		return true, committed, err
	}
	return true, false, nil
}
