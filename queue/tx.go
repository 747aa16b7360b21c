package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// aloneWait is how long a due scan leaves a message committed in one
// round to its committer, before it stores the message's bit itself.
const aloneWait = 2 * time.Second

// maxIDAttempts bounds the retries of an ID allocation that collides.
const maxIDAttempts = 20

// maxSiblings is the most envelopes a message may have and commit in one
// round (envHeader.Siblings): each names all the others, so a message of
// n envelopes stores n*n IDs. One of more takes two rounds.
const maxSiblings = 64

// Tx is a message being received: the transaction that OpenSMTPD opens at
// MAIL FROM and commits after DATA. Its envelopes and content are
// invisible to every node until Commit returns nil. A Tx is safe for use by
// one goroutine at a time.
type Tx struct {
	s  *Store
	id MsgID
	// blk is the block the ID came from, whose record is the commit
	// point; nil for a transaction with a reservation of its own (Import).
	blk    *idBlock
	opened time.Time
	res    reservation
	rver   Version

	mu       sync.Mutex
	envs     []txEnvelope
	content  bool // content written
	claim    time.Duration
	done     bool
	anything bool // something besides the reservation may have been written
	settling bool // a commit was tried: the block's bit may be set
	// alone says the envelopes are written as those of a message
	// committed in one round (Tx.CommitContent): envHeader.Alone.
	// grouping says the commit writes no due pointer: its group does,
	// after the commit and before the bit (see writeGroups).
	alone    bool
	grouping bool
	// several says the envelopes are written as those of a message of
	// several committed in one round: envHeader.Siblings.
	several bool
	// ownContent says the content object may be this transaction's: its
	// create-only write was not refused. pointers are the pointers it
	// wrote or tried to. Rollback removes only these and its envelopes.
	ownContent bool
	pointers   []string
	// prepared says Prepare wrote, or is writing, the envelopes ahead of
	// the content. busy, while a write ahead runs (holding mu), is closed
	// when it ends: callers with a ctx wait for that, not for mu.
	prepared bool
	busy     atomic.Pointer[chan struct{}]
	// held are pointers that a write ahead held back for the commit; due
	// is the due time of every envelope of the message (dueTime).
	held []string
	due  int64
	// inline is the content, with its trailer, that the envelope of a
	// message of one envelope keeps (envHeader.Content).
	inline []byte

	// ids are the IDs of envs, under a lock of their own, which a write
	// ahead does not hold.
	idmu sync.Mutex
	ids  []EvpID
}

type txEnvelope struct {
	id      EvpID
	data    []byte
	written bool
	// again says the envelope is stored with a header that no longer
	// fits (written ahead as the message's only one): the next write
	// replaces it.
	again bool
}

// Begin starts a message with a MsgID that no other node uses. IDs come
// from a block of layout.BlockSize IDs that this Store took with one
// create-only write, so Begin makes no request but once per block. The
// transaction must end with Commit or Rollback; one that is abandoned is
// aborted by Sweep after Options.Grace, and one that stays open longer
// than Options.Grace fails.
func (s *Store) Begin(ctx context.Context) (*Tx, error) {
	if err := s.check("begin"); err != nil {
		return nil, err
	}
	return s.beginBlock(ctx)
}

// errTaken is reserveID's answer for an ID that a transaction or a stored
// message has.
var errTaken = errors.New("message ID taken")

// reserveID reserves the message ID id for a new transaction, or returns
// errTaken.
func (s *Store) reserveID(ctx context.Context, id MsgID) (*Tx, error) {
	nonce, err := s.rand64()
	if err != nil {
		return nil, &Error{Op: "begin", Err: err}
	}
	now := s.now()
	tx := &Tx{s: s, id: id, res: reservation{State: stateOpen, Created: now, Changed: now, Node: s.opts.Node, Nonce: nonce}}
	key := layout.Key(layout.Handle{Kind: layout.Reservation, Msg: uint32(id)})
	v, err := s.putBytes(ctx, key, tx.res.encode(), driver.PutOptions{IfNoneMatch: true})
	if s.isPrecondition(err) {
		return nil, errTaken // reserved by another transaction
	}
	if err != nil {
		return nil, s.wrap("begin", id.String(), err, ErrExists)
	}
	tx.rver = v
	// A committed message no longer has a reservation; its content
	// tells that the ID is taken. Deletes remove the content last,
	// so a message with envelopes left always still has it.
	_, err = s.stat(ctx, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(id)}))
	if err == nil || !s.isNotFound(err) {
		// Release the reservation even if ctx is done by now.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		s.del(cctx, key)
		cancel()
	}
	if err == nil {
		return nil, errTaken
	}
	if !s.isNotFound(err) {
		return nil, s.wrap("begin", id.String(), err, nil)
	}
	return tx, nil
}

