// Package layout is the key layout of a queue in its store: which object
// lives under which key, in both directions. Key computes every key from a
// Handle, and Parse is its inverse.
//
// Most code should use package queue, which reads and writes these objects
// and never exposes their keys. This package is for tests and tools that
// look at a store directly: a conformance test that damages one object, a
// benchmark that lists envelopes, an operator's tool that counts objects by
// listing alone.
//
// # Keys
//
// Every key consists of [a-z0-9._-] and "/", so that no store needs
// escaping, and message and envelope IDs are fixed-width lower-case hex,
// so that listing in byte order yields the envelopes of one message
// together. The layout is documented on Key.
package layout

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrNotKey is the error of Parse for a key that is not one of a queue's
// objects.
var ErrNotKey = errors.New("not a queue key")

// Kind names a family of stored objects.
type Kind int

// The kinds of stored objects. Key documents the key of each.
const (
	// Reservation is a message's transaction record.
	Reservation Kind = iota + 1
	// Content is a message's content with its checksum trailer.
	Content
	// Envelope is one envelope record.
	Envelope
	// Quarantine is the record of a quarantined message.
	Quarantine
	// QuarantineContent is the content of a quarantined message.
	QuarantineContent
	// QuarantineEnvelope is an envelope of a quarantined message.
	QuarantineEnvelope
	// Node is a node's heartbeat record.
	Node
	// Claim is a pointer from a node to an envelope it holds a lease
	// on, so that survivors find a dead node's envelopes by listing.
	Claim
	// Due is a pointer from a due-time bucket to an envelope, or to
	// every envelope of a message that was committed in that bucket.
	Due
	// Block is the record of a block of BlockSize message IDs that one
	// node hands out: the commit point of their transactions.
	Block
	// DueGroup is a due pointer shared by the messages of one envelope
	// that one node committed within a moment in the same bucket: an
	// object that lists their envelope IDs, named after the first.
	DueGroup
)

// BlockBits is how many low bits of a message ID a block spans: a block
// holds the BlockSize message IDs that share the top 32-BlockBits bits.
const BlockBits = 12

// BlockSize is the number of message IDs in a block.
const BlockSize = 1 << BlockBits

// Handle addresses one stored object, or with some fields zero, the prefix
// that lists a group of them. See Key.
type Handle struct {
	Kind Kind
	Msg  uint32 // the message ID, for kinds that have one
	Evp  uint64 // the envelope ID, for envelope kinds
	Node string // the node name, for Node and Claim
	Due  int64  // the due bucket (Unix seconds divided by the bucket width), for Due and DueGroup
}

// BlockOf returns the first message ID of the block that holds m: the
// Msg of the Block handle that m's block record has.
func BlockOf(m uint32) uint32 { return m &^ (BlockSize - 1) }

// BlockPrefix returns the prefix under which List finds the objects of
// kind k (Reservation, Content, Envelope or Quarantine, with its content
// and envelopes) of every message in the block that holds m.
func BlockPrefix(k Kind, m uint32) string {
	b := hex8(m)[:8-BlockBits/4]
	switch k {
	case Reservation:
		return "inc/" + b
	case Content:
		return "msg/" + shard(m) + "/" + b
	case Envelope:
		return "evp/" + shard(m) + "/" + b
	case Quarantine:
		return "bad/" + b
	}
	panic(fmt.Sprintf("layout.BlockPrefix: kind %d has no block prefix", k))
}

// hexdigits of a message ID's top byte: the shard of 256 buckets that
// spreads keys over prefixes, as OpenSMTPD's queue does.
func shard(m uint32) string { return hex8(m)[:2] }

