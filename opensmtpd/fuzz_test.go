package opensmtpd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"
)

// FuzzDecode checks the frame decoder on arbitrary bytes: it never panics,
// accepts only lengths within bounds, and what it accepts re-encodes to the
// same header bytes.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{reqInit, reqWalk, reqMessageCreate, reqCommit68, reqCommit77, reqFdR,
		reqEnvelopeDelete, reqEnvelopeLoad, reqClose, reqEnvelopeCreate} {
		f.Add(hx(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if h.len < HeaderSize || h.len > MaxMessageSize {
			t.Fatalf("accepted len %d", h.len)
		}
		enc := appendHeader(nil, h.format, h.typ, int(h.len), h.hasFD, h.pid)
		if !bytes.Equal(enc[:8], b[:8]) || !bytes.Equal(enc[12:16], b[12:16]) {
			t.Fatalf("header % x re-encodes as % x", b[:16], enc)
		}
		if int(h.len) > len(b) {
			return
		}
		req, err := decodeRequest(h, b[HeaderSize:h.len])
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if req.typ != h.typ || req.typ < TypeInit || req.typ > TypeEnvelopeWalk {
			t.Fatalf("accepted type %d", req.typ)
		}
	})
}

// FuzzServe feeds arbitrary bytes, in arbitrary pieces, to Serve over a
// real socketpair. Serve must end without panicking and every reply it
// sends must be a well-formed OK message within the size cap.
func FuzzServe(f *testing.F) {
	trace := bytes.Join([][]byte{hx(f, reqInit), hx(f, reqWalk), hx(f, reqMessageCreate),
		append(hx(f, reqEnvelopeCreate), traceEnvelope...), hx(f, reqEnvelopeLoad), hx(f, reqFdR),
		hx(f, reqEnvelopeDelete), hx(f, reqClose)}, nil)
	f.Add(trace, uint16(7))
	f.Add(hx(f, reqInit+reqCommit68), uint16(0))
	f.Add(hx(f, reqInit+reqCommit77), uint16(3))
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		sc, pc := socketpair(t)
		defer sc.Close()
		defer pc.Close()
		m := traceHandler()
		m.msgids = []uint32{1, 2, 3}
		m.evpids = []uint64{1 << 32, 2 << 32, 3 << 32}
		done := make(chan error, 1)
		go func() {
			done <- Serve(t.Context(), sc, m, &ServeOptions{
				OpTimeout:    time.Second,
				Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
				HeaderFormat: Header68,
			})
			sc.Close()
		}()
		replies := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(pc)
			replies <- b
		}()
		go func() {
			k := int(split)
			if k > len(in) {
				k = len(in)
			}
			pc.Write(in[:k])
			pc.Write(in[k:])
			pc.CloseWrite()
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return")
		}
		out := <-replies
		for len(out) > 0 {
			if len(out) < HeaderSize {
				t.Fatalf("truncated reply % x", out)
			}
			typ := binary.LittleEndian.Uint32(out)
			n := binary.LittleEndian.Uint32(out[4:])
			if typ != 0 || n < HeaderSize || n > MaxMessageSize || int(n) > len(out) {
				t.Fatalf("bad reply header % x", out[:HeaderSize])
			}
			out = out[n:]
		}
	})
}