// ID returns the message's ID.
func (tx *Tx) ID() MsgID { return tx.id }

// AddEnvelope adds an envelope with the given opaque data and returns its
// ID. It does no I/O itself: envelopes are written with the content, or at
// Commit. After Prepare it waits for the envelope written ahead, and the
// second envelope starts that one's rewrite in the background (see
// Prepare). data is copied.
func (tx *Tx) AddEnvelope(data []byte) (EvpID, error) {
	tx.mu.Lock()
	handed := false // to a rewrite in the background, which unlocks
	defer func() {
		if !handed {
			tx.mu.Unlock()
		}
	}()
	if tx.done {
		return 0, &Error{Op: "add envelope", ID: tx.id.String(), Kind: ErrClosed}
	}
	if len(data) > tx.s.opts.MaxEnvelopeSize {
		return 0, errorf("add envelope", tx.id.String(), ErrInvalid, "envelope of %d bytes exceeds the limit of %d", len(data), tx.s.opts.MaxEnvelopeSize)
	}
	if tx.several {
		// Its envelopes name each other: a reader that finds them all
		// and the content commits the message without this one.
		return 0, errorf("add envelope", tx.id.String(), ErrInvalid, "a commit of the message in one round was tried and may have landed: roll it back, or commit it as it is")
	}
	for range maxIDAttempts {
		lo, err := tx.s.rand32()
		if err != nil {
			return 0, &Error{Op: "add envelope", ID: tx.id.String(), Err: err}
		}
		if lo == 0 {
			continue
		}
		e := tx.id.Evp(lo)
		dup := false
		for _, x := range tx.envs {
			dup = dup || x.id == e
		}
		if dup {
			continue
		}
		tx.envs = append(tx.envs, txEnvelope{id: e, data: append([]byte(nil), data...)})
		tx.idmu.Lock()
		tx.ids = append(tx.ids, e)
		tx.idmu.Unlock()
		if tx.prepared && tx.alone {
			tx.unprepare()
			handed = true
		}
		return e, nil
	}
	return 0, errorf("add envelope", tx.id.String(), ErrExists, "no free envelope ID after %d attempts", maxIDAttempts)
}

// Prepare starts writing the envelope of a message that has one so far,
// in the background, so that CommitContent has only the content left to
// write when it comes, with the envelope's due or claim pointer, an empty
// object, beside it: for OpenSMTPD, the envelope goes to the store
// while the client sends DATA, and the commit waits for one object, not
// two. The envelope stays invisible until the content is stored. Prepare
// returns at once; the commit, AddEnvelope and Rollback wait for the
// write, and the commit writes again what it failed to write. ctx bounds
// the write and need not outlive the call.
//
// Prepare does nothing for a message with no envelope or several, one
// imported, or one whose content was written. If an envelope is added
// after it, the first is rewritten in the background as one of several
// before the content may land, and the commit writes it again with the
// others, in its one round. A rollback after Prepare deletes what it
// wrote: an RSET costs the store two requests where it would cost none.
// A transaction that is abandoned without a rollback leaves an envelope
// that Sweep removes after the grace period.
func (tx *Tx) Prepare(ctx context.Context) {
	tx.mu.Lock()
	if tx.done || tx.prepared || tx.blk == nil || tx.content || len(tx.envs) != 1 || tx.envs[0].written || tx.s.check("prepare") != nil {
		tx.mu.Unlock()
		return
	}
	tx.prepared, tx.alone, tx.anything = true, true, true
	tx.ahead(ctx, func(ctx context.Context) error { return tx.write(ctx, true) })
}

// unprepare rewrites the envelope that Prepare wrote as the message's only
// one, now that another was added, with the header of a message of
// several envelopes: otherwise a reader that finds it and the content
// would commit the message without the others. The content is written
// only after this write: the commit waits for it. The pointer of the old
// header was held back, never written, and is dropped. tx.mu is held, and
// handed to the write, which releases it.
func (tx *Tx) unprepare() {
	tx.alone, tx.held, tx.grouping = false, nil, false
	tx.envs[0].written, tx.envs[0].again = false, true
	tx.ahead(context.Background(), func(ctx context.Context) error { return tx.write(ctx, true) })
}

