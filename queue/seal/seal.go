// Package seal is the format of objects that package queue encrypts and
// compresses at rest: authenticated streaming encryption in segments
// (Tink's AES-GCM-HKDF streaming AEAD, with AES-256 keys), zstd
// compression before it, and keys named by ID so that a Keyring of the
// current and older keys opens every object. docs/encryption.md describes
// the format byte by byte.
//
// Programs use it to load keys (LoadKeyFile, LoadKeyEnv, NewKeyring) for
// queue.Options.Encryption, or not at all: the key_file parameter of a
// queue URL does the same. The Store seals and opens objects itself; Codec
// is for tools that read stored objects.
package seal

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/mxqueue/mxq/queue/driver"
	tink "github.com/tink-crypto/tink-go/v2/streamingaead/subtle"
)

// The header of a sealed object: Magic, the format version, a flag byte,
// and with FlagEncrypted, the KeyID.
const (
	Magic   = "\x00mxqs"
	Version = 1
	// FlagEncrypted: the payload is a streaming AEAD ciphertext, and the
	// header holds the key ID.
	FlagEncrypted = 1
	// FlagCompressed: the plaintext is a zstd stream.
	FlagCompressed = 2

	headerSize = len(Magic) + 2
)

// SegmentSize is the size of a ciphertext segment: each holds
// SegmentSize-16 bytes of plaintext and a 16-byte GCM tag; the first
// segment also holds the 40-byte stream header (length, salt, nonce
// prefix), and the last may be shorter.
const SegmentSize = 64 << 10

// sampleSize is how much plaintext Seal reads to decide whether
// compression pays. An object up to this size is compressed whole.
const sampleSize = 1 << 20

// Options configure a Codec.
type Options struct {
	// Keys seal and open objects. With no current key, objects are
	// written plain (or compressed only), and objects sealed with the
	// Keyring's older keys can still be read.
	Keys *Keyring
	// Compress compresses content with zstd before it is encrypted, for
	// the objects that shrink by at least 1/32.
	Compress bool
	// Require refuses plain objects: Open fails with ErrPlain on an
	// object that is not encrypted, and New fails without a current key.
	// Turn it on once every object of a queue is encrypted (see mxq
	// reseal), so that nobody with write access to the store can slip a
	// plain object in.
	Require bool
}

// A Codec seals and opens objects. It is safe for concurrent use.
type Codec struct {
	o      Options
	once   sync.Once
	enc    *zstd.Encoder // for EncodeAll, shared
	encErr error
	aeads  sync.Map // KeyID → *tink.AESGCMHKDF
}

// New returns a Codec. It fails with an error wrapping ErrConfig if
// opts.Require is set without a current key.
func New(opts Options) (*Codec, error) {
	if opts.Require && opts.Keys.Current() == nil {
		return nil, fmt.Errorf("%w: encryption is required, but no current key is configured", ErrConfig)
	}
	return &Codec{o: opts}, nil
}

// Options returns the Codec's options.
func (c *Codec) Options() Options { return c.o }

// Encrypts reports whether Seal encrypts.
func (c *Codec) Encrypts() bool { return c.o.Keys.Current() != nil }

func (c *Codec) aead(k *Key) (*tink.AESGCMHKDF, error) {
	if a, ok := c.aeads.Load(k.id); ok {
		return a.(*tink.AESGCMHKDF), nil
	}
	a, err := tink.NewAESGCMHKDF(k.secret, "SHA256", KeySize, SegmentSize, 0)
	if err != nil {
		return nil, err
	}
	c.aeads.Store(k.id, a)
	return a, nil
}

func (c *Codec) encoder() (*zstd.Encoder, error) {
	c.once.Do(func() {
		c.enc, c.encErr = zstd.NewWriter(nil, encoderOptions(2)...)
	})
	return c.enc, c.encErr
}

// encoderOptions are those of the zstd encoders: the default level, a
// window of sampleSize, and entropy coding of literals even in blocks
// without matches, which is what shrinks base64 attachments of data that
// does not compress (by about a quarter: 6 bits of every 8).
func encoderOptions(concurrency int) []zstd.EOption {
	return []zstd.EOption{
		zstd.WithEncoderConcurrency(concurrency),
		zstd.WithWindowSize(sampleSize),
		zstd.WithLowerEncoderMem(true),
		zstd.WithAllLitEntropyCompression(true),
	}
}

// aad binds a stream to the name of its object and to its header, so that
// an object moved to another name, or whose header was changed, fails
// authentication.
func aad(name string, header []byte) []byte {
	b := make([]byte, 0, 16+len(name)+len(header))
	b = append(b, "mxq-seal/1\x00"...)
	b = append(b, name...)
	b = append(b, 0)
	return append(b, header...)
}