// Key returns the storage key of h. It is the one function that computes
// keys; adapters never build them. When the identifying fields of h are
// zero, Key returns the prefix under which List finds every object of
// that group, ending in "/":
//
//	reservation  inc/<msgid>                       prefix inc/
//	content      msg/<hh>/<msgid>                  prefix msg/
//	envelope     evp/<hh>/<msgid>/<evpid>          prefix evp/, or evp/<hh>/<msgid>/ with Msg set
//	quarantine   bad/<msgid>/info                  prefix bad/
//	  content    bad/<msgid>/msg
//	  envelope   bad/<msgid>/evp/<evpid>           prefix bad/<msgid>/evp/
//	node         node/<name>                       prefix node/
//	claim        own/<name>/<evpid>                prefix own/<name>/, or own/
//	  of a whole message   own/<name>/<msgid>
//	due          due/<bucket>/<evpid>              prefix due/<bucket>/, or due/
//	  of a whole message   due/<bucket>/<msgid>
//	  of a group           due/<bucket>/g<evpid>
//	block        blk/<hi>                          prefix blk/
//
// <hh> is the top byte of the message ID in two hex digits, <msgid> and
// <evpid> are the 8- and 16-digit hex forms, and <bucket> is a 12-digit
// decimal so that buckets sort by time. <hi> is the first 5 hex digits
// of a block's message IDs, and the Msg of a Block handle is the block's
// first ID (see BlockOf). Node names must be valid for
// ValidNode. Every key therefore consists of [a-z0-9._-] and "/", so no
// escaping is needed on any store; listing in byte order yields the
// envelopes of one message together, and messages in ID order.
func Key(h Handle) string {
	switch h.Kind {
	case Reservation:
		if h.Msg == 0 {
			return "inc/"
		}
		return "inc/" + hex8(h.Msg)
	case Content:
		if h.Msg == 0 {
			return "msg/"
		}
		return "msg/" + shard(h.Msg) + "/" + hex8(h.Msg)
	case Envelope:
		if h.Evp != 0 {
			m := uint32(h.Evp >> 32)
			return "evp/" + shard(m) + "/" + hex8(m) + "/" + hex16(h.Evp)
		}
		if h.Msg != 0 {
			return "evp/" + shard(h.Msg) + "/" + hex8(h.Msg) + "/"
		}
		return "evp/"
	case Quarantine:
		if h.Msg == 0 {
			return "bad/"
		}
		return "bad/" + hex8(h.Msg) + "/info"
	case QuarantineContent:
		return "bad/" + hex8(h.Msg) + "/msg"
	case QuarantineEnvelope:
		if h.Evp == 0 {
			return "bad/" + hex8(h.Msg) + "/evp/"
		}
		return "bad/" + hex8(uint32(h.Evp>>32)) + "/evp/" + hex16(h.Evp)
	case Node:
		return "node/" + h.Node
	case Claim:
		if h.Node == "" {
			return "own/"
		}
		if h.Evp != 0 {
			return "own/" + h.Node + "/" + hex16(h.Evp)
		}
		if h.Msg != 0 {
			return "own/" + h.Node + "/" + hex8(h.Msg)
		}
		return "own/" + h.Node + "/"
	case Due:
		if h.Due == 0 {
			return "due/"
		}
		b := fmt.Sprintf("due/%012d/", h.Due)
		if h.Evp != 0 {
			return b + hex16(h.Evp)
		}
		if h.Msg != 0 {
			return b + hex8(h.Msg)
		}
		return b
	case DueGroup:
		return fmt.Sprintf("due/%012d/g", h.Due) + hex16(h.Evp)
	case Block:
		if h.Msg == 0 {
			return "blk/"
		}
		return "blk/" + hex8(BlockOf(h.Msg))[:8-BlockBits/4]
	}
	panic(fmt.Sprintf("layout.Key: unknown kind %d", h.Kind))
}

// Parse is the inverse of Key: it returns the Handle of the object
// stored at key. It accepts exactly the keys that Key computes for one
// object, never a prefix, so that Key(h) == key whenever it succeeds. The
// Handle has the fields Key reads for that key set, and only those: Evp
// for a key of one envelope, Msg for a key of a message (or of all of its
// envelopes, for claim and due pointers), Node for Node and Claim,
// Due for Due, Due and Evp for DueGroup. Any other key is ErrNotKey.
func Parse(key string) (Handle, error) {
	h, ok := parseKey(key)
	if !ok || Key(h) != key {
		return Handle{}, fmt.Errorf("%w: %q", ErrNotKey, key)
	}
	return h, nil
}

