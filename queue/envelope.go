package queue

import (
	"context"
	"io"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// Envelope is one recipient of a message: opaque data that the MTA
// defines, plus the version and lease the queue keeps for it.
type Envelope struct {
	// ID of the envelope.
	ID EvpID
	// Data is the MTA's opaque envelope, byte for byte as stored.
	Data []byte
	// Version is the stored version that Data was read at; Update
	// compares it.
	Version Version
	// Lease is the claim on the envelope, if any. See Claim.
	Lease Lease
	// Due is when the envelope is due for work; the zero time means now.
	Due time.Time

	hdr    envHeader
	loaded bool // hdr was read from the store
	found  bool // returned by Due: its due pointer leads any node to it
}

// maxRecord bounds an envelope record as read: the data, the header, and
// the largest content that any node may keep in it, whatever this
// Store's own Options.InlineContent.
func (s *Store) maxRecord() int64 {
	return int64(s.opts.MaxEnvelopeSize) + MaxInlineContent + trailerSize + 4096
}

// Load returns the committed envelope id. An envelope whose message is not
// committed is ErrNotFound, as is a missing one.
func (s *Store) Load(ctx context.Context, id EvpID) (*Envelope, error) {
	if err := s.check("load"); err != nil {
		return nil, err
	}
	if err := id.Valid(); err != nil {
		return nil, &Error{Op: "load", ID: id.String(), Kind: ErrInvalid, Err: err}
	}
	e, err := s.load(ctx, id)
	return e, s.wrap("load", id.String(), err, nil)
}

func (s *Store) load(ctx context.Context, id EvpID) (*Envelope, error) {
	return s.loadFor(ctx, id, false)
}

// loadFor is load; for a due scan, it leaves a message committed in one
// round by another node alone for aloneWait, while its committer sets
// its bit, rather than set it (see Store.visibleEnvelope).
func (s *Store) loadFor(ctx context.Context, id EvpID, due bool) (*Envelope, error) {
	key := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})
	b, a, err := s.getBytes(ctx, key, s.maxRecord())
	if err != nil {
		return nil, err
	}
	h, data, err := decodeRecord(key, b)
	if err != nil {
		return nil, err
	}
	if h.Gone {
		// A holder deleted it and did not get to remove the tombstone,
		// most likely because it died: finish the delete for it.
		s.background(ctx, func(ctx context.Context) { s.finishDelete(ctx, id, h) })
		return nil, notFound("load", id)
	}
	ok, err := s.visibleEnvelope(ctx, id, h, due)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound("load", id)
	}
	if len(h.content) > 0 {
		s.inline.put(id.MsgID(), h.content, s.now())
	}
	e := &Envelope{ID: id, Data: data, Version: a.Version, hdr: *h, loaded: true}
	e.fill()
	return e, nil
}

// fill sets the exported lease fields from the header.
func (e *Envelope) fill() {
	e.Lease = Lease{}
	if e.hdr.Holder != "" {
		e.Lease = Lease{ID: e.ID, Holder: e.hdr.Holder, Token: e.hdr.Token, Expires: time.Unix(0, e.hdr.Expires)}
	}
	e.Due = time.Time{}
	if e.hdr.Due != 0 {
		e.Due = time.Unix(e.hdr.Due, 0)
	}
}