// shrinks reports whether compression saved at least 1/32 of n bytes.
func shrinks(compressed, n int) bool { return compressed <= n-n/32 }

// Seal returns a reader of the stored form of the object name whose
// plaintext r yields, streaming in bounded memory: about two segments and
// the compression sample. compress says whether the object is one that
// may be compressed (message content). When the Codec neither encrypts
// nor compresses, the stored form is the plaintext itself. Errors of r
// are returned as they are.
func (c *Codec) Seal(name string, r io.Reader, compress bool) io.Reader {
	compress = compress && c.o.Compress
	if !compress && !c.Encrypts() {
		return r
	}
	return &sealReader{c: c, name: name, src: r, compress: compress}
}

// sealReader is the reader Seal returns. It pulls plaintext from src only
// as its reader asks for output, so no goroutine runs behind it.
type sealReader struct {
	c        *Codec
	name     string
	src      io.Reader
	compress bool
	started  bool
	out      bytes.Buffer
	chain    []io.WriteCloser // the writers, head first; closed in order at the end
	buf      []byte
	done     bool
	err      error
}

func (s *sealReader) Read(p []byte) (int, error) {
	for {
		if s.out.Len() > 0 {
			return s.out.Read(p)
		}
		if s.err != nil {
			return 0, s.err
		}
		if s.done {
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		if !s.started {
			s.started = true
			if err := s.start(); err != nil {
				s.err = err
			}
			continue
		}
		if s.buf == nil {
			s.buf = make([]byte, SegmentSize)
		}
		n, err := driver.ReadFull(s.src, s.buf)
		if n > 0 {
			if _, werr := s.chain[0].Write(s.buf[:n]); werr != nil {
				s.err = werr
				continue
			}
		}
		switch {
		case err == io.EOF:
			s.finish()
		case err != nil:
			s.err = err
		}
	}
}

// start reads the sample if the object may be compressed, decides on
// compression, and writes the header and the sample into the chain.
func (s *sealReader) start() error {
	var sample []byte
	last := false
	if s.compress {
		var err error
		if sample, last, err = driver.ReadChunk(s.src, nil, sampleSize, -1); err != nil {
			return err
		}
	}
	flags := byte(0)
	first := sample
	zstream := false
	if s.compress {
		enc, err := s.c.encoder()
		if err != nil {
			return err
		}
		z := enc.EncodeAll(sample, nil)
		if shrinks(len(z), len(sample)) {
			flags |= FlagCompressed
			if last {
				first = z
			} else {
				zstream = true
			}
		}
	}
	key := s.c.o.Keys.Current()
	if key != nil {
		flags |= FlagEncrypted
	}
	if flags == 0 {
		// Nothing pays: the stored form is the plaintext.
		s.out.Write(sample)
		s.chain = []io.WriteCloser{nopCloser{&s.out}}
		if last {
			s.done = true
		}
		return nil
	}
	hdr := append([]byte(Magic), Version, flags)
	if key != nil {
		id := key.ID()
		hdr = append(hdr, id[:]...)
	}
	s.out.Write(hdr)
	var w io.WriteCloser = nopCloser{&s.out}
	if key != nil {
		a, err := s.c.aead(key)
		if err != nil {
			return err
		}
		ew, err := a.NewEncryptingWriter(&s.out, aad(s.name, hdr))
		if err != nil {
			return err
		}
		w = ew
		s.chain = append(s.chain, ew)
	}
	if zstream {
		zw, err := zstd.NewWriter(w, encoderOptions(1)...)
		if err != nil {
			return err
		}
		s.chain = append([]io.WriteCloser{zw}, s.chain...)
	}
	if len(s.chain) == 0 {
		s.chain = []io.WriteCloser{nopCloser{&s.out}}
	}
	if _, err := s.chain[0].Write(first); err != nil {
		return err
	}
	if last {
		s.finish()
	}
	return nil
}

func (s *sealReader) finish() {
	for _, w := range s.chain {
		if err := w.Close(); err != nil && s.err == nil {
			s.err = err
		}
	}
	s.done = true
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Header describes a stored object as its first bytes tell.
type Header struct {
	// Sealed says the object has a seal header; a plain object has none.
	Sealed     bool
	Encrypted  bool
	Compressed bool
	// Key is the ID of the key that sealed it, if Encrypted.
	Key KeyID
}

// ParseHeader reads the header at the start of a stored object from b,
// which holds at least its first 15 bytes (or the whole object if
// shorter). It is for tools that survey a store, such as mxq reseal.
func ParseHeader(b []byte) (Header, error) { return parseHeader(b, true) }

// parseHeader parses a header; without withID, the bytes of a key ID
// after the fixed part are not read.
func parseHeader(b []byte, withID bool) (Header, error) {
	if len(b) < headerSize || string(b[:len(Magic)]) != Magic {
		return Header{}, nil
	}
	h := Header{Sealed: true}
	if b[len(Magic)] != Version {
		return h, fmt.Errorf("%w: unknown format version %d", ErrCorrupt, b[len(Magic)])
	}
	f := b[len(Magic)+1]
	if f&^(FlagEncrypted|FlagCompressed) != 0 || f == 0 {
		return h, fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, f)
	}
	h.Encrypted, h.Compressed = f&FlagEncrypted != 0, f&FlagCompressed != 0
	if h.Encrypted && withID {
		if len(b) < headerSize+IDSize {
			return h, fmt.Errorf("%w: header cut short", ErrCorrupt)
		}
		copy(h.Key[:], b[headerSize:])
	}
	return h, nil
}

// Open returns a reader of the plaintext of the object name, whose stored
// form rc yields, and closes rc when it is closed, with the object's
// header. A plain object is
// returned as it is, unless the Codec requires encryption (ErrPlain).
// Failures of rc itself are returned as they are; every other failure
// (authentication, truncation, reordering, a bad header, a key that is not
// configured, zstd) is an error wrapping ErrCorrupt, returned by Open or
// by a Read, never as io.EOF, so that no unverified plaintext is taken
// for the whole object. Each segment is verified before its plaintext is
// returned.
func (c *Codec) Open(name string, rc io.ReadCloser) (io.ReadCloser, Header, error) {
	raw := &track{r: rc}
	hb := make([]byte, headerSize, headerSize+IDSize)
	n, err := driver.ReadFull(raw, hb)
	if err != nil && err != io.EOF {
		return nil, Header{}, err
	}
	hb = hb[:n]
	h, err := parseHeader(hb, false)
	if err != nil {
		return nil, h, fmt.Errorf("object %s: %w", name, err)
	}
	if !h.Sealed {
		if c.o.Require {
			return nil, h, fmt.Errorf("object %s: %w", name, ErrPlain)
		}
		return readCloser{io.MultiReader(bytes.NewReader(hb), raw), rc.Close}, h, nil
	}
	if c.o.Require && !h.Encrypted {
		return nil, h, fmt.Errorf("object %s: %w", name, ErrPlain)
	}
	var r io.Reader = raw
	if h.Encrypted {
		hb = hb[:headerSize+IDSize]
		if _, err := driver.ReadFull(raw, hb[headerSize:]); err != nil {
			return nil, h, c.fail(name, raw, err)
		}
		copy(h.Key[:], hb[headerSize:])
		k := c.o.Keys.Lookup(h.Key)
		if k == nil {
			if c.o.Keys.Len() == 0 {
				return nil, h, fmt.Errorf("object %s: %w (%s); no key is configured", name, ErrUnknownKey, h.Key)
			}
			return nil, h, fmt.Errorf("object %s: %w (%s)", name, ErrUnknownKey, h.Key)
		}
		a, err := c.aead(k)
		if err != nil {
			return nil, Header{}, err
		}
		dr, err := a.NewDecryptingReader(raw, aad(name, hb))
		if err != nil {
			return nil, h, c.fail(name, raw, err)
		}
		r = &verified{r: dr, raw: raw, name: name}
	}
	if h.Compressed {
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(8<<20))
		if err != nil {
			return nil, Header{}, err
		}
		return readCloser{&verified{r: zr, raw: raw, name: name}, func() error { zr.Close(); return rc.Close() }}, h, nil
	}
	return readCloser{r, rc.Close}, h, nil
}

// fail returns the error of rc if it failed, and otherwise err as
// ErrCorrupt.
func (c *Codec) fail(name string, raw *track, err error) error {
	if raw.err != nil {
		return raw.err
	}
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	return fmt.Errorf("object %s: %w: %v", name, ErrCorrupt, err)
}

// track remembers the first error of r other than io.EOF, to tell a
// failing store from a failing ciphertext.
type track struct {
	r   io.Reader
	err error
}

func (t *track) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF && t.err == nil {
		t.err = err
	}
	return n, err
}

// verified turns the errors of a decrypting or decompressing reader into
// ErrCorrupt, unless the store under it failed.
type verified struct {
	r    io.Reader
	raw  *track
	name string
}

func (v *verified) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	if err != nil && err != io.EOF {
		if v.raw.err != nil {
			return n, v.raw.err
		}
		if !errors.Is(err, ErrCorrupt) {
			err = fmt.Errorf("object %s: %w: %v", v.name, ErrCorrupt, err)
		}
	}
	return n, err
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }
