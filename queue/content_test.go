package queue

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"testing/iotest"
)

func withTrailer(t testing.TB, data []byte) []byte {
	b, err := io.ReadAll(newSealer(bytes.NewReader(data)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSealVerify(t *testing.T) {
	for _, n := range []int{0, 1, trailerSize - 1, trailerSize, trailerSize + 1, 100000} {
		data := bytes.Repeat([]byte{'x'}, n)
		sealed := withTrailer(t, data)
		if len(sealed) != n+trailerSize {
			t.Fatalf("sealed %d bytes into %d", n, len(sealed))
		}
		got, err := io.ReadAll(newVerifier(io.NopCloser(iotest.OneByteReader(bytes.NewReader(sealed))), "m"))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("verify %d bytes: %d bytes, %v", n, len(got), err)
		}
	}
}

func FuzzVerifier(f *testing.F) {
	f.Add([]byte("hello"), 3)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, data []byte, flip int) {
		sealed := withTrailer(t, data)
		got, err := io.ReadAll(newVerifier(io.NopCloser(bytes.NewReader(sealed)), "m"))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("intact content: %v", err)
		}
		if flip < 0 {
			flip = -flip
		}
		bad := bytes.Clone(sealed)
		bad[flip%len(bad)] ^= 1
		_, err = io.ReadAll(newVerifier(io.NopCloser(bytes.NewReader(bad)), "m"))
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flipped bit %d: %v", flip%len(bad), err)
		}
		// Any truncation is caught too.
		cut := sealed[:flip%len(sealed)]
		if _, err := io.ReadAll(newVerifier(io.NopCloser(bytes.NewReader(cut)), "m")); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("cut at %d: %v", len(cut), err)
		}
	})
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(&envHeader{Pending: 5, Holder: "n"}, []byte("data")))
	f.Add(encodeRecord(&envHeader{Block: 7, Alone: true, content: sealBytes([]byte("hello"))}, []byte("data")))
	f.Add([]byte("mxq-evp/1 {\"n\":40}\nshort"))
	f.Add([]byte("mxq-evp/2 {}\nno content"))
	f.Add([]byte("mxq-evp/1 {\"n\":36}\n" + string(make([]byte, 36))))
	f.Add([]byte("mxq-evp/1 {}\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, data, err := decodeRecord("k", b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		h2, data2, err := decodeRecord("k", encodeRecord(h, data))
		if err != nil || !reflect.DeepEqual(h2, h) || !bytes.Equal(data, data2) {
			t.Fatalf("re-encoding changed the record: %v", err)
		}
	})
}

// TestSealBytes: sealBytes writes what the streaming sealer writes, and
// leaves the bytes it was given as they were.
func TestSealBytes(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 4096, 100000} {
		b := bytes.Repeat([]byte("m"), n)
		want, err := io.ReadAll(newSealer(bytes.NewReader(b)))
		if err != nil {
			t.Fatal(err)
		}
		in := append(make([]byte, 0, n+trailerSize), b...)
		if got := sealBytes(in); !bytes.Equal(got, want) {
			t.Errorf("%d bytes: sealBytes differs from the sealer", n)
		}
		if !bytes.Equal(in, b) {
			t.Errorf("%d bytes: sealBytes changed its input", n)
		}
	}
}

// TestReadUpTo: a file is read whole into a buffer of its size with room
// for the trailer; any reader is read up to one byte past max.
func TestReadUpTo(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []int{0, 1, 100, 1000, 1001, 5000} {
		data := bytes.Repeat([]byte("x"), n)
		p := filepath.Join(dir, fmt.Sprint(n))
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		fb, ffits, ferr := readUpTo(f, 1000)
		f.Close()
		rb, rfits, rerr := readUpTo(iotest.OneByteReader(bytes.NewReader(data)), 1000)
		wantLen, wantFits := min(n, 1001), n <= 1000
		for _, c := range []struct {
			name string
			b    []byte
			fits bool
			err  error
		}{{"file", fb, ffits, ferr}, {"reader", rb, rfits, rerr}} {
			if c.err != nil || len(c.b) != wantLen || c.fits != wantFits || !bytes.Equal(c.b, data[:wantLen]) {
				t.Errorf("%s of %d bytes: %d bytes, fits %v, %v; want %d, %v", c.name, n, len(c.b), c.fits, c.err, wantLen, wantFits)
			}
		}
		if wantFits && cap(fb)-len(fb) < trailerSize {
			t.Errorf("file of %d bytes: no room left for the trailer (len %d, cap %d)", n, len(fb), cap(fb))
		}
	}
}