// Update replaces the data of e with e.Data if the stored envelope is still
// at e.Version: a compare-and-swap. A stale version is ErrConflict; of
// concurrent updaters of one envelope exactly one wins. If another node
// holds an unexpired lease on the envelope, Update fails with ErrConflict
// without writing; lease holders update through Claim.Update. On success
// e.Version is the new version.
func (s *Store) Update(ctx context.Context, e *Envelope) error {
	if err := s.check("update"); err != nil {
		return err
	}
	if err := e.ID.Valid(); err != nil {
		return &Error{Op: "update", ID: e.ID.String(), Kind: ErrInvalid, Err: err}
	}
	if len(e.Data) > s.opts.MaxEnvelopeSize {
		return errorf("update", e.ID.String(), ErrInvalid, "envelope of %d bytes exceeds the limit of %d", len(e.Data), s.opts.MaxEnvelopeSize)
	}
	if e.Version == "" || !e.loaded {
		return errorf("update", e.ID.String(), ErrInvalid, "no version: load the envelope first")
	}
	// The header as loaded goes back with the new data; the swap fails if
	// it changed since. An unexpired lease of anyone else, another process
	// of this node included, forbids the update.
	if e.hdr.Holder != "" && !s.mine(&e.hdr) && time.Unix(0, e.hdr.Expires).After(s.now()) {
		return errorf("update", e.ID.String(), ErrConflict, "node %s holds a lease until %s", e.hdr.Holder, time.Unix(0, e.hdr.Expires).UTC().Format(time.RFC3339))
	}
	h := e.hdr
	h.settled()
	v, err := s.putBytes(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(e.ID)}), encodeRecord(&h, e.Data), driver.PutOptions{IfMatch: e.Version})
	if err != nil {
		if s.isPrecondition(err) {
			// Some stores answer a swap on a missing key with a failed
			// precondition too.
			if _, serr := s.stat(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(e.ID)})); s.isNotFound(serr) {
				err = serr
			}
		}
		if s.isNotFound(err) {
			return notFound("update", e.ID)
		}
		return s.wrap("update", e.ID.String(), err, ErrConflict)
	}
	e.hdr = h
	e.Version = v
	return nil
}

// AddEnvelope adds an envelope to the committed message m and makes it
// visible at once. OpenSMTPD does this for bounces. If m does not exist,
// or is deleted while the envelope is added, the result is ErrNotFound and
// nothing stays behind.
func (s *Store) AddEnvelope(ctx context.Context, m MsgID, data []byte) (EvpID, error) {
	if err := s.check("add envelope"); err != nil {
		return 0, err
	}
	if err := m.Valid(); err != nil {
		return 0, &Error{Op: "add envelope", ID: m.String(), Kind: ErrInvalid, Err: err}
	}
	if len(data) > s.opts.MaxEnvelopeSize {
		return 0, errorf("add envelope", m.String(), ErrInvalid, "envelope of %d bytes exceeds the limit of %d", len(data), s.opts.MaxEnvelopeSize)
	}
	if err := s.requireMessage(ctx, m); err != nil {
		return 0, s.wrap("add envelope", m.String(), err, nil)
	}
	// The new envelope inherits the name of the node whose claim pointer
	// names the message, so that whoever deletes the last envelope
	// removes that pointer too.
	claimer := ""
	if keys, _, err := s.b.List(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)}), "", 1); err == nil && len(keys) > 0 {
		if b, _, err := s.getBytes(ctx, keys[0], s.maxRecord()); err == nil {
			if h, _, err := decodeRecord(keys[0], b); err == nil {
				claimer = h.Claimer
			}
		}
	}
	for range maxIDAttempts {
		lo, err := s.rand32()
		if err != nil {
			return 0, &Error{Op: "add envelope", ID: m.String(), Err: err}
		}
		if lo == 0 {
			continue
		}
		id := m.Evp(lo)
		key := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})
		h := envHeader{Claimer: claimer}
		if !s.opts.SelfScheduled {
			// Due at once, like a committed envelope; the pointer first,
			// so that the envelope is never without one.
			h.Due = s.now().Unix()
			if _, err := s.putBytes(ctx, dueKey(h.Due, id), nil, driver.PutOptions{}); err != nil {
				return 0, s.wrap("add envelope", id.String(), err, nil)
			}
		}
		_, err = s.putBytes(ctx, key, encodeRecord(&h, data), driver.PutOptions{IfNoneMatch: true})
		if s.isPrecondition(err) {
			continue
		}
		if err != nil {
			return 0, s.wrap("add envelope", id.String(), err, ErrExists)
		}
		// The message may have lost its last envelope meanwhile.
		if err := s.requireMessage(ctx, m); err != nil {
			s.del(ctx, key)
			return 0, s.wrap("add envelope", m.String(), err, nil)
		}
		return id, nil
	}
	return 0, errorf("add envelope", m.String(), ErrExists, "no free envelope ID after %d attempts", maxIDAttempts)
}

