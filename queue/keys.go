package queue

import (
	"fmt"
	"strconv"
	"strings"
)

// Kind names a family of stored objects.
type Kind int

// The kinds of stored objects. Key documents the key of each.
const (
	// KindReservation is a message's transaction record.
	KindReservation Kind = iota + 1
	// KindContent is a message's content with its checksum trailer.
	KindContent
	// KindEnvelope is one envelope record.
	KindEnvelope
	// KindQuarantine is the record of a quarantined message.
	KindQuarantine
	// KindQuarantineContent is the content of a quarantined message.
	KindQuarantineContent
	// KindQuarantineEnvelope is an envelope of a quarantined message.
	KindQuarantineEnvelope
	// KindNode is a node's heartbeat record.
	KindNode
	// KindClaim is a pointer from a node to an envelope it holds a lease
	// on, so that survivors find a dead node's envelopes by listing.
	KindClaim
	// KindDue is a pointer from a due-time bucket to an envelope, or to
	// every envelope of a message that was committed in that bucket.
	KindDue
)

// Handle addresses one stored object, or with some fields zero, the prefix
// that lists a group of them. See Key.
type Handle struct {
	Kind Kind
	Msg  MsgID  // the message, for kinds that have one
	Evp  EvpID  // the envelope, for envelope kinds
	Node string // the node name, for KindNode and KindClaim
	Due  int64  // the due bucket (Unix seconds divided by the bucket width), for KindDue
}

// hexdigits of a message ID's top byte: the shard of 256 buckets that
// spreads keys over prefixes, as OpenSMTPD's queue does.
func shard(m MsgID) string { return m.String()[:2] }

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
//
// <hh> is the top byte of the message ID in two hex digits, <msgid> and
// <evpid> are the 8- and 16-digit hex forms, and <bucket> is a 12-digit
// decimal so that buckets sort by time. Node names must be valid for
// ValidNodeName. Every key therefore consists of [a-z0-9._-] and "/", so no
// escaping is needed on any store; listing in byte order yields the
// envelopes of one message together, and messages in ID order.
func Key(h Handle) string {
	switch h.Kind {
	case KindReservation:
		if h.Msg == 0 {
			return "inc/"
		}
		return "inc/" + h.Msg.String()
	case KindContent:
		if h.Msg == 0 {
			return "msg/"
		}
		return "msg/" + shard(h.Msg) + "/" + h.Msg.String()
	case KindEnvelope:
		if h.Evp != 0 {
			m := h.Evp.MsgID()
			return "evp/" + shard(m) + "/" + m.String() + "/" + h.Evp.String()
		}
		if h.Msg != 0 {
			return "evp/" + shard(h.Msg) + "/" + h.Msg.String() + "/"
		}
		return "evp/"
	case KindQuarantine:
		if h.Msg == 0 {
			return "bad/"
		}
		return "bad/" + h.Msg.String() + "/info"
	case KindQuarantineContent:
		return "bad/" + h.Msg.String() + "/msg"
	case KindQuarantineEnvelope:
		if h.Evp == 0 {
			return "bad/" + h.Msg.String() + "/evp/"
		}
		return "bad/" + h.Evp.MsgID().String() + "/evp/" + h.Evp.String()
	case KindNode:
		return "node/" + h.Node
	case KindClaim:
		if h.Node == "" {
			return "own/"
		}
		if h.Evp != 0 {
			return "own/" + h.Node + "/" + h.Evp.String()
		}
		if h.Msg != 0 {
			return "own/" + h.Node + "/" + h.Msg.String()
		}
		return "own/" + h.Node + "/"
	case KindDue:
		if h.Due == 0 {
			return "due/"
		}
		b := fmt.Sprintf("due/%012d/", h.Due)
		if h.Evp != 0 {
			return b + h.Evp.String()
		}
		if h.Msg != 0 {
			return b + h.Msg.String()
		}
		return b
	}
	panic(fmt.Sprintf("queue.Key: unknown kind %d", h.Kind))
}

