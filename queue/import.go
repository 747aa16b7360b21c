package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// ImportEnvelope is one envelope of a message given to Store.Import.
type ImportEnvelope struct {
	// ID is the envelope's ID; its upper half must be the message's.
	ID EvpID
	// Data is the MTA's opaque envelope.
	Data []byte
	// Due is when the envelope is due; the zero time, or a time past,
	// means now.
	Due time.Time
}

// Import commits the message m, with the envelopes envs and the content
// read from r, under the IDs it has in another queue: the way a migration
// keeps message and envelope IDs, so that logs and MTAs still find them
// and a rerun finds what it copied already. It is one transaction, with
// the same commit point as Begin and Commit: either all of it becomes
// visible or none of it, and the content is stored with its checksum as
// read from r. Envelopes keep their due times; none is claimed.
//
// If m is taken in this Store (a committed message, or another node's
// open transaction), the result is ErrExists and nothing is written. An
// open transaction of m by this node, left by an earlier Import that was
// interrupted, is aborted and replaced: one importer per node name at a
// time. It returns the length of the content.
//
// The cost is that of a commit (a create-only reservation, the content,
// one write per envelope, the commit swap), plus one due pointer per
// envelope due later than now.
func (s *Store) Import(ctx context.Context, m MsgID, envs []ImportEnvelope, r io.Reader) (int64, error) {
	if err := s.check("import"); err != nil {
		return 0, err
	}
	if err := m.Valid(); err != nil {
		return 0, &Error{Op: "import", ID: m.String(), Kind: ErrInvalid, Err: err}
	}
	if len(envs) == 0 {
		return 0, errorf("import", m.String(), ErrInvalid, "a message needs at least one envelope")
	}
	seen := make(map[EvpID]bool, len(envs))
	for _, e := range envs {
		if err := e.ID.Valid(); err != nil || e.ID.MsgID() != m || seen[e.ID] {
			return 0, errorf("import", m.String(), ErrInvalid, "envelope ID %s is not a distinct envelope of the message", e.ID)
		}
		seen[e.ID] = true
		if len(e.Data) > s.opts.MaxEnvelopeSize {
			return 0, errorf("import", e.ID.String(), ErrInvalid, "envelope of %d bytes exceeds the limit of %d", len(e.Data), s.opts.MaxEnvelopeSize)
		}
	}
	tx, err := s.reserveID(ctx, m)
	if err == errTaken {
		if ok, aerr := s.abortOwn(ctx, m); aerr != nil {
			return 0, s.wrap("import", m.String(), aerr, nil)
		} else if ok {
			tx, err = s.reserveID(ctx, m)
		}
	}
	if err == errTaken {
		return 0, errorf("import", m.String(), ErrExists, "the message ID is taken in this queue")
	}
	if err != nil {
		return 0, err
	}
	// An ID in a block that a node took is that node's to hand out,
	// unless the block found it stored when it was taken.
	if b, _, berr := s.readBlock(ctx, layout.BlockOf(uint32(m))); berr == nil && !b.Foreign.has(lowBits(m)) || berr != nil && !s.isNotFound(berr) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		tx.Rollback(cctx)
		cancel()
		if berr != nil {
			return 0, s.wrap("import", m.String(), berr, nil)
		}
		return 0, errorf("import", m.String(), ErrExists, "the message ID is in a block of IDs that node %s hands out", b.Node)
	}
	n, err := tx.importData(ctx, envs, r)
	if err == nil {
		err = tx.Commit(ctx)
	}
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rerr := tx.Rollback(cctx); rerr != nil && !errors.Is(rerr, ErrClosed) {
			return n, fmt.Errorf("%w (and the rollback failed: %v)", err, rerr)
		}
		return n, err
	}
	return n, nil
}

// importData writes the envelopes of an Import, each with its due time,
// beside the content, and marks them written so that the transaction
// does not write them again.
func (tx *Tx) importData(ctx context.Context, envs []ImportEnvelope, r io.Reader) (int64, error) {
	s := tx.s
	now := s.now()
	var keys []string
	var records [][]byte
	byMsg := false
	for _, e := range envs {
		h := envHeader{Pending: tx.res.Nonce}
		switch {
		case s.opts.SelfScheduled:
		case e.Due.After(now):
			h.Due = e.Due.Unix()
			keys = append(keys, dueKey(h.Due, e.ID))
			records = append(records, nil)
		default:
			h.Due, h.ByMsg = now.Unix(), true
			byMsg = true
		}
		keys = append(keys, layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(e.ID)}))
		records = append(records, encodeRecord(&h, e.Data))
	}
	if byMsg {
		keys = append(keys, layout.Key(layout.Handle{Kind: layout.Due, Due: max(dueBucket(now.Unix()), 1), Msg: uint32(tx.id)}))
		records = append(records, nil)
	}
	tx.mu.Lock()
	tx.anything = true
	tx.idmu.Lock()
	for _, e := range envs {
		tx.envs = append(tx.envs, txEnvelope{id: e.ID, written: true})
		tx.ids = append(tx.ids, e.ID)
	}
	tx.idmu.Unlock()
	tx.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	werr := make(chan error, 1)
	go func() {
		err := s.parallel(ctx, len(keys), func(ctx context.Context, i int) error {
			opts := driver.PutOptions{}
			if records[i] != nil {
				opts.IfNoneMatch = true
			}
			_, err := s.putBytes(ctx, keys[i], records[i], opts)
			return err
		})
		if err != nil {
			cancel()
		}
		werr <- err
	}()
	n, err := tx.WriteContent(ctx, r)
	if envErr := <-werr; envErr != nil {
		return n, s.wrap("import", tx.id.String(), envErr, ErrExists)
	}
	return n, err
}

// abortOwn aborts an open transaction of m that this node began, and
// removes what it wrote. It reports whether m is free now.
func (s *Store) abortOwn(ctx context.Context, m MsgID) (bool, error) {
	r, v, err := s.readReservation(ctx, m)
	if s.isNotFound(err) {
		return false, nil // a committed message
	}
	if err != nil {
		return false, err
	}
	if r.State == stateCommitted || r.Node != s.opts.Node {
		return false, nil
	}
	key := layout.Key(layout.Handle{Kind: layout.Reservation, Msg: uint32(m)})
	if r.State == stateOpen {
		a := *r
		a.State, a.Changed = stateAborted, s.now()
		if _, err := s.putBytes(ctx, key, a.encode(), driver.PutOptions{IfMatch: v}); err != nil {
			if s.isPrecondition(err) || s.isNotFound(err) {
				return false, nil // committed or aborted meanwhile
			}
			return false, err
		}
	}
	if err := s.removeMessageData(ctx, m); err != nil {
		return false, err
	}
	return true, s.del(ctx, key)
}

// ContentSize returns the length of the committed message m's content,
// from the stored object's size, without reading it: one metadata request.
// It is -1 if the store does not tell sizes up front.
func (s *Store) ContentSize(ctx context.Context, m MsgID) (int64, error) {
	if err := s.check("content size"); err != nil {
		return 0, err
	}
	if err := m.Valid(); err != nil {
		return 0, &Error{Op: "content size", ID: m.String(), Kind: ErrInvalid, Err: err}
	}
	size, err := s.contentSize(ctx, m)
	if err != nil {
		return 0, s.wrap("content size", m.String(), err, nil)
	}
	if size < 0 {
		return -1, nil
	}
	return max(size-trailerSize, 0), nil
}
