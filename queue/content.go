package queue

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
)

// Content is stored as the message bytes followed by a trailer of
// trailerSize bytes: the magic "MXQ1", the length of the message as a
// big-endian uint64, and the SHA-256 of the message. Keeping the checksum
// in the object itself needs no second write and works the same on every
// store, including streamed uploads whose length is not known up front.
const (
	trailerMagic = "MXQ1"
	trailerSize  = 4 + 8 + sha256.Size
)

// sealer reads r and appends the trailer at its end.
type sealer struct {
	r       io.Reader
	h       hash.Hash
	n       int64
	trailer []byte
	err     error
}

func newSealer(r io.Reader) *sealer { return &sealer{r: r, h: sha256.New()} }

func (s *sealer) Read(p []byte) (int, error) {
	if s.trailer == nil {
		n, err := s.r.Read(p)
		s.h.Write(p[:n])
		s.n += int64(n)
		if err == io.EOF {
			t := make([]byte, 0, trailerSize)
			t = append(t, trailerMagic...)
			t = binary.BigEndian.AppendUint64(t, uint64(s.n))
			s.trailer = s.h.Sum(t)
			err = nil
			if n == 0 {
				return s.Read(p)
			}
		}
		if err != nil {
			s.err = err
		}
		return n, err
	}
	if len(s.trailer) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.trailer)
	s.trailer = s.trailer[n:]
	return n, nil
}

// verifier returns the message bytes of a stored content object, holding
// back the last trailerSize bytes, and checks them at the end. A mismatch
// or a short object is an error wrapping ErrCorrupt, returned instead of
// io.EOF.
type verifier struct {
	rc   io.ReadCloser
	h    hash.Hash
	n    int64
	buf  []byte // bytes read but not yet returned; the tail may be the trailer
	eof  bool
	err  error
	name string
}

func newVerifier(rc io.ReadCloser, name string) *verifier {
	return &verifier{rc: rc, h: sha256.New(), buf: make([]byte, 0, 64<<10), name: name}
}

func (v *verifier) Read(p []byte) (int, error) {
	for {
		if v.err != nil {
			return 0, v.err
		}
		// Bytes beyond the last trailerSize are surely message bytes.
		if avail := len(v.buf) - trailerSize; avail > 0 {
			n := copy(p, v.buf[:avail])
			v.h.Write(p[:n])
			v.n += int64(n)
			v.buf = append(v.buf[:0], v.buf[n:]...)
			return n, nil
		}
		if v.eof {
			v.err = v.check()
			return 0, v.err
		}
		if len(p) == 0 {
			return 0, nil
		}
		// Fill: keep the held-back tail and read more after it.
		if cap(v.buf)-len(v.buf) < 4096 {
			nb := make([]byte, len(v.buf), 2*cap(v.buf))
			copy(nb, v.buf)
			v.buf = nb
		}
		n, err := v.rc.Read(v.buf[len(v.buf):cap(v.buf)])
		v.buf = v.buf[:len(v.buf)+n]
		if err == io.EOF {
			v.eof = true
		} else if err != nil {
			v.err = err
			return 0, err
		}
	}
}

func (v *verifier) check() error {
	t := v.buf
	if len(t) != trailerSize || string(t[:4]) != trailerMagic {
		return fmt.Errorf("%w: content of %s has no valid trailer", ErrCorrupt, v.name)
	}
	if n := binary.BigEndian.Uint64(t[4:12]); n != uint64(v.n) {
		return fmt.Errorf("%w: content of %s: %d bytes stored, trailer says %d", ErrCorrupt, v.name, v.n, n)
	}
	if !bytes.Equal(v.h.Sum(nil), t[12:]) {
		return fmt.Errorf("%w: content of %s fails its SHA-256 checksum", ErrCorrupt, v.name)
	}
	return io.EOF
}

func (v *verifier) Close() error { return v.rc.Close() }
