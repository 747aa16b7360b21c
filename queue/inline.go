package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"io/fs"
	"slices"
	"sync"
	"time"

	"github.com/mxqueue/mxq/queue/layout"
)

// MaxInlineContent is the largest Options.InlineContent: the most content
// that any envelope record holds, which every reader of records allows
// for.
const MaxInlineContent = 1 << 20

// A message of one envelope whose content is at most
// Options.InlineContent bytes is committed by Tx.CommitContent in one
// object: the envelope's record with the content at its end, in the form
// of a content object (envHeader.Content). It has no content object,
// unless an envelope is added to it later (Store.AddEnvelope), which
// writes one first. Readers of the content look for the object, then for
// the envelope; a Store keeps the inline contents it read in a bounded
// cache, so that a delivery that found the envelope reads its content
// with no request.

// inlineCacheBytes bounds the inline contents a Store keeps.
const inlineCacheBytes = 8 << 20

// inlineCache holds the inline contents this Store read lately, each for
// at most half a grace period, after which a message ID may be reused.
type inlineCache struct {
	mu    sync.Mutex
	m     map[MsgID]inlineEntry
	order []MsgID // oldest first; may name entries dropped since
	size  int
}

type inlineEntry struct {
	b  []byte
	at time.Time
}

// put keeps b, the stored content of m, read at now.
func (c *inlineCache) put(m MsgID, b []byte, now time.Time) {
	if len(b) > inlineCacheBytes/16 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[MsgID]inlineEntry)
	}
	if old, ok := c.m[m]; ok {
		c.size -= len(old.b)
	} else {
		c.order = append(c.order, m)
	}
	c.m[m] = inlineEntry{b: b, at: now}
	c.size += len(b)
	for c.size > inlineCacheBytes && len(c.order) > 0 {
		old := c.order[0]
		c.order = c.order[1:]
		if e, ok := c.m[old]; ok {
			c.size -= len(e.b)
			delete(c.m, old)
		}
	}
	if len(c.order) > 4*len(c.m)+64 {
		// Entries dropped by remove leave their IDs behind.
		live := c.order[:0]
		for _, id := range c.order {
			if _, ok := c.m[id]; ok {
				live = append(live, id)
			}
		}
		c.order = live
	}
}

// get returns the content of m if it was read within maxAge of now.
func (c *inlineCache) get(m MsgID, now time.Time, maxAge time.Duration) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[m]
	if !ok || now.Sub(e.at) >= maxAge {
		return nil, false
	}
	return e.b, true
}

// remove forgets the content of m, whose envelope this Store deleted.
func (c *inlineCache) remove(m MsgID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[m]; ok {
		c.size -= len(e.b)
		delete(c.m, m)
	}
}

// sealBytes returns b in the form of a stored content object: b and its
// checksum trailer, as newSealer writes them. It may append to b in place
// when b has room for the trailer.
func sealBytes(b []byte) []byte {
	sum := sha256.Sum256(b)
	out := slices.Grow(b, trailerSize)
	out = append(out, trailerMagic...)
	out = binary.BigEndian.AppendUint64(out, uint64(len(b)))
	return append(out, sum[:]...)
}

// readUpTo reads r until EOF or until it has more than max bytes. It
// returns what it read, and whether r ended within max. A file (the
// message smtpd hands the queue process) is read into a buffer of its
// size, with room for the checksum trailer that sealBytes adds: one read
// and the one that finds its end, where io.ReadAll would grow its buffer
// from 512 bytes, a read and a copy at each step.
func readUpTo(r io.Reader, max int) ([]byte, bool, error) {
	size := 512
	if f, ok := r.(interface{ Stat() (fs.FileInfo, error) }); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			size = int(min(fi.Size(), int64(max))) + 1
		}
	}
	b := make([]byte, 0, size+trailerSize)
	lr := io.LimitReader(r, int64(max)+1)
	for {
		if len(b) == cap(b) {
			b = slices.Grow(b, cap(b))
		}
		n, err := lr.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, len(b) <= max, nil
		}
		if err != nil {
			return b, false, err
		}
	}
}

// inlineContent returns the stored content (with its trailer) that the
// message m keeps in its envelope, or an error that is ErrNotFound when
// its envelope holds none. It lists the message's envelopes and reads
// the first: a message with inline content has one envelope, or a
// content object of its own as well.
func (s *Store) inlineContent(ctx context.Context, m MsgID) ([]byte, error) {
	if b, ok := s.inline.get(m, s.now(), s.opts.Grace/2); ok {
		return b, nil
	}
	return s.storedInline(ctx, m)
}

// storedInline is inlineContent as stored now, not as cached.
func (s *Store) storedInline(ctx context.Context, m MsgID) ([]byte, error) {
	keys, _, err := s.b.List(ctx, layout.Key(layout.Handle{Kind: layout.Envelope, Msg: uint32(m)}), "", 1)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, notFound("read content", m)
	}
	b, _, err := s.getBytes(ctx, keys[0], s.maxRecord())
	if err != nil {
		return nil, err
	}
	h, _, err := decodeRecord(keys[0], b)
	if err != nil {
		return nil, err
	}
	if len(h.content) == 0 {
		return nil, notFound("read content", m)
	}
	s.inline.put(m, h.content, s.now())
	return h.content, nil
}

// openContent returns the stored content of m, with its trailer: the
// content object, or the content its envelope holds.
func (s *Store) openContent(ctx context.Context, m MsgID) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if b, ok := s.inline.get(m, s.now(), s.opts.Grace/2); ok {
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	var rc io.ReadCloser
	err := s.retry(ctx, func() error {
		var err error
		rc, _, err = s.b.Get(ctx, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)}))
		return err
	})
	if !s.isNotFound(err) {
		return rc, err
	}
	b, ierr := s.storedInline(ctx, m) // the cache had nothing
	if ierr != nil {
		if s.isNotFound(ierr) {
			return nil, err
		}
		return nil, ierr
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// contentSize returns the stored size of m's content, with its trailer,
// or -1 if the store does not tell.
func (s *Store) contentSize(ctx context.Context, m MsgID) (int64, error) {
	a, err := s.stat(ctx, layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)}))
	if err == nil {
		return a.Size, nil
	}
	if !s.isNotFound(err) {
		return 0, err
	}
	b, ierr := s.inlineContent(ctx, m)
	if ierr != nil {
		if s.isNotFound(ierr) {
			return 0, err
		}
		return 0, ierr
	}
	return int64(len(b)), nil
}
