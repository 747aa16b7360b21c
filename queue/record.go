package queue

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Reservation states.
const (
	stateOpen      = "open"
	stateCommitted = "committed"
	stateAborted   = "aborted"
)

// reservation is the record at layout.Reservation: the transaction of one
// message. Its switch from open to committed is the commit point; the
// switch from open to aborted is the abort point. Both are compare-and-swap
// writes, so exactly one wins.
type reservation struct {
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	Changed time.Time `json:"changed"`
	Node    string    `json:"node"`
	// Nonce tells this transaction from an earlier one that used the same
	// message ID; pending envelopes carry it.
	Nonce uint64 `json:"nonce"`
}

func (r *reservation) encode() []byte {
	b, _ := json.Marshal(r)
	return b
}

func decodeReservation(key string, b []byte) (*reservation, error) {
	var r reservation
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: reservation %s does not parse: %v", ErrCorrupt, key, err)
	}
	switch r.State {
	case stateOpen, stateCommitted, stateAborted:
	default:
		return nil, fmt.Errorf("%w: reservation %s has unknown state %q", ErrCorrupt, key, r.State)
	}
	return &r, nil
}

// An envelope record is one line of JSON, the header, followed by the
// envelope's opaque data. A record that keeps its message's content after
// the data (envHeader.Content) starts with recordMagicInline instead, so
// that a node of an earlier version, which would take the content for
// envelope data, refuses it as corrupt.
const (
	recordMagic       = "mxq-evp/1 "
	recordMagicInline = "mxq-evp/2 "
)

type envHeader struct {
	// Pending is the nonce of the transaction that wrote the envelope
	// before its message was committed, or 0. Readers check the
	// reservation of such envelopes.
	Pending uint64 `json:"p,omitempty"`
	// Block is the nonce of the block record whose committed bit makes
	// an envelope written before its commit visible, or 0; Opened is
	// when its transaction began, Unix seconds, for Sweep.
	Block  uint64 `json:"k,omitempty"`
	Opened int64  `json:"a,omitempty"`
	// Alone marks the only envelope of a message committed by
	// Tx.CommitContent in one round: written in parallel with the
	// content, it is committed once both are stored, with no swap of
	// the block record first. A reader that finds both, and the bit
	// neither committed nor aborted, sets the committed bit itself
	// (see Store.rollForward).
	Alone bool `json:"w,omitempty"`
	// Siblings are the low halves of the IDs of every envelope of a
	// message of several committed by Tx.CommitContent in one round,
	// this one's included: written in parallel with the content and
	// each other, they are committed once all of them and the content
	// are stored. A reader that finds them all, and the bit neither
	// committed nor aborted, sets the committed bit itself (see
	// Store.rollForward). A node of an earlier version, which does not
	// know the field, waits for the bit.
	Siblings []uint32 `json:"e,omitempty"`
	// Holder, Session, Token and Expires are the lease, if any. Session
	// names the holder's process; Token grows with every claim.
	Holder  string `json:"h,omitempty"`
	Session uint64 `json:"s,omitempty"`
	Token   uint64 `json:"t,omitempty"`
	Expires int64  `json:"x,omitempty"` // Unix nanoseconds
	// Due is when the envelope is next due for work, Unix seconds; 0 means
	// now.
	Due int64 `json:"d,omitempty"`
	// ByMsg says the due pointer is the message's, written at commit,
	// rather than the envelope's own.
	ByMsg bool `json:"m,omitempty"`
	// Claimer is the node that committed the message claimed (Tx.Claim),
	// whose claim pointer names the whole message.
	Claimer string `json:"c,omitempty"`
	// Gone marks an envelope that its lease holder deleted; the object is
	// removed right after.
	Gone bool `json:"g,omitempty"`
	// Held marks an envelope an operator put on hold (see Store.Hold):
	// Due skips it and no node can claim it until ReleaseHold. Records
	// written before holds existed lack it, and are not held.
	Held bool `json:"o,omitempty"`
	// Content is the length of the message's content stored at the end
	// of the record, after the envelope's data, in the form of a content
	// object (with its checksum trailer): a message of one envelope and
	// small content, committed in one write (see Options.InlineContent).
	// Every rewrite of the record carries the content along, in content.
	Content int `json:"n,omitempty"`
	content []byte
}

// settled clears the fields that tie a header to its transaction, for a
// record written again after its message committed.
func (h *envHeader) settled() {
	h.Pending, h.Block, h.Opened, h.Alone, h.Siblings = 0, 0, 0, false, nil
}

// oneRound reports whether the envelope was written by a commit in one
// round (Tx.CommitContent), whose message a reader may commit: the only
// envelope of its message, or one of several that name each other.
func (h *envHeader) oneRound() bool { return h.Alone || len(h.Siblings) > 0 }

func encodeRecord(h *envHeader, data []byte) []byte {
	hh := *h // h may be shared by writes in parallel
	hh.Content = len(hh.content)
	hb, _ := json.Marshal(&hh)
	magic := recordMagic
	if hh.Content > 0 {
		magic = recordMagicInline
	}
	b := make([]byte, 0, len(magic)+len(hb)+1+len(data)+len(h.content))
	b = append(b, magic...)
	b = append(b, hb...)
	b = append(b, '\n')
	b = append(b, data...)
	return append(b, h.content...)
}

func decodeRecord(key string, b []byte) (*envHeader, []byte, error) {
	inline := bytes.HasPrefix(b, []byte(recordMagicInline))
	if !inline && !bytes.HasPrefix(b, []byte(recordMagic)) {
		return nil, nil, fmt.Errorf("%w: envelope %s is not an envelope record", ErrCorrupt, key)
	}
	b = b[len(recordMagic):]
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil, fmt.Errorf("%w: envelope %s has no header end", ErrCorrupt, key)
	}
	var h envHeader
	if err := json.Unmarshal(b[:i], &h); err != nil {
		return nil, nil, fmt.Errorf("%w: envelope %s header does not parse: %v", ErrCorrupt, key, err)
	}
	data := b[i+1:]
	if inline != (h.Content != 0) {
		return nil, nil, fmt.Errorf("%w: envelope %s: its header's content length %d does not match its version", ErrCorrupt, key, h.Content)
	}
	if h.Content != 0 {
		if h.Content < trailerSize || h.Content > len(data) {
			return nil, nil, fmt.Errorf("%w: envelope %s claims %d bytes of content in %d", ErrCorrupt, key, h.Content, len(data))
		}
		cut := len(data) - h.Content
		data, h.content = data[:cut:cut], data[cut:]
	}
	return &h, data, nil
}
