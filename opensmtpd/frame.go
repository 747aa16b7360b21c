package opensmtpd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Sizes of the wire protocol.
const (
	// HeaderSize is the size of an imsg header in both formats.
	HeaderSize = 16
	// MaxMessageSize is the largest message, header included, that either
	// side may send (MAX_IMSGSIZE). A larger one is fatal to smtpd.
	MaxMessageSize = 16384
	// APIVersion is the queue protocol version smtpd sends in INIT.
	APIVersion = 2

	// MaxLoadSize is the largest envelope blob an ENVELOPE_LOAD reply can carry.
	MaxLoadSize = MaxMessageSize - HeaderSize
	// MaxWalkSize is the largest envelope blob an ENVELOPE_WALK reply can carry.
	MaxWalkSize = MaxMessageSize - HeaderSize - 4 - 8
)

// Type is an imsg message type of the queue protocol.
type Type uint32

// Message types of queue protocol version 2 as spoken by smtpd 6.4 and later.
const (
	TypeOK             Type = 0 // the only reply type
	TypeFail           Type = 1 // never sent by either side; fatal to smtpd
	TypeInit           Type = 2
	TypeClose          Type = 3
	TypeMessageCreate  Type = 4
	TypeMessageDelete  Type = 5
	TypeMessageCommit  Type = 6
	TypeMessageFdR     Type = 7
	TypeEnvelopeCreate Type = 8
	TypeEnvelopeDelete Type = 9
	TypeEnvelopeLoad   Type = 10
	TypeEnvelopeUpdate Type = 11
	TypeEnvelopeWalk   Type = 12
)

var typeNames = [...]string{
	"OK", "FAIL", "INIT", "CLOSE",
	"MESSAGE_CREATE", "MESSAGE_DELETE", "MESSAGE_COMMIT", "MESSAGE_FD_R",
	"ENVELOPE_CREATE", "ENVELOPE_DELETE", "ENVELOPE_LOAD", "ENVELOPE_UPDATE", "ENVELOPE_WALK",
}

// String returns the protocol name of t, such as "MESSAGE_COMMIT".
func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint32(t))
}

// HeaderFormat is one of the two imsg header layouts.
type HeaderFormat uint8

const (
	// HeaderAuto is not a layout: as ServeOptions.HeaderFormat it means
	// "the layout of the smtpd at the other end", found by IdentifyPeer.
	HeaderAuto HeaderFormat = iota
	// Header68 is the layout of smtpd up to 7.6: u32 type, u16 len,
	// u16 flags (bit 0 = descriptor attached), u32 peerid, u32 pid.
	Header68
	// Header77 is the layout of smtpd 7.7 and later: u32 type, u32 len
	// whose bit 31 means "descriptor attached", u32 peerid, u32 pid.
	Header77
)

// String returns "auto", "6.8" or "7.7".
func (f HeaderFormat) String() string {
	switch f {
	case HeaderAuto:
		return "auto"
	case Header68:
		return "6.8"
	case Header77:
		return "7.7"
	}
	return fmt.Sprintf("HeaderFormat(%d)", uint8(f))
}

const (
	flagHasFD = 1          // Header68 flags bit
	fdMark    = 1 << 31    // Header77 len bit
	lenMask   = fdMark - 1 // Header77 len bits
)

// ErrMalformed is wrapped by every error about a frame that breaks the
// protocol: a bad length, a short or overlong payload, an unknown type, a
// missing descriptor.
var ErrMalformed = errors.New("malformed frame")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// header is a decoded imsg header.
type header struct {
	typ    Type
	len    uint32 // total length, header included
	hasFD  bool
	peerID uint32
	pid    uint32
	// format is the layout the header was written in, or HeaderAuto
	// when it carries no descriptor: then both layouts are the same bytes.
	format HeaderFormat
}

// parseHeader decodes the first HeaderSize bytes of b, detecting the layout.
//
// The two layouts differ only in bytes 4..7. Read as a little-endian u32,
// bit 31 set means Header77 with a descriptor; otherwise the low 16 bits are
// the length and the high 16 bits the Header68 flags, which are zero in both
// layouts when no descriptor travels, because len never reaches 65536.
func parseHeader(b []byte) (header, error) {
	if len(b) < HeaderSize {
		return header{}, malformed("short header: %d bytes", len(b))
	}
	h := header{
		typ:    Type(binary.LittleEndian.Uint32(b[0:])),
		peerID: binary.LittleEndian.Uint32(b[8:]),
		pid:    binary.LittleEndian.Uint32(b[12:]),
	}
	v := binary.LittleEndian.Uint32(b[4:])
	switch flags := v >> 16; {
	case v&fdMark != 0:
		h.len, h.hasFD, h.format = v&lenMask, true, Header77
	case flags == flagHasFD:
		h.len, h.hasFD, h.format = v&0xffff, true, Header68
	case flags == 0:
		h.len = v
	default:
		return header{}, malformed("bad len/flags word %#08x", v)
	}
	if h.len < HeaderSize || h.len > MaxMessageSize {
		return header{}, malformed("bad len %d (want %d..%d)", h.len, HeaderSize, MaxMessageSize)
	}
	return h, nil
}

// appendHeader appends the header of a message of total length n in the
// given layout. A descriptor flag in HeaderAuto is encoded as Header68.
func appendHeader(dst []byte, f HeaderFormat, typ Type, n int, hasFD bool, pid uint32) []byte {
	v := uint32(n)
	if hasFD {
		if f == Header77 {
			v |= fdMark
		} else {
			v |= flagHasFD << 16
		}
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(typ))
	dst = binary.LittleEndian.AppendUint32(dst, v)
	dst = binary.LittleEndian.AppendUint32(dst, 0) // peerid
	return binary.LittleEndian.AppendUint32(dst, pid)
}