// parseKey splits key by the layout that Key documents; Parse checks
// the result by computing its key again.
func parseKey(key string) (Handle, bool) {
	top, rest, _ := strings.Cut(key, "/")
	parts := strings.Split(rest, "/")
	msg := func(s string) (uint32, bool) {
		if len(s) != 8 {
			return 0, false
		}
		v, err := strconv.ParseUint(s, 16, 32)
		return uint32(v), err == nil && v != 0
	}
	evp := func(s string) (uint64, bool) {
		if len(s) != 16 {
			return 0, false
		}
		v, err := strconv.ParseUint(s, 16, 64)
		return v, err == nil && v>>32 != 0 && uint32(v) != 0
	}
	// msgOrEvp fills h from the last element of a claim or due pointer.
	msgOrEvp := func(h Handle, s string) (Handle, bool) {
		var ok bool
		if len(s) == 8 {
			h.Msg, ok = msg(s)
		} else {
			h.Evp, ok = evp(s)
		}
		return h, ok
	}
	switch {
	case top == "inc" && len(parts) == 1:
		m, ok := msg(parts[0])
		return Handle{Kind: Reservation, Msg: m}, ok
	case top == "msg" && len(parts) == 2:
		m, ok := msg(parts[1])
		return Handle{Kind: Content, Msg: m}, ok
	case top == "evp" && len(parts) == 3:
		e, ok := evp(parts[2])
		return Handle{Kind: Envelope, Evp: e}, ok
	case top == "bad" && len(parts) == 2 && parts[1] == "info":
		m, ok := msg(parts[0])
		return Handle{Kind: Quarantine, Msg: m}, ok
	case top == "bad" && len(parts) == 2 && parts[1] == "msg":
		m, ok := msg(parts[0])
		return Handle{Kind: QuarantineContent, Msg: m}, ok
	case top == "bad" && len(parts) == 3 && parts[1] == "evp":
		e, ok := evp(parts[2])
		return Handle{Kind: QuarantineEnvelope, Evp: e}, ok
	case top == "node" && len(parts) == 1:
		return Handle{Kind: Node, Node: parts[0]}, ValidNode(parts[0]) == nil
	case top == "own" && len(parts) == 2:
		if ValidNode(parts[0]) != nil {
			return Handle{}, false
		}
		return msgOrEvp(Handle{Kind: Claim, Node: parts[0]}, parts[1])
	case top == "blk" && len(parts) == 1:
		if len(parts[0]) != 8-BlockBits/4 {
			return Handle{}, false
		}
		v, err := strconv.ParseUint(parts[0], 16, 32)
		return Handle{Kind: Block, Msg: uint32(v) << BlockBits}, err == nil && v != 0
	case top == "due" && len(parts) == 2:
		b, err := strconv.ParseInt(parts[0], 10, 64)
		if err != nil || b <= 0 {
			return Handle{}, false
		}
		if g, ok := strings.CutPrefix(parts[1], "g"); ok {
			e, ok := evp(g)
			return Handle{Kind: DueGroup, Due: b, Evp: e}, ok
		}
		return msgOrEvp(Handle{Kind: Due, Due: b}, parts[1])
	}
	return Handle{}, false
}

// ValidNode reports whether name can name a node: 1 to 64 characters of
// [a-z0-9._-], not starting with a dot.
func ValidNode(name string) error {
	if len(name) == 0 || len(name) > 64 || name[0] == '.' {
		return fmt.Errorf("node name %q: want 1 to 64 characters of a-z 0-9 . _ -, not starting with a dot", name)
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("node name %q: want 1 to 64 characters of a-z 0-9 . _ -, not starting with a dot", name)
		}
	}
	return nil
}

const hexDigits = "0123456789abcdef"

// hex8 is the 8-digit form of a message ID.
func hex8(v uint32) string {
	var b [8]byte
	for i := range b {
		b[i] = hexDigits[v>>(28-4*i)&0xf]
	}
	return string(b[:])
}

// hex16 is the 16-digit form of an envelope ID.
func hex16(v uint64) string {
	var b [16]byte
	for i := range b {
		b[i] = hexDigits[v>>(60-4*i)&0xf]
	}
	return string(b[:])
}