// ahead runs write in the background with tx.mu held: the caller holds it
// and hands it to the write, which releases it when done, so that every
// other use of tx waits for the write. What the write failed to store the
// commit writes again, replacing what may have landed unanswered.
func (tx *Tx) ahead(ctx context.Context, write func(context.Context) error) {
	budget := time.Minute
	if d, ok := ctx.Deadline(); ok {
		budget = time.Until(d) // ctx's deadline bounds the write; its end does not
	}
	done := make(chan struct{})
	tx.busy.Store(&done)
	started := tx.s.background(ctx, func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, budget)
		defer cancel()
		defer close(done)
		defer tx.mu.Unlock()
		if write(ctx) != nil {
			for i := range tx.envs {
				tx.envs[i].again = tx.envs[i].again || !tx.envs[i].written
			}
		}
	})
	if !started {
		close(done)
		tx.mu.Unlock() // closed: the commit fails on that
	}
}

// lock takes tx.mu once a write ahead is done, or fails when ctx ends
// first.
func (tx *Tx) lock(ctx context.Context) error {
	if done := tx.busy.Load(); done != nil {
		select {
		case <-*done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	tx.mu.Lock()
	return nil
}

// ClaimOnCommit makes the transaction commit its envelopes already claimed
// by this node for d (Options.LeaseDuration if d is 0), so that no other node can
// take them while this node heartbeats: OpenSMTPD's model, where the
// instance that accepts a message schedules it. Without it, committed
// envelopes are due at once for any node's Due.
func (tx *Tx) ClaimOnCommit(d time.Duration) {
	if d <= 0 {
		d = tx.s.opts.LeaseDuration
	}
	tx.mu.Lock()
	tx.claim = d
	tx.mu.Unlock()
}

// Envelopes returns the IDs of the envelopes added so far.
// It does not wait for a write ahead (Prepare).
func (tx *Tx) Envelopes() []EvpID {
	tx.idmu.Lock()
	defer tx.idmu.Unlock()
	return slices.Clone(tx.ids)
}

// WriteContent stores the message content read from r, streaming it in
// bounded memory, and returns its length. Envelopes added so far are
// written at the same time. It may be called once.
func (tx *Tx) WriteContent(ctx context.Context, r io.Reader) (int64, error) {
	if err := tx.s.check("write content"); err != nil {
		return 0, err
	}
	if err := tx.lock(ctx); err != nil {
		return 0, &Error{Op: "write content", ID: tx.id.String(), Err: err}
	}
	defer tx.mu.Unlock()
	if tx.done {
		return 0, &Error{Op: "write content", ID: tx.id.String(), Kind: ErrClosed}
	}
	if tx.content {
		return 0, errorf("write content", tx.id.String(), ErrInvalid, "content was written already")
	}
	tx.anything = true
	if !tx.alone && !tx.several && slices.ContainsFunc(tx.envs, func(e txEnvelope) bool { return e.again }) {
		// An envelope may still be stored with the header of a message
		// of one envelope: written ahead, its rewrite failed. It must be
		// replaced before the content lands, or a reader finding the two
		// would commit the message without the others: here, not beside
		// the content.
		if err := tx.flush(ctx); err != nil {
			return 0, tx.s.wrap("write content", tx.id.String(), err, ErrExists)
		}
	}
	var n int64
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var envErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		envErr = tx.flush(ctx)
		if envErr != nil {
			cancel()
		}
	}()
	sr := newSealer(r)
	key := layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(tx.id)})
	_, err := tx.s.b.Put(ctx, key, sr, &driver.PutOptions{IfNoneMatch: true, Size: -1})
	n = sr.n
	tx.ownContent = tx.ownContent || !tx.s.isPrecondition(err)
	if err == nil && (sr.err != nil || sr.trailer == nil || len(sr.trailer) != 0) {
		// The store kept what it got, but the stream broke off: that is
		// no content, whatever the backend made of it.
		tx.s.cleanup(ctx, key)
		if sr.err == nil {
			sr.err = io.ErrUnexpectedEOF
		}
		err = sr.err
	}
	if err != nil {
		cancel()
	}
	wg.Wait()
	if envErr != nil && (err == nil || errors.Is(err, context.Canceled)) {
		// The envelopes failed first and cancelled the upload.
		err = nil
	}
	if err != nil {
		if sr.err != nil {
			// The caller's reader failed; report that, not the store's
			// reaction to it.
			return n, &Error{Op: "write content", ID: tx.id.String(), Err: sr.err}
		}
		return n, tx.s.wrap("write content", tx.id.String(), err, ErrExists)
	}
	if envErr != nil {
		return n, tx.s.wrap("write content", tx.id.String(), envErr, ErrExists)
	}
	tx.content = true
	return n, nil
}