// requireMessage returns nil if m is a committed message with a content
// object. A message that keeps its content in its one envelope gets the
// object first, before an envelope is added: its content must outlive
// that envelope.
func (s *Store) requireMessage(ctx context.Context, m MsgID) error {
	key := layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)})
	if _, err := s.stat(ctx, key); !s.isNotFound(err) {
		if err != nil {
			return err
		}
	} else if b, ierr := s.storedInline(ctx, m); ierr != nil {
		if s.isNotFound(ierr) {
			return err
		}
		return ierr
	} else if _, err := s.putBytes(ctx, key, b, driver.PutOptions{IfNoneMatch: true}); err != nil && !s.isPrecondition(err) {
		return err
	}
	st, err := s.msgState(ctx, m)
	if err != nil {
		return err
	}
	if st == stateOpen || st == stateAborted {
		return notFound("add envelope", m)
	}
	return nil
}

// DeleteEnvelope removes the envelope id. When it was the last envelope of
// its message, the message's content is removed too, a moment later, in a
// batch with others (see Flush), as are the pointers that named the
// envelope. Deleting a missing envelope is not an error. It is not fenced;
// lease holders delete through Claim.Delete.
func (s *Store) DeleteEnvelope(ctx context.Context, id EvpID) error {
	if err := s.check("delete envelope"); err != nil {
		return err
	}
	if err := id.Valid(); err != nil {
		return &Error{Op: "delete envelope", ID: id.String(), Kind: ErrInvalid, Err: err}
	}
	// The header tells which due pointer goes with the envelope.
	key := layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})
	var h *envHeader
	if b, _, err := s.getBytes(ctx, key, s.maxRecord()); err == nil {
		h, _, _ = decodeRecord(key, b)
	} else if !s.isNotFound(err) {
		return s.wrap("delete envelope", id.String(), err, nil)
	}
	return s.wrap("delete envelope", id.String(), s.finishDelete(ctx, id, h), nil)
}

// finishDelete removes the envelope id, whose header was h (nil if
// unknown), and hands the rest of its delete to the collector (see
// collectDeleted). Any node may finish a delete that a holder began with a
// tombstone.
func (s *Store) finishDelete(ctx context.Context, id EvpID, h *envHeader) error {
	if err := s.del(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})); err != nil {
		return err
	}
	s.collectDeleted(ctx, id, h, false)
	return nil
}

// collectDeleted hands the collector what goes after the envelope id,
// whose header was h, is gone: the pointers that name it, and the
// message's content and pointers when it was the last envelope. With
// tombstone set, the envelope's tombstone goes too, in the batch's first
// delete, before the batch checks whether its message has an envelope
// left.
func (s *Store) collectDeleted(ctx context.Context, id EvpID, h *envHeader, tombstone bool) {
	s.inline.remove(id.MsgID())
	s.gone.add(id)
	own, ofMsg := pointers(id, h)
	if tombstone {
		own = append(own, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)}))
	}
	s.collect(ctx, own, id.MsgID(), ofMsg)
}

// pointers returns the keys of the pointers that name the envelope id,
// whose header is h (nil if unknown): those that go with it, and those
// that name its whole message and go with the message's last envelope.
func pointers(id EvpID, h *envHeader) (own, ofMsg []string) {
	if h == nil {
		return nil, nil
	}
	m := id.MsgID()
	switch {
	case h.ByMsg:
		ofMsg = append(ofMsg, layout.Key(layout.Handle{Kind: layout.Due, Due: max(dueBucket(h.Due), 1), Msg: uint32(m)}))
	case h.Due != 0:
		own = append(own, dueKey(h.Due, id))
	}
	if h.Holder != "" && ValidNodeName(h.Holder) == nil {
		own = append(own, layout.Key(layout.Handle{Kind: layout.Claim, Node: h.Holder, Evp: uint64(id)}))
	}
	if h.Claimer != "" && ValidNodeName(h.Claimer) == nil {
		ofMsg = append(ofMsg, layout.Key(layout.Handle{Kind: layout.Claim, Node: h.Claimer, Msg: uint32(m)}))
	}
	return own, ofMsg
}

