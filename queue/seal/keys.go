package seal

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// KeySize is the length of a key: 32 bytes, for AES-256.
const KeySize = 32

// IDSize is the length of a key ID in the header of a sealed object.
const IDSize = 8

// KeyID names a key without revealing it: the first IDSize bytes of
// HMAC-SHA256 keyed with the key over the text "mxq key id". Every sealed
// object records the ID of the key that sealed it, so that a Keyring
// finds the key to open it with and rotation needs no rewrite.
type KeyID [IDSize]byte

// String returns the ID in 16 hex digits, as logs and mxq print it.
func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// Key is a secret key with its ID. Its String method prints the ID only.
type Key struct {
	id     KeyID
	secret []byte
}

// NewKey returns the Key of secret, which must be KeySize bytes. The Key
// keeps a copy.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) != KeySize {
		return nil, fmt.Errorf("%w: a key is %d bytes, not %d", ErrConfig, KeySize, len(secret))
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("mxq key id"))
	k := &Key{secret: append([]byte(nil), secret...)}
	copy(k.id[:], m.Sum(nil))
	return k, nil
}

// ID returns the key's ID.
func (k *Key) ID() KeyID { return k.id }

// String returns "key " and the key's ID, never the secret, so that a Key
// can be logged safely.
func (k *Key) String() string { return "key " + k.id.String() }

// ParseKey reads a key as a key file or an environment variable holds it:
// exactly KeySize raw bytes, or 2*KeySize hex digits, optionally followed
// by a newline. Anything else is an error wrapping ErrConfig that does
// not quote the input.
func ParseKey(b []byte) (*Key, error) {
	if len(b) == KeySize {
		return NewKey(b)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if len(s) == 2*KeySize {
		if raw, err := hex.DecodeString(s); err == nil {
			return NewKey(raw)
		}
	}
	return nil, fmt.Errorf("%w: a key is %d random bytes, or %d hex digits; got %d bytes of something else", ErrConfig, KeySize, 2*KeySize, len(b))
}

// LoadKeyFile reads the key in the file at path (see ParseKey). A file
// that others than its owner may read or write is refused, as ssh refuses
// a private key that is not private.
func LoadKeyFile(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: key file: %w", ErrConfig, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: key file: %w", ErrConfig, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: key file %s has mode %v: it must be readable by its owner only (chmod 600)", ErrConfig, path, fi.Mode().Perm())
	}
	b := make([]byte, 2*KeySize+3)
	n, _ := f.Read(b)
	k, err := ParseKey(b[:n])
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// LoadKeyEnv reads the key in the environment variable name, in hex (see
// ParseKey). An unset or empty variable is an error wrapping ErrConfig.
func LoadKeyEnv(name string) (*Key, error) {
	v := os.Getenv(name)
	if v == "" {
		return nil, fmt.Errorf("%w: environment variable %s holds no key", ErrConfig, name)
	}
	k, err := ParseKey([]byte(v))
	if err != nil {
		return nil, fmt.Errorf("environment variable %s: %w", name, err)
	}
	return k, nil
}

// Keyring holds the current key, which seals every new object, and older
// keys, which only open objects sealed before a rotation. The zero value
// holds no key: it opens plain objects only.
type Keyring struct {
	current *Key
	keys    map[KeyID]*Key
}

// NewKeyring returns a Keyring that seals with current and opens with
// current and old. current may be nil: the Keyring then opens objects
// sealed with the old keys but cannot seal. Two keys with the same ID are
// the same key, and may be given twice.
func NewKeyring(current *Key, old ...*Key) *Keyring {
	r := &Keyring{current: current, keys: make(map[KeyID]*Key)}
	for _, k := range old {
		if k != nil {
			r.keys[k.id] = k
		}
	}
	if current != nil {
		r.keys[current.id] = current
	}
	return r
}

// Current returns the key that seals new objects, or nil.
func (r *Keyring) Current() *Key {
	if r == nil {
		return nil
	}
	return r.current
}

// Lookup returns the key with ID id, or nil.
func (r *Keyring) Lookup(id KeyID) *Key {
	if r == nil {
		return nil
	}
	return r.keys[id]
}

// Len returns the number of keys, current and old.
func (r *Keyring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.keys)
}

// The errors of this package. Errors that concern a stored object wrap
// ErrCorrupt (or, for an object sealed with a key that is not configured,
// ErrUnknownKey, which wraps it); errors of configuration wrap ErrConfig.
var (
	// ErrCorrupt: a sealed object fails authentication, is cut short,
	// has a bad header, or does not decompress. Package queue reports it
	// as queue.ErrCorrupt.
	ErrCorrupt = errors.New("sealed object does not verify")
	// ErrUnknownKey: an object was sealed with a key that the Keyring
	// does not hold. It wraps ErrCorrupt: the object cannot be read.
	ErrUnknownKey = fmt.Errorf("%w: sealed with a key that is not configured", ErrCorrupt)
	// ErrPlain: a plain object was read where Options.Require forbids
	// them. It wraps ErrCorrupt.
	ErrPlain = fmt.Errorf("%w: plain object where encryption is required", ErrCorrupt)
	// ErrConfig: keys or options are missing or malformed.
	ErrConfig = errors.New("encryption configuration")
)
