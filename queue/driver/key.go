package driver

import (
	"fmt"
	"strings"
)

// MaxKeyLength bounds a storage key, in bytes.
const MaxKeyLength = 1024

// ValidKey reports whether key may name a stored object, by the one rule
// that every adapter and the REST server apply: 1 to MaxKeyLength bytes of
// a-z 0-9 . _ - and "/", in at least two segments, none of them empty or
// starting with a dot (so no "." or "..", and names such as ".tmp" stay
// free for an adapter's own use). Every key that the Store computes is
// valid. A store never sees an invalid key: adapters refuse it with an
// error their ErrorCode maps to CodeInvalid, and the error wraps
// ErrInvalid.
func ValidKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty key", ErrInvalid)
	case len(key) > MaxKeyLength:
		return fmt.Errorf("%w: key of %d bytes exceeds %d", ErrInvalid, len(key), MaxKeyLength)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '/') {
			return fmt.Errorf("%w: key %q: byte %q not allowed; want a-z 0-9 . _ - /", ErrInvalid, key, c)
		}
	}
	segs := strings.Split(key, "/")
	if len(segs) < 2 {
		return fmt.Errorf("%w: key %q: want at least two segments, such as kind/name", ErrInvalid, key)
	}
	for _, s := range segs {
		if s == "" || s[0] == '.' {
			return fmt.Errorf("%w: key %q: a segment is empty or starts with a dot", ErrInvalid, key)
		}
	}
	return nil
}
