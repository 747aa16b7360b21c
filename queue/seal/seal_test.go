package seal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

func key(t testing.TB, b byte) *Key {
	t.Helper()
	k, err := NewKey(bytes.Repeat([]byte{b}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func codec(t testing.TB, o Options) *Codec {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func seal(t testing.TB, c *Codec, name string, data []byte, compress bool) []byte {
	t.Helper()
	b, err := io.ReadAll(c.Seal(name, bytes.NewReader(data), compress))
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	return b
}

func open(c *Codec, name string, stored []byte) ([]byte, error) {
	rc, _, err := c.Open(name, io.NopCloser(bytes.NewReader(stored)))
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// mail is text that compresses, of n bytes.
func mail(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.WriteString("Received: from mx.example.org by mx2.example.net; line ")
		b.WriteString(strings.Repeat("abc", i%7))
		b.WriteString("\r\n")
	}
	return b.Bytes()[:n]
}

func noise(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestRoundTrip(t *testing.T) {
	k := key(t, 1)
	for _, tc := range []struct {
		name     string
		o        Options
		compress bool
		data     []byte
		sealed   bool // a header is expected
		smaller  bool // the stored form is smaller than the data
	}{
		{"encrypt empty", Options{Keys: NewKeyring(k)}, false, nil, true, false},
		{"encrypt small", Options{Keys: NewKeyring(k)}, false, mail(100), true, false},
		{"encrypt one segment", Options{Keys: NewKeyring(k)}, false, noise(SegmentSize - 16 - 40), true, false},
		{"encrypt segment plus one", Options{Keys: NewKeyring(k)}, false, noise(SegmentSize - 16 - 39), true, false},
		{"encrypt many segments", Options{Keys: NewKeyring(k)}, false, noise(5*SegmentSize + 17), true, false},
		{"encrypt beyond sample", Options{Keys: NewKeyring(k)}, false, noise(sampleSize + 3*SegmentSize), true, false},
		{"compress small text", Options{Keys: NewKeyring(k), Compress: true}, true, mail(20000), true, true},
		{"compress large text streams", Options{Keys: NewKeyring(k), Compress: true}, true, mail(sampleSize*2 + 5), true, true},
		{"compress noise is not kept", Options{Keys: NewKeyring(k), Compress: true}, true, noise(30000), true, false},
		{"compress only, no key", Options{Compress: true}, true, mail(20000), true, true},
		{"noise, no key: plain", Options{Compress: true}, true, noise(3000), false, false},
		{"compression not asked for this object", Options{Compress: true}, false, mail(3000), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := codec(t, tc.o)
			stored := seal(t, c, "msg/01/01020304", tc.data, tc.compress)
			h, err := ParseHeader(stored)
			if err != nil {
				t.Fatal(err)
			}
			if h.Sealed != tc.sealed {
				t.Fatalf("sealed = %v, want %v", h.Sealed, tc.sealed)
			}
			if h.Encrypted != (tc.o.Keys.Current() != nil) {
				t.Fatalf("encrypted = %v", h.Encrypted)
			}
			if tc.sealed && !h.Encrypted && bytes.Contains(stored, tc.data[:64]) {
				t.Fatal("compressed form holds the plaintext")
			}
			if h.Encrypted && len(tc.data) >= 64 && bytes.Contains(stored, tc.data[:64]) {
				t.Fatal("ciphertext holds the plaintext")
			}
			if got := len(stored) < len(tc.data); got != tc.smaller {
				t.Fatalf("stored %d bytes of %d", len(stored), len(tc.data))
			}
			got, err := open(c, "msg/01/01020304", stored)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.data) {
				t.Fatalf("round trip: got %d bytes, want %d", len(got), len(tc.data))
			}
		})
	}
}

func TestTamper(t *testing.T) {
	k := key(t, 1)
	c := codec(t, Options{Keys: NewKeyring(k), Compress: true})
	for _, data := range [][]byte{mail(3000), noise(3*SegmentSize + 100), mail(sampleSize + 2*SegmentSize)} {
		stored := seal(t, c, "evp/01/01020304/0102030405060708", data, true)
		seed := mrand.Uint64()
		t.Logf("seed %d", seed)
		rnd := mrand.New(mrand.NewPCG(seed, 0))
		positions := []int{0, 5, 6, 7, 14, 15, 20, 55, len(stored) - 1, len(stored) / 2}
		for range 20 {
			positions = append(positions, rnd.IntN(len(stored)))
		}
		for _, i := range positions {
			bad := bytes.Clone(stored)
			bad[i] ^= 1 << rnd.IntN(8)
			got, err := open(c, "evp/01/01020304/0102030405060708", bad)
			if i < len(Magic) {
				// No magic: the object reads as plain, and is returned as
				// it is, never as the plaintext. (Package queue then finds
				// no content trailer or envelope header: ErrCorrupt.)
				if err != nil || !bytes.Equal(got, bad) {
					t.Fatalf("flip at %d: err %v", i, err)
				}
				continue
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip at %d of %d: err %v, want ErrCorrupt", i, len(stored), err)
			}
		}
	}
}

func TestTruncateReorderSplice(t *testing.T) {
	k := key(t, 1)
	c := codec(t, Options{Keys: NewKeyring(k)})
	name := "msg/01/01020304"
	data := noise(4 * SegmentSize)
	stored := seal(t, c, name, data, false)
	hdr := headerSize + IDSize + 40
	seg := func(i int) (int, int) { // the bounds of ciphertext segment i
		start := hdr + i*SegmentSize - 40
		if i == 0 {
			start = hdr
		}
		return start, min(hdr+(i+1)*SegmentSize-40, len(stored))
	}
	s1a, s1b := seg(1)
	s2a, s2b := seg(2)
	other := seal(t, c, name, noise(4*SegmentSize), false)
	for _, tc := range []struct {
		name   string
		stored []byte
	}{
		{"header only", stored[:headerSize+IDSize]},
		{"stream header only", stored[:hdr]},
		{"cut at a segment boundary", stored[:s2a]},
		{"cut mid-segment", stored[:s2a+100]},
		{"last byte missing", stored[:len(stored)-1]},
		{"last segment dropped", stored[:seg1End(seg, 4)]},
		{"segments swapped", concat(stored[:s1a], stored[s2a:s2b], stored[s1a:s1b], stored[s2b:])},
		{"segment duplicated", concat(stored[:s2b], stored[s1a:s1b], stored[s2b:])},
		{"segment from another object", concat(stored[:s1a], other[s1a:s1b], stored[s1b:])},
		{"extra bytes", concat(stored, []byte("x"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := open(c, name, tc.stored)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %d bytes, err %v, want ErrCorrupt", len(got), err)
			}
		})
	}
	t.Run("another name", func(t *testing.T) {
		if _, err := open(c, "msg/01/01020305", stored); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("err %v, want ErrCorrupt", err)
		}
	})
}

// seg1End returns the end of the second-to-last of n segments.
func seg1End(seg func(int) (int, int), n int) int {
	_, e := seg(n - 2)
	return e
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestKeys(t *testing.T) {
	k1, k2, k3 := key(t, 1), key(t, 2), key(t, 3)
	name := "msg/01/01020304"
	data := mail(5000)
	old := seal(t, codec(t, Options{Keys: NewKeyring(k1)}), name, data, false)
	plain := data
	for _, tc := range []struct {
		name    string
		o       Options
		stored  []byte
		want    error
		wantErr string
	}{
		{"rotated: old key reads", Options{Keys: NewKeyring(k2, k1)}, old, nil, ""},
		{"old key only, read-only", Options{Keys: NewKeyring(nil, k1)}, old, nil, ""},
		{"wrong key", Options{Keys: NewKeyring(k3)}, old, ErrUnknownKey, k1.ID().String()},
		{"no key at all", Options{}, old, ErrUnknownKey, "no key is configured"},
		{"mixed store: plain reads", Options{Keys: NewKeyring(k2)}, plain, nil, ""},
		{"required: plain refused", Options{Keys: NewKeyring(k2), Require: true}, plain, ErrPlain, ""},
		{"required: old key reads", Options{Keys: NewKeyring(k2, k1), Require: true}, old, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := open(codec(t, tc.o), name, tc.stored)
			if tc.want == nil {
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("err %v, %d bytes", err, len(got))
				}
				return
			}
			if !errors.Is(err, tc.want) || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("a key with the same bytes under another ID cannot exist", func(t *testing.T) {
		if k1.ID() == k2.ID() || key(t, 1).ID() != k1.ID() {
			t.Fatal("key IDs are not a function of the key")
		}
	})
	t.Run("required without current key", func(t *testing.T) {
		if _, err := New(Options{Keys: NewKeyring(nil, k1), Require: true}); !errors.Is(err, ErrConfig) {
			t.Fatalf("err %v, want ErrConfig", err)
		}
	})
	t.Run("String hides the secret", func(t *testing.T) {
		if s := k1.String(); strings.Contains(s, "0101") || !strings.Contains(s, k1.ID().String()) {
			t.Fatalf("String() = %q", s)
		}
	})
}

// failReader fails after n bytes with err.
type failReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func TestStoreErrorsPassThrough(t *testing.T) {
	c := codec(t, Options{Keys: NewKeyring(key(t, 1)), Compress: true})
	boom := errors.New("connection reset")
	for _, compress := range []bool{false, true} {
		stored := seal(t, c, "msg/01/01020304", mail(sampleSize+5*SegmentSize), compress)
		for _, at := range []int{3, 20, SegmentSize + 5, len(stored) - 10} {
			if at >= len(stored) {
				continue
			}
			rc, _, err := c.Open("msg/01/01020304", io.NopCloser(&failReader{bytes.NewReader(stored), at, boom}))
			if err == nil {
				_, err = io.ReadAll(rc)
			}
			if !errors.Is(err, boom) || errors.Is(err, ErrCorrupt) {
				t.Fatalf("compress %v, fail at %d: err %v, want the store's", compress, at, err)
			}
		}
		// And on the way in: the source's error, as it is.
		_, err := io.ReadAll(c.Seal("msg/01/01020304", &failReader{bytes.NewReader(mail(sampleSize * 2)), sampleSize + 7, boom}, compress))
		if !errors.Is(err, boom) {
			t.Fatalf("seal: err %v", err)
		}
	}
}

func TestParseKey(t *testing.T) {
	raw := bytes.Repeat([]byte{7}, KeySize)
	hexed := []byte(strings.Repeat("07", KeySize) + "\n")
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"raw", raw, true},
		{"hex with newline", hexed, true},
		{"hex without newline", hexed[:2*KeySize], true},
		{"short", raw[:31], false},
		{"long", append(raw, 0), false},
		{"not hex", []byte(strings.Repeat("zz", KeySize)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKey(tc.in)
			if tc.ok != (err == nil) {
				t.Fatalf("err %v", err)
			}
			if err != nil && (!errors.Is(err, ErrConfig) || strings.Contains(err.Error(), string(tc.in))) {
				t.Fatalf("err %v", err)
			}
			if err == nil && k.ID() != key(t, 7).ID() {
				t.Fatal("wrong key")
			}
		})
	}
}
