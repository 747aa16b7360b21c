package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
	"github.com/mxqueue/mxq/queue/seal"
)

// Encryption configures encryption and compression at rest (see
// Options.Encryption and docs/encryption.md). It is seal.Options: the
// keys, whether to compress content, and whether plain objects are
// refused.
type Encryption = seal.Options

// What the sealing Backend does with each kind of object. Message content
// and envelopes hold the mail: they are encrypted, and may be compressed
// (an envelope holds a small message's content, Options.InlineContent,
// and smtpd's envelopes are text). Block records, reservations, heartbeats, claim and due pointers and
// quarantine records hold only IDs, node names, states and times, which
// the keys of the objects reveal anyway; they stay plain, so that every
// node can read the queue's bookkeeping at the cost of no cryptography on
// the commit point.
//
// name is the name that the seal binds the object to: its key, except
// that a quarantined object is bound to the key it had in the queue, so
// that Quarantine moves it as it is stored, even when it no longer
// verifies.
func sealClass(key string) (name string, sealed, compress bool) {
	h, err := layout.Parse(key)
	if err != nil {
		return "", false, false
	}
	switch h.Kind {
	case layout.Content:
		return key, true, true
	case layout.QuarantineContent:
		return layout.Key(layout.Handle{Kind: layout.Content, Msg: h.Msg}), true, true
	case layout.Envelope:
		return key, true, true
	case layout.QuarantineEnvelope:
		return layout.Key(layout.Handle{Kind: layout.Envelope, Evp: h.Evp}), true, true
	}
	return "", false, false
}

// stored returns the Backend that holds objects as they are stored: the
// one under the seal, if any.
func (s *Store) stored() driver.Backend {
	if sb, ok := s.b.(*sealedBackend); ok {
		return sb.b
	}
	return s.b
}

// Sealed returns a Backend that encrypts and compresses the objects of b
// that hold mail, as e configures, and reads both sealed and plain ones.
// e may be nil: objects are then written plain, and reading a sealed one
// is an error wrapping ErrCorrupt that names its key ID. New always puts
// it over its Backend; tools use it to read a store's objects as the
// Store does. Its Get reports Size -1 for sealed objects, and so does its
// Stat for the objects it would seal, when e encrypts or compresses. It
// fails with an error wrapping ErrInvalid when the configuration is
// inconsistent (Require without a current key).
func Sealed(b driver.Backend, e *Encryption) (driver.Backend, error) {
	var o Encryption
	if e != nil {
		o = *e
	}
	c, err := seal.New(o)
	if err != nil {
		return nil, &Error{Op: "new", Kind: ErrInvalid, Err: err}
	}
	return &sealedBackend{b: b, c: c, seals: c.Encrypts() || o.Compress}, nil
}

type sealedBackend struct {
	b     driver.Backend
	c     *seal.Codec
	seals bool // whether Put seals anything: Stat sizes are then unknown
}

var (
	_ driver.Backend = (*sealedBackend)(nil)
	_ driver.Stater  = (*sealedBackend)(nil)
	_ driver.Pinger  = (*sealedBackend)(nil)

	_ driver.MultiDeleter       = (*sealedBackend)(nil)
	_ driver.ConditionalDeleter = (*sealedBackend)(nil)
)

// corrupt makes a seal error one that wraps ErrCorrupt.
func corrupt(err error) error {
	if err != nil && errors.Is(err, seal.ErrCorrupt) && !errors.Is(err, ErrCorrupt) {
		return &corruptError{err}
	}
	return err
}

// corruptError is a seal error that also wraps ErrCorrupt, with the seal
// error's message alone.
type corruptError struct{ err error }

func (e *corruptError) Error() string   { return e.err.Error() }
func (e *corruptError) Unwrap() []error { return []error{ErrCorrupt, e.err} }

func (s *sealedBackend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	rc, a, err := s.b.Get(ctx, key)
	if err != nil {
		return rc, a, err
	}
	name, sealed, _ := sealClass(key)
	if !sealed {
		return rc, a, nil
	}
	prc, h, err := s.c.Open(name, rc)
	if err != nil {
		rc.Close()
		return nil, a, corrupt(err)
	}
	if h.Sealed {
		a.Size = -1
	}
	return &corruptReader{prc}, a, nil
}

// corruptReader reports seal errors as ErrCorrupt.
type corruptReader struct{ io.ReadCloser }

func (r *corruptReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	return n, corrupt(err)
}

func (s *sealedBackend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	name, sealed, compress := sealClass(key)
	if !sealed {
		return s.b.Put(ctx, key, r, opts)
	}
	o := *opts
	o.Size = -1
	return s.b.Put(ctx, key, s.c.Seal(name, r, compress), &o)
}

func (s *sealedBackend) Delete(ctx context.Context, key string) error { return s.b.Delete(ctx, key) }

func (s *sealedBackend) DeleteMulti(ctx context.Context, keys []string) error {
	return driver.DeleteMulti(ctx, s.b, keys)
}

func (s *sealedBackend) DeleteIfMatch(ctx context.Context, key string, v driver.Version) error {
	return driver.DeleteIfMatch(ctx, s.b, key, v)
}