// writeInline writes the envelope of a message of one envelope with the
// content b at its end: one object where WriteContent writes two.
func (tx *Tx) writeInline(ctx context.Context, b []byte) (int64, error) {
	if err := tx.lock(ctx); err != nil {
		return 0, &Error{Op: "write content", ID: tx.id.String(), Err: err}
	}
	defer tx.mu.Unlock()
	if tx.done {
		return 0, &Error{Op: "write content", ID: tx.id.String(), Kind: ErrClosed}
	}
	tx.anything = true
	tx.inline = sealBytes(b)
	err := tx.flush(ctx)
	if err != nil {
		// Only this write carries it: a later one of the envelope,
		// after a failed commit, has content of its own.
		tx.inline = nil
		return 0, tx.s.wrap("write content", tx.id.String(), err, ErrExists)
	}
	tx.content = true
	tx.s.inline.put(tx.id, tx.inline, tx.s.now())
	return int64(len(b)), nil
}

// flush writes the envelopes not written yet, in parallel. tx.mu is held.
func (tx *Tx) flush(ctx context.Context) error { return tx.write(ctx, false) }

// write writes the envelopes not written yet, in parallel, with the
// pointers their header names and the pointers held back before. ahead,
// for Prepare, holds this call's pointers back for the commit instead:
// an envelope written ahead that gets a second beside it is rewritten
// with another header, and its old pointer, had it been written, would
// cost a write and a delete. tx.mu is held.
func (tx *Tx) write(ctx context.Context, ahead bool) error {
	var todo []int
	for i := range tx.envs {
		// A rewrite ahead (unprepare) writes only the envelope it
		// replaces: the commit, of several envelopes in one round,
		// writes every one with a header that names the others.
		if !tx.envs[i].written && (!ahead || tx.alone || tx.envs[i].again) {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 && (ahead || len(tx.held) == 0) {
		return nil
	}
	var h envHeader
	var pointers []string
	if len(todo) > 0 {
		var err error
		if h, err = tx.header(ctx, len(todo)); err != nil {
			return err
		}
		// The header says which pointer goes with the envelopes, as it
		// tells a reader that commits a one-round message for its
		// committer.
		pointers = commitPointers(tx.envs[todo[0]].id, &h)
	}
	var hold []string
	if ahead {
		hold, pointers = pointers, nil
	} else {
		pointers, tx.held = append(pointers, tx.held...), nil
		slices.Sort(pointers)
		pointers = slices.Compact(pointers)
		if tx.grouping {
			// The group's, after the commit; held for a commit of
			// this transaction that is not grouped, should this
			// one fail.
			tx.held, pointers = pointers, nil
		}
	}
	tx.pointers = append(tx.pointers, pointers...)
	s := tx.s
	err := s.parallel(ctx, len(todo)+len(pointers), func(ctx context.Context, j int) error {
		if j >= len(todo) {
			_, err := s.putBytes(ctx, pointers[j-len(todo)], nil, driver.PutOptions{})
			return err
		}
		e := &tx.envs[todo[j]]
		// An envelope written ahead with another header is replaced;
		// any other is new.
		_, err := s.putBytes(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(e.id)}), encodeRecord(&h, e.data), driver.PutOptions{IfNoneMatch: !e.again})
		if err != nil {
			return err
		}
		e.written, e.again = true, false
		return nil
	})
	if err == nil {
		// Pointers of envelopes that failed are the rewrite's to name.
		tx.held = append(tx.held, hold...)
	}
	return err
}