// commitPointers returns the pointer that a commit wrote for the envelope
// id with header h: the claim pointer of its message for Tx.ClaimOnCommit,
// else the due pointer of its message or its own, if any.
func commitPointers(id EvpID, h *envHeader) []string {
	m := id.MsgID()
	switch {
	case h.Claimer != "" && ValidNodeName(h.Claimer) == nil:
		return []string{layout.Key(layout.Handle{Kind: layout.Claim, Node: h.Claimer, Msg: uint32(m)})}
	case h.ByMsg:
		return []string{layout.Key(layout.Handle{Kind: layout.Due, Due: max(dueBucket(h.Due), 1), Msg: uint32(m)})}
	case h.Due != 0:
		return []string{dueKey(h.Due, id)}
	}
	return nil
}

// Envelopes returns the IDs of the committed envelopes of message m, in
// order. A message that is not committed has none.
func (s *Store) Envelopes(ctx context.Context, m MsgID) ([]EvpID, error) {
	if err := s.check("envelopes"); err != nil {
		return nil, err
	}
	if err := m.Valid(); err != nil {
		return nil, &Error{Op: "envelopes", ID: m.String(), Kind: ErrInvalid, Err: err}
	}
	var ids []EvpID
	err := s.list(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)}), func(keys []string) error {
		for _, k := range keys {
			id, err := parseEnvelopeKey(k)
			if err != nil {
				return err
			}
			if s.gc.isPending(k) {
				continue // a tombstone waiting for its batch
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("envelopes", m.String(), err, nil)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	st, err := s.msgState(ctx, m)
	if err != nil {
		return nil, s.wrap("envelopes", m.String(), err, nil)
	}
	if st == stateOpen || st == stateAborted {
		return nil, nil
	}
	return ids, nil
}

// OpenContent opens the content of the committed message m for reading.
// The reader verifies the checksum as it goes: if the stored content does
// not match, its last Read returns an error wrapping ErrCorrupt instead of
// io.EOF, and the message can be quarantined. The caller closes it.
func (s *Store) OpenContent(ctx context.Context, m MsgID) (io.ReadCloser, error) {
	if err := s.check("open content"); err != nil {
		return nil, err
	}
	if err := m.Valid(); err != nil {
		return nil, &Error{Op: "open content", ID: m.String(), Kind: ErrInvalid, Err: err}
	}
	st, err := s.msgState(ctx, m)
	if err != nil {
		return nil, s.wrap("open content", m.String(), err, nil)
	}
	if st == stateOpen || st == stateAborted {
		return nil, notFound("open content", m)
	}
	rc, err := s.openContent(ctx, m)
	if err != nil {
		return nil, s.wrap("open content", m.String(), err, nil)
	}
	return newVerifier(rc, m.String()), nil
}

// DeleteMessage removes the message m with its content and every envelope.
// Deleting a missing message is not an error.
func (s *Store) DeleteMessage(ctx context.Context, m MsgID) error {
	if err := s.check("delete message"); err != nil {
		return err
	}
	if err := m.Valid(); err != nil {
		return &Error{Op: "delete message", ID: m.String(), Kind: ErrInvalid, Err: err}
	}
	s.committed.remove(m)
	return s.wrap("delete message", m.String(), s.removeMessageData(ctx, m), nil)
}

// Version identifies one stored version of an object, such as an
// envelope's: an ETag, a GCS generation, a counter. It is opaque; compare
// it only for equality. The empty Version means "no version".
type Version = driver.Version