func (s *sealedBackend) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	return s.b.List(ctx, prefix, startAfter, limit)
}

func (s *sealedBackend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	var a driver.Attrs
	if st, ok := s.b.(driver.Stater); ok {
		var err error
		if a, err = st.Stat(ctx, key); err != nil {
			return a, err
		}
	} else {
		rc, ra, err := s.b.Get(ctx, key)
		if err != nil {
			return ra, err
		}
		rc.Close()
		a = ra
	}
	if _, sealed, _ := sealClass(key); sealed && s.seals {
		a.Size = -1
	}
	return a, nil
}

func (s *sealedBackend) Ping(ctx context.Context) error {
	if p, ok := s.b.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	_, _, err := s.b.List(ctx, layout.Key(layout.Handle{Kind: layout.Reservation}), "", 1)
	return err
}

func (s *sealedBackend) ErrorCode(err error) driver.Code {
	switch {
	case errors.Is(err, seal.ErrCorrupt):
		return driver.CodeCorrupt
	case errors.Is(err, seal.ErrConfig):
		return driver.CodeInvalid
	}
	return s.b.ErrorCode(err)
}

func (s *sealedBackend) Close() error { return s.b.Close() }

// Unwrap returns the Backend under the seal, which stores objects as they
// are sealed.
func (s *sealedBackend) Unwrap() driver.Backend { return s.b }

// The query parameters of a queue URL that configure encryption for every
// scheme. URLMux.OpenOptions takes them out of the URL before the
// scheme's opener sees it. They name key files and environment variables,
// never keys.
const (
	// ParamKeyFile names the file of the current key: 32 random bytes,
	// or 64 hex digits. It must be readable by its owner only.
	ParamKeyFile = "key_file"
	// ParamKeyEnv names an environment variable that holds the current
	// key in hex, instead of a key file.
	ParamKeyEnv = "key_env"
	// ParamOldKeyFiles names, separated by commas, the files of older
	// keys, which open objects sealed before a rotation.
	ParamOldKeyFiles = "old_key_files"
	// ParamCompress compresses content with zstd where it pays (true or
	// false).
	ParamCompress = "compress"
	// ParamRequireEncryption refuses plain content and envelopes (true or
	// false).
	ParamRequireEncryption = "require_encryption"
)

var encryptionParams = []string{ParamKeyFile, ParamKeyEnv, ParamOldKeyFiles, ParamCompress, ParamRequireEncryption}

// EncryptionFromURL takes the encryption parameters out of u's query and
// returns the configuration they give, loading the keys, or nil when u has
// none. Bad parameters and keys that cannot be loaded are errors wrapping
// ErrInvalid; they never quote a key.
func EncryptionFromURL(u *url.URL) (*Encryption, error) {
	q := u.Query()
	p := make(map[string]string)
	for _, k := range encryptionParams {
		if vs, ok := q[k]; ok {
			if len(vs) != 1 {
				return nil, errorf("open", u.Redacted(), ErrInvalid, "query parameter %q given %d times", k, len(vs))
			}
			p[k] = vs[0]
			q.Del(k)
		}
	}
	if len(p) == 0 {
		return nil, nil
	}
	u.RawQuery = q.Encode()
	bad := func(err error) error { return &Error{Op: "open", ID: u.Redacted(), Kind: ErrInvalid, Err: err} }
	e := &Encryption{}
	var err error
	if e.Compress, err = driver.ParseBool(ParamCompress, p[ParamCompress], false); err != nil {
		return nil, bad(err)
	}
	if e.Require, err = driver.ParseBool(ParamRequireEncryption, p[ParamRequireEncryption], false); err != nil {
		return nil, bad(err)
	}
	var cur *seal.Key
	switch f, env := p[ParamKeyFile], p[ParamKeyEnv]; {
	case f != "" && env != "":
		return nil, bad(fmt.Errorf("%s and %s together: give one current key", ParamKeyFile, ParamKeyEnv))
	case f != "":
		cur, err = seal.LoadKeyFile(f)
	case env != "":
		cur, err = seal.LoadKeyEnv(env)
	}
	if err != nil {
		return nil, bad(err)
	}
	var old []*seal.Key
	if v := p[ParamOldKeyFiles]; v != "" {
		for _, f := range strings.Split(v, ",") {
			k, err := seal.LoadKeyFile(f)
			if err != nil {
				return nil, bad(err)
			}
			old = append(old, k)
		}
	}
	if cur != nil || len(old) > 0 {
		e.Keys = seal.NewKeyring(cur, old...)
	}
	if _, err := seal.New(*e); err != nil {
		return nil, bad(err)
	}
	return e, nil
}

// encryptionOptions applies the encryption parameters of u to opts,
// returning opts itself or a copy. Setting encryption both in the URL and
// in opts is an error wrapping ErrInvalid.
func encryptionOptions(u *url.URL, opts *Options) (*Options, error) {
	e, err := EncryptionFromURL(u)
	if err != nil || e == nil {
		return opts, err
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Encryption != nil {
		return nil, errorf("open", u.Redacted(), ErrInvalid, "encryption is configured both in the URL and in the options")
	}
	o.Encryption = e
	return &o, nil
}