// header is the header of the n envelopes that a write of tx stores now.
// tx.mu is held.
func (tx *Tx) header(ctx context.Context, n int) (envHeader, error) {
	s := tx.s
	now := s.now()
	h := envHeader{Pending: tx.res.Nonce}
	if tx.blk != nil {
		if now.Sub(tx.opened) >= s.opts.Grace {
			// A sweep may abort it and, its block done with, remove
			// the record that would tell its writes apart.
			return h, errorf("write", tx.id.String(), ErrConflict, "the transaction has been open longer than the grace period of %v", s.opts.Grace)
		}
		h = envHeader{Block: tx.blk.nonce, Opened: tx.opened.Unix(), Alone: tx.alone}
		if tx.alone && len(tx.envs) == 1 {
			h.content = tx.inline
		}
		if tx.several {
			h.Siblings = make([]uint32, len(tx.envs))
			for i, e := range tx.envs {
				h.Siblings[i] = uint32(e.id)
			}
		}
	}
	switch {
	case tx.claim > 0:
		if err := s.ensureAlive(ctx); err != nil {
			return h, err
		}
		h.Holder, h.Session, h.Token, h.Expires = s.opts.Node, s.session.Load(), 1, now.Add(tx.claim).UnixNano()
		h.Claimer = s.opts.Node // the claim pointer names the message
	case s.opts.SelfScheduled:
	case n == 1 && len(tx.envs) == 1:
		// The message's one envelope gets a due pointer of its own,
		// which a due scan follows with no listing of the message.
		h.Due = tx.dueTime(now)
	default:
		// One pointer makes every envelope of the message due.
		h.Due, h.ByMsg = tx.dueTime(now), true
	}
	return h, nil
}

// dueTime is the time the envelopes of tx are due from: the time of its
// first write of envelopes, for every later one too, so that every
// envelope of the message names the same pointer. Envelopes written at
// different times (ahead by Prepare, then rewritten, then added at the
// commit) would otherwise name pointers of different minutes, and a
// pointer whose envelopes all failed to land would outlive the message.
// tx.mu is held.
func (tx *Tx) dueTime(now time.Time) int64 {
	if tx.due == 0 {
		tx.due = now.Unix()
	}
	return tx.due
}

// Commit makes the message durable and visible: after it returns nil, the
// content and every envelope can be read by every node. If it fails, none
// of them ever becomes visible, unless the error is ambiguous (a timeout
// on the final write); then Load tells. A message needs at least one
// envelope; one without content gets empty content.
func (tx *Tx) Commit(ctx context.Context) error {
	if err := tx.s.check("commit"); err != nil {
		return err
	}
	if err := tx.lock(ctx); err != nil {
		return &Error{Op: "commit", ID: tx.id.String(), Err: err}
	}
	defer tx.mu.Unlock()
	s := tx.s
	id := tx.id.String()
	if tx.done {
		return &Error{Op: "commit", ID: id, Kind: ErrClosed}
	}
	if len(tx.envs) == 0 {
		return errorf("commit", id, ErrInvalid, "a message needs at least one envelope")
	}
	tx.anything = true
	tx.grouping = false // two rounds: the pointer goes before the swap
	if !tx.content {
		tx.mu.Unlock()
		_, err := tx.WriteContent(ctx, eofReader{})
		tx.mu.Lock()
		if err != nil {
			return err
		}
	} else if err := tx.flush(ctx); err != nil {
		return s.wrap("commit", id, err, ErrExists)
	}
	if tx.blk != nil {
		tx.settling = true
		err := s.settle(ctx, tx.blk, lowBits(tx.id), false)
		if err == errAborted {
			tx.done = true
			return errorf("commit", id, ErrConflict, "%v", err)
		}
		if err != nil {
			return s.wrap("commit", id, err, ErrConflict)
		}
		tx.done = true
		return nil
	}
	res := tx.res
	res.State = stateCommitted
	res.Changed = s.now()
	key := layout.Key(layout.Handle{Kind: layout.Reservation, Msg: uint32(tx.id)})
	_, err := s.putBytes(ctx, key, res.encode(), driver.PutOptions{IfMatch: tx.rver})
	if err != nil {
		if s.isPrecondition(err) || s.isNotFound(err) {
			// Someone else changed the reservation: Sweep aborted it.
			tx.done = true
			// A lost answer of our own CAS shows as our transaction
			// committed; a reservation of another transaction under
			// the same ID (ours aborted and removed) does not.
			if r, _, rerr := s.readReservation(ctx, tx.id); rerr == nil && r.State == stateCommitted && r.Nonce == tx.res.Nonce {
				s.committed.add(tx.id, tx.res.Nonce)
				return nil
			}
			return errorf("commit", id, ErrConflict, "the transaction was aborted by a sweep before it committed")
		}
		return s.wrap("commit", id, err, ErrConflict)
	}
	tx.done = true
	s.committed.add(tx.id, tx.res.Nonce)
	// The committed reservation is no longer needed; a leftover one is
	// harmless and Sweep removes it.
	s.background(ctx, func(ctx context.Context) { s.del(ctx, key) })
	return nil
}

