package queue

import (
	"fmt"
	"strconv"
)

// MsgID identifies a message. It is a random non-zero 32-bit value, printed
// as 8 lower-case hex digits, exactly like OpenSMTPD's msgid.
type MsgID uint32

// EvpID identifies an envelope: the MsgID of its message in the upper 32
// bits and a random non-zero value in the lower 32 bits. It is printed as 16
// lower-case hex digits, like OpenSMTPD's evpid.
type EvpID uint64

const hexDigits = "0123456789abcdef"

// String returns the 8-digit hex form of m.
func (m MsgID) String() string {
	var b [8]byte
	for i := range b {
		b[i] = hexDigits[uint32(m)>>(28-4*i)&0xf]
	}
	return string(b[:])
}

// Valid reports whether m can name a message. The error wraps ErrInvalid.
func (m MsgID) Valid() error {
	if m == 0 {
		return fmt.Errorf("%w: message ID 00000000 is reserved", ErrInvalid)
	}
	return nil
}

// Evp returns the envelope ID made of m and the low part lo.
func (m MsgID) Evp(lo uint32) EvpID { return EvpID(uint64(m)<<32 | uint64(lo)) }

// String returns the 16-digit hex form of e.
func (e EvpID) String() string {
	var b [16]byte
	for i := range b {
		b[i] = hexDigits[uint64(e)>>(60-4*i)&0xf]
	}
	return string(b[:])
}

// MsgID returns the message that e belongs to.
func (e EvpID) MsgID() MsgID { return MsgID(e >> 32) }

// Valid reports whether e can name an envelope: both halves must be
// non-zero. The error wraps ErrInvalid.
func (e EvpID) Valid() error {
	if e>>32 == 0 || uint32(e) == 0 {
		return fmt.Errorf("%w: envelope ID %s: both halves must be non-zero", ErrInvalid, e)
	}
	return nil
}

// ParseMsgID parses the 8-hex-digit form of a message ID. Upper-case digits
// are accepted; anything else, including a zero ID, is an error wrapping
// ErrInvalid.
func ParseMsgID(s string) (MsgID, error) {
	if len(s) != 8 {
		return 0, fmt.Errorf("%w: message ID %q: want 8 hex digits", ErrInvalid, s)
	}
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: message ID %q: want 8 hex digits", ErrInvalid, s)
	}
	m := MsgID(v)
	if err := m.Valid(); err != nil {
		return 0, err
	}
	return m, nil
}

// ParseEvpID parses the 16-hex-digit form of an envelope ID. Anything else,
// including an ID with a zero half, is an error wrapping ErrInvalid.
func ParseEvpID(s string) (EvpID, error) {
	if len(s) != 16 {
		return 0, fmt.Errorf("%w: envelope ID %q: want 16 hex digits", ErrInvalid, s)
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: envelope ID %q: want 16 hex digits", ErrInvalid, s)
	}
	e := EvpID(v)
	if err := e.Valid(); err != nil {
		return 0, err
	}
	return e, nil
}

// ParseID parses either form: 8 hex digits give a MsgID (with a zero EvpID),
// 16 give an EvpID (and its MsgID). It is meant for tools that accept both.
func ParseID(s string) (MsgID, EvpID, error) {
	switch len(s) {
	case 8:
		m, err := ParseMsgID(s)
		return m, 0, err
	case 16:
		e, err := ParseEvpID(s)
		return e.MsgID(), e, err
	}
	return 0, 0, fmt.Errorf("%w: ID %q: want 8 (message) or 16 (envelope) hex digits", ErrInvalid, s)
}

// MarshalText implements encoding.TextMarshaler: the hex form.
func (m MsgID) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseMsgID.
func (m *MsgID) UnmarshalText(b []byte) error {
	v, err := ParseMsgID(string(b))
	*m = v
	return err
}

// MarshalText implements encoding.TextMarshaler: the hex form.
func (e EvpID) MarshalText() ([]byte, error) { return []byte(e.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseEvpID.
func (e *EvpID) UnmarshalText(b []byte) error {
	v, err := ParseEvpID(string(b))
	*e = v
	return err
}