// request is a decoded request from smtpd.
type request struct {
	typ     Type
	version uint32 // INIT
	msgid   uint32 // MESSAGE_DELETE, _COMMIT, _FD_R, ENVELOPE_CREATE
	evpid   uint64 // ENVELOPE_DELETE, _LOAD, _UPDATE
	data    []byte // ENVELOPE_CREATE, ENVELOPE_UPDATE; aliases the payload
}

// wantsFD reports whether requests of type t carry a descriptor.
func wantsFD(t Type) bool { return t == TypeMessageCommit }

// decodeRequest decodes the payload of a request whose header is h.
// Whether a descriptor is present is checked against h.hasFD.
func decodeRequest(h header, p []byte) (request, error) {
	if uint32(len(p)) != h.len-HeaderSize {
		return request{}, malformed("%s: payload is %d bytes, header says %d", h.typ, len(p), h.len-HeaderSize)
	}
	if h.hasFD != wantsFD(h.typ) {
		if h.hasFD {
			return request{}, malformed("%s: unexpected descriptor", h.typ)
		}
		return request{}, malformed("%s: descriptor missing", h.typ)
	}
	r := request{typ: h.typ}
	exact := func(n int) error {
		if len(p) != n {
			return malformed("%s: payload is %d bytes, want %d", h.typ, len(p), n)
		}
		return nil
	}
	atLeast := func(n int) error {
		if len(p) < n {
			return malformed("%s: payload is %d bytes, want at least %d", h.typ, len(p), n)
		}
		return nil
	}
	var err error
	switch h.typ {
	case TypeInit:
		if err = exact(4); err == nil {
			r.version = binary.LittleEndian.Uint32(p)
		}
	case TypeClose, TypeMessageCreate, TypeEnvelopeWalk:
		err = exact(0)
	case TypeMessageDelete, TypeMessageCommit, TypeMessageFdR:
		if err = exact(4); err == nil {
			r.msgid = binary.LittleEndian.Uint32(p)
		}
	case TypeEnvelopeCreate:
		if err = atLeast(4); err == nil {
			r.msgid = binary.LittleEndian.Uint32(p)
			r.data = p[4:]
		}
	case TypeEnvelopeDelete, TypeEnvelopeLoad:
		if err = exact(8); err == nil {
			r.evpid = binary.LittleEndian.Uint64(p)
		}
	case TypeEnvelopeUpdate:
		if err = atLeast(8); err == nil {
			r.evpid = binary.LittleEndian.Uint64(p)
			r.data = p[8:]
		}
	default:
		err = malformed("unknown request type %d", uint32(h.typ))
	}
	return r, err
}

// reply is the answer to one request. Which fields go on the wire depends
// on op, the request type, following the queue_proc.c reply shapes.
type reply struct {
	op    Type
	r     int32  // CLOSE, MESSAGE_*, ENVELOPE_CREATE/DELETE/UPDATE/WALK
	msgid uint32 // MESSAGE_CREATE when r == 1
	evpid uint64 // ENVELOPE_CREATE when r == 1; ENVELOPE_WALK when r > 0
	data  []byte // ENVELOPE_LOAD; ENVELOPE_WALK when r > 0 (len(data) == r)
	hasFD bool   // MESSAGE_FD_R success
}

// appendReply appends the complete reply message (header included, type OK).
// It refuses replies that smtpd would reject as fatal.
func appendReply(dst []byte, f HeaderFormat, pid uint32, rp reply) ([]byte, error) {
	var p []byte
	switch rp.op {
	case TypeInit:
	case TypeClose, TypeMessageDelete, TypeMessageCommit, TypeEnvelopeDelete, TypeEnvelopeUpdate:
		p = binary.LittleEndian.AppendUint32(p, uint32(rp.r))
	case TypeMessageCreate:
		p = binary.LittleEndian.AppendUint32(p, uint32(rp.r))
		if rp.r == 1 {
			p = binary.LittleEndian.AppendUint32(p, rp.msgid)
		}
	case TypeEnvelopeCreate:
		p = binary.LittleEndian.AppendUint32(p, uint32(rp.r))
		if rp.r == 1 {
			p = binary.LittleEndian.AppendUint64(p, rp.evpid)
		}
	case TypeMessageFdR:
	case TypeEnvelopeLoad:
		p = rp.data
	case TypeEnvelopeWalk:
		if rp.r > 0 && int(rp.r) != len(rp.data) {
			return dst, fmt.Errorf("opensmtpd: walk reply r=%d with %d-byte blob", rp.r, len(rp.data))
		}
		if rp.r < -1 {
			return dst, fmt.Errorf("opensmtpd: walk reply r=%d", rp.r)
		}
		p = binary.LittleEndian.AppendUint32(p, uint32(rp.r))
		if rp.r > 0 {
			p = binary.LittleEndian.AppendUint64(p, rp.evpid)
			p = append(p, rp.data...)
		}
	default:
		return dst, fmt.Errorf("opensmtpd: no reply shape for %s", rp.op)
	}
	if rp.hasFD && rp.op != TypeMessageFdR {
		return dst, fmt.Errorf("opensmtpd: %s reply cannot carry a descriptor", rp.op)
	}
	n := HeaderSize + len(p)
	if n > MaxMessageSize {
		return dst, fmt.Errorf("opensmtpd: %s reply of %d bytes exceeds %d", rp.op, n, MaxMessageSize)
	}
	dst = appendHeader(dst, f, TypeOK, n, rp.hasFD, pid)
	return append(dst, p...), nil
}