// CommitContent stores the message content read from r and commits the
// message, as WriteContent followed by Commit, once every envelope has been
// added. A message of one envelope commits in one round of writes: its
// content and its envelope in parallel (one object, for content up to
// Options.InlineContent), with its claim pointer if it is claimed, where
// WriteContent then Commit take two (those writes, then the swap of the
// block record). Its envelope says so in its header, and the message is
// committed once both the envelope and the content are stored: the bit of
// the block record that other messages wait for is set in the background
// within a moment, or by the first reader that finds the two. Its due
// pointer goes there too, before the bit, in one object for the commits
// of that moment (a due group), so other nodes' due scans find the
// message about 100 ms after the commit; Load and Walk see it at once.
//
// A message of up to 64 envelopes commits in one round too: the content,
// every envelope and the message's due or claim pointer in parallel, each
// envelope naming the others in its header, so that a reader commits the
// message only once it finds them all and the content. Other nodes' due
// scans find it once its bit is set, within a moment. A message of more
// envelopes, or one whose earlier commit failed, takes two rounds: those
// writes, then the swap of the block record. It returns the content's
// length.
//
// As for Commit, a failure means the message never becomes visible,
// unless the error is ambiguous (the answer to a write was lost); then
// Load tells, and Rollback either removes the message or reports that it
// committed. After a failed commit of several envelopes in one round,
// AddEnvelope fails: the message may have committed as it was.
func (tx *Tx) CommitContent(ctx context.Context, r io.Reader) (int64, error) {
	if err := tx.s.check("commit"); err != nil {
		return 0, err
	}
	if err := tx.lock(ctx); err != nil {
		return 0, &Error{Op: "commit", ID: tx.id.String(), Err: err}
	}
	id := tx.id.String()
	switch {
	case tx.done:
		tx.mu.Unlock()
		return 0, &Error{Op: "commit", ID: id, Kind: ErrClosed}
	case len(tx.envs) == 0:
		tx.mu.Unlock()
		return 0, errorf("commit", id, ErrInvalid, "a message needs at least one envelope")
	case tx.content:
		tx.mu.Unlock()
		return 0, errorf("commit", id, ErrInvalid, "content was written already: use Commit")
	}
	// One envelope, not written yet, or written ahead as the only one.
	alone := tx.blk != nil && len(tx.envs) == 1 && (!tx.envs[0].written || tx.alone)
	// Several envelopes, none tried in a commit yet nor left with the
	// header of a message of one (a rewrite after Prepare that failed),
	// and not too many to name in each header.
	several := tx.blk != nil && !alone && !tx.settling && len(tx.envs) > 1 && len(tx.envs) <= maxSiblings &&
		!slices.ContainsFunc(tx.envs, func(e txEnvelope) bool { return e.again })
	if alone || several {
		// Once all the writes land, a reader may commit the message:
		// from here on only the block record's bits tell a rollback
		// whether it did.
		tx.alone, tx.several, tx.settling = alone, several, true
	}
	if several {
		// Written ahead, with a header that names no siblings: written
		// again with the others, beside the content.
		for i := range tx.envs {
			if tx.envs[i].written {
				tx.envs[i].written, tx.envs[i].again = false, true
			}
		}
	}
	// The due pointer of a message of one envelope, if it has one,
	// waits for the commit's return and goes into a group with those of
	// other commits; any other commit writes it.
	tx.grouping = alone && tx.claim == 0 && !tx.s.opts.SelfScheduled
	inline := alone && !tx.prepared && tx.s.opts.InlineContent > 0
	tx.mu.Unlock()
	var n int64
	var err error
	if inline {
		var b []byte
		var fits bool
		if b, fits, err = readUpTo(r, tx.s.opts.InlineContent); err != nil {
			return int64(len(b)), &Error{Op: "write content", ID: id, Err: err}
		}
		if fits {
			n, err = tx.writeInline(ctx, b)
		} else {
			n, err = tx.WriteContent(ctx, io.MultiReader(bytes.NewReader(b), r))
		}
	} else {
		n, err = tx.WriteContent(ctx, r)
	}
	if err != nil {
		return n, err
	}
	if !alone && !several {
		return n, tx.Commit(ctx)
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	s := tx.s
	lo := lowBits(tx.id)
	if now := s.now(); now.Sub(tx.opened) < s.opts.Grace/2 {
		// Stored well within the grace period: no sweep aborts a
		// transaction before it is Grace old, and one that finds both
		// objects commits it, so this one is committed. Readers of this
		// Store know it at once; the record learns it in the background.
		tx.done = true
		s.blocks.markCommitted(tx.blk.first, tx.blk.nonce, lo, now)
		var g groupEntry
		if tx.grouping {
			g = groupEntry{id: tx.envs[0].id, due: tx.due}
		}
		s.settleLater(ctx, tx.blk, lo, g)
		return n, nil
	}
	// Late enough that a sweep may have aborted it: the swap decides, as
	// for Commit, after the due pointer, which no group carries.
	if tx.grouping {
		key := dueKey(tx.due, tx.envs[0].id)
		tx.pointers = append(tx.pointers, key)
		if _, err := s.putBytes(ctx, key, nil, driver.PutOptions{}); err != nil {
			return n, s.wrap("commit", id, err, nil)
		}
	}
	err = s.settle(ctx, tx.blk, lo, false)
	if err == errAborted {
		tx.done = true
		return n, errorf("commit", id, ErrConflict, "%v", err)
	}
	if err != nil {
		return n, s.wrap("commit", id, err, ErrConflict)
	}
	tx.done = true
	return n, nil
}

// Rollback abandons the message and removes what it wrote. Rolling back a
// committed or rolled-back transaction returns ErrClosed.
func (tx *Tx) Rollback(ctx context.Context) error {
	if err := tx.lock(ctx); err != nil {
		return &Error{Op: "rollback", ID: tx.id.String(), Err: err}
	}
	defer tx.mu.Unlock()
	s := tx.s
	id := tx.id.String()
	if tx.done {
		return &Error{Op: "rollback", ID: id, Kind: ErrClosed}
	}
	tx.done = true
	if tx.blk != nil {
		if !tx.anything {
			return nil
		}
		if tx.settling {
			// A commit was tried, and may have landed unanswered: the
			// aborted bit decides.
			if err := s.settle(ctx, tx.blk, lowBits(tx.id), true); err == errCommitted {
				return errorf("rollback", id, ErrConflict, "the message was committed; it cannot be rolled back")
			} else if err != nil {
				tx.done = false
				return s.wrap("rollback", id, err, nil)
			}
		}
		return s.wrap("rollback", id, tx.removeOwn(ctx), nil)
	}
	key := layout.Key(layout.Handle{Kind: layout.Reservation, Msg: uint32(tx.id)})
	if !tx.anything {
		return s.wrap("rollback", id, s.del(ctx, key), nil)
	}
	res := tx.res
	res.State = stateAborted
	res.Changed = s.now()
	if _, err := s.putBytes(ctx, key, res.encode(), driver.PutOptions{IfMatch: tx.rver}); err != nil {
		if !s.isPrecondition(err) && !s.isNotFound(err) {
			tx.done = false // nothing changed; the caller may try again
			return s.wrap("rollback", id, err, nil)
		}
		// The reservation changed under us: a sweep aborted it, or a
		// commit whose answer was lost did land. Never delete the latter.
		st, err := s.reservationState(ctx, tx.id)
		if err != nil {
			tx.done = false
			return s.wrap("rollback", id, err, nil)
		}
		if st != stateAborted {
			return errorf("rollback", id, ErrConflict, "the message was committed; it cannot be rolled back")
		}
	}
	// Aborted now, by us or by a sweep: remove the garbage. The aborted
	// reservation stays as a tombstone that keeps concurrent walks from
	// showing the envelopes; Sweep removes it after the grace period.
	return s.wrap("rollback", id, s.removeMessageData(ctx, tx.id), nil)
}

// removeOwn deletes what a transaction of a block wrote, and nothing
// else that may be stored under its ID: its envelopes, its pointers, and
// its content unless another's was there first. The envelopes go first;
// the content is what Sweep finds last.
func (tx *Tx) removeOwn(ctx context.Context) error {
	s := tx.s
	var keys []string
	for _, e := range tx.envs {
		if e.written || e.again { // again: a failed write may have landed
			keys = append(keys, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(e.id)}))
		}
	}
	keys = append(keys, tx.pointers...)
	if err := s.parallel(ctx, len(keys), func(ctx context.Context, i int) error { return s.del(ctx, keys[i]) }); err != nil {
		return err
	}
	if !tx.ownContent {
		return nil
	}
	return s.del(ctx, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(tx.id)}))
}

// removeMessageData deletes a message's envelopes and the due pointers
// they name, then, only if all of them went, its content: the content is
// what makes a message ID taken, so it must not go first.
func (s *Store) removeMessageData(ctx context.Context, m MsgID) error {
	s.inline.remove(m)
	keys, err := s.envelopeKeys(ctx, m)
	if err != nil {
		return err
	}
	ofMsg := make(map[string]bool)
	var mu sync.Mutex
	err = s.parallel(ctx, len(keys), func(ctx context.Context, i int) error {
		id, perr := parseEnvelopeKey(keys[i])
		if b, _, err := s.getBytes(ctx, keys[i], s.maxRecord()); err == nil && perr == nil {
			if h, _, err := decodeRecord(keys[i], b); err == nil {
				own, msg := pointers(id, h)
				for _, k := range own {
					s.del(ctx, k)
				}
				mu.Lock()
				for _, k := range msg {
					ofMsg[k] = true
				}
				mu.Unlock()
			}
		}
		return s.del(ctx, keys[i])
	})
	if err != nil {
		return err
	}
	for k := range ofMsg {
		if err := s.del(ctx, k); err != nil {
			return err
		}
	}
	return s.del(ctx, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)}))
}

// reservationState returns the state of m's reservation, or "" if it has
// none.
func (s *Store) reservationState(ctx context.Context, m MsgID) (string, error) {
	r, _, err := s.readReservation(ctx, m)
	if s.isNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return r.State, nil
}