// ValidNodeName reports whether name can name a node: 1 to 64 characters
// of [a-z0-9._-], not starting with a dot. The error wraps ErrInvalid.
func ValidNodeName(name string) error {
	if len(name) == 0 || len(name) > 64 || name[0] == '.' {
		return fmt.Errorf("%w: node name %q: want 1 to 64 characters of a-z 0-9 . _ -, not starting with a dot", ErrInvalid, name)
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: node name %q: want 1 to 64 characters of a-z 0-9 . _ -, not starting with a dot", ErrInvalid, name)
		}
	}
	return nil
}

// ParseKey is the inverse of Key: it returns the Handle of the object
// stored at key. It accepts exactly the keys that Key computes for one
// object, never a prefix, so that Key(h) == key whenever it succeeds. The
// Handle has the fields Key reads for that key set, and only those: Evp
// for a key of one envelope, Msg for a key of a message (or of all of its
// envelopes, for claim and due pointers), Node for KindNode and KindClaim,
// Due for KindDue. Any other key is an error wrapping ErrInvalid.
func ParseKey(key string) (Handle, error) {
	h, ok := parseKey(key)
	if !ok || Key(h) != key {
		return Handle{}, fmt.Errorf("%w: %q is not a queue key", ErrInvalid, key)
	}
	return h, nil
}

// parseKey splits key by the layout that Key documents; ParseKey checks
// the result by computing its key again.
func parseKey(key string) (Handle, bool) {
	top, rest, _ := strings.Cut(key, "/")
	parts := strings.Split(rest, "/")
	msg := func(s string) (MsgID, bool) {
		m, err := ParseMsgID(s)
		return m, err == nil
	}
	evp := func(s string) (EvpID, bool) {
		e, err := ParseEvpID(s)
		return e, err == nil
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
		return Handle{Kind: KindReservation, Msg: m}, ok
	case top == "msg" && len(parts) == 2:
		m, ok := msg(parts[1])
		return Handle{Kind: KindContent, Msg: m}, ok
	case top == "evp" && len(parts) == 3:
		e, ok := evp(parts[2])
		return Handle{Kind: KindEnvelope, Evp: e}, ok
	case top == "bad" && len(parts) == 2 && parts[1] == "info":
		m, ok := msg(parts[0])
		return Handle{Kind: KindQuarantine, Msg: m}, ok
	case top == "bad" && len(parts) == 2 && parts[1] == "msg":
		m, ok := msg(parts[0])
		return Handle{Kind: KindQuarantineContent, Msg: m}, ok
	case top == "bad" && len(parts) == 3 && parts[1] == "evp":
		e, ok := evp(parts[2])
		return Handle{Kind: KindQuarantineEnvelope, Evp: e}, ok
	case top == "node" && len(parts) == 1:
		return Handle{Kind: KindNode, Node: parts[0]}, ValidNodeName(parts[0]) == nil
	case top == "own" && len(parts) == 2:
		if ValidNodeName(parts[0]) != nil {
			return Handle{}, false
		}
		return msgOrEvp(Handle{Kind: KindClaim, Node: parts[0]}, parts[1])
	case top == "due" && len(parts) == 2:
		b, err := strconv.ParseInt(parts[0], 10, 64)
		if err != nil || b <= 0 {
			return Handle{}, false
		}
		return msgOrEvp(Handle{Kind: KindDue, Due: b}, parts[1])
	}
	return Handle{}, false
}

// parseEnvelopeKey returns the envelope ID of an envelope key, one that
// Key computes for KindEnvelope. Any other key is ErrCorrupt: it was
// listed where only envelopes are stored.
func parseEnvelopeKey(key string) (EvpID, error) {
	h, err := ParseKey(key)
	if err != nil || h.Kind != KindEnvelope {
		return 0, fmt.Errorf("%w: unexpected key %q under evp/", ErrCorrupt, key)
	}
	return h.Evp, nil
}