// visibleEnvelope reports whether an envelope of message m with header h
// may be shown: the transaction that wrote it committed.
//
// A message committed in one round (envHeader.Alone) whose bit is not
// stored yet is committed if its content is stored, and the reader
// stores the bit (rollForward). A due scan, which may come back later,
// does not for aloneWait after the message's transaction began: its
// committer sets the bit within a moment, and a busy site's scans would
// otherwise race it for the block record.
func (s *Store) visibleEnvelope(ctx context.Context, id EvpID, h *envHeader, due bool) (bool, error) {
	m := id.MsgID()
	if h.Block != 0 {
		ok, err := s.blockVisible(ctx, m, h.Block)
		if ok || err != nil || !h.oneRound() {
			return ok, err
		}
		if due && s.now().Sub(time.Unix(h.Opened, 0)) < aloneWait {
			return false, nil
		}
		return s.rollForward(ctx, id, h)
	}
	return s.visible(ctx, m, h.Pending)
}

// visible reports whether an envelope of message m written by the
// reservation transaction with the given nonce (0: written after the
// commit) may be shown: the transaction committed. Committed transactions
// are cached.
func (s *Store) visible(ctx context.Context, m MsgID, nonce uint64) (bool, error) {
	if nonce == 0 || s.committed.has(m, nonce) {
		return true, nil
	}
	r, _, err := s.readReservation(ctx, m)
	if s.isNotFound(err) {
		// The reservation of a committed message is deleted after the
		// commit; an aborted one stays until its data is gone.
		s.committed.add(m, nonce)
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if r.Nonce != nonce {
		// A later transaction reuses the ID: ours ended long ago, and it
		// committed, since aborted data is removed before the tombstone.
		return true, nil
	}
	if r.State == stateCommitted {
		s.committed.add(m, nonce)
		return true, nil
	}
	return false, nil
}

func (s *Store) readReservation(ctx context.Context, m MsgID) (*reservation, Version, error) {
	key := layout.Key(layout.Handle{Kind: layout.Reservation, Msg: uint32(m)})
	b, a, err := s.getBytes(ctx, key, 4096)
	if err != nil {
		return nil, "", err
	}
	r, err := decodeReservation(key, b)
	return r, a.Version, err
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func notFound(op string, id fmt.Stringer) error {
	return &Error{Op: op, ID: id.String(), Kind: ErrNotFound}
}

// envelopeKeys lists the keys of every envelope of m, committed or not.
func (s *Store) envelopeKeys(ctx context.Context, m MsgID) ([]string, error) {
	var keys []string
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)}), func(page []string) error {
		keys = append(keys, page...)
		return nil
	})
	return keys, err
}
