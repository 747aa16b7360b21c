package queue_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
	"github.com/mxqueue/mxq/queue/seal"
)

func testKey(t testing.TB, b byte) *seal.Key {
	t.Helper()
	k, err := seal.NewKey(bytes.Repeat([]byte{b}, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sealedStores opens Stores over one mem storage with the given
// encryption (nil: plain).
func sealedStores(t *testing.T) func(e *queue.Encryption) *queue.Store {
	name := fmt.Sprintf("sealed-%s-%d", t.Name(), time.Now().UnixNano())
	return func(e *queue.Encryption) *queue.Store {
		t.Helper()
		s, err := queue.New(mem.OpenBackend(name), &queue.Options{Encryption: e})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

// readMsg reads message m's content and its first envelope.
func readMsg(s *queue.Store, m queue.MsgID, id queue.EvpID) (string, string, error) {
	ctx := context.Background()
	e, err := s.Load(ctx, id)
	if err != nil {
		return "", "", err
	}
	rc, err := s.OpenContent(ctx, m)
	if err != nil {
		return "", "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), string(e.Data), err
}

func rawGet(t *testing.T, s *queue.Store, key string) []byte {
	t.Helper()
	rc, _, err := s.Backend().(interface{ Unwrap() driver.Backend }).Unwrap().Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rawPut(t *testing.T, s *queue.Store, key string, b []byte) {
	t.Helper()
	raw := s.Backend().(interface{ Unwrap() driver.Backend }).Unwrap()
	if _, err := raw.Put(t.Context(), key, bytes.NewReader(b), &driver.PutOptions{Size: int64(len(b))}); err != nil {
		t.Fatal(err)
	}
}

func contentKey(m queue.MsgID) string {
	return layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(m)})
}
func envKey(id queue.EvpID) string {
	return layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})
}

// TestEncryptionKeys: rotation, wrong and missing keys, and a store that
// mixes plain and sealed objects while encryption is turned on.
func TestEncryptionKeys(t *testing.T) {
	k1, k2, k3 := testKey(t, 1), testKey(t, 2), testKey(t, 3)
	open := sealedStores(t)
	plain := open(nil)
	mp, ip := commitMsg(t, plain, "plain content", "plain rcpt")
	s1 := open(&queue.Encryption{Keys: seal.NewKeyring(k1)})
	m1, i1 := commitMsg(t, s1, "content under k1", "rcpt under k1")
	s2 := open(&queue.Encryption{Keys: seal.NewKeyring(k2, k1), Compress: true})
	m2, i2 := commitMsg(t, s2, strings.Repeat("content under k2 ", 100), "rcpt under k2")
	for _, key := range []string{contentKey(m1), envKey(i1[0]), contentKey(m2), envKey(i2[0])} {
		if b := rawGet(t, s1, key); !bytes.HasPrefix(b, []byte(seal.Magic)) || bytes.Contains(b, []byte("under")) {
			t.Fatalf("%s is not sealed", key)
		}
	}
	type msg struct {
		m  queue.MsgID
		id queue.EvpID
	}
	p, o, n := msg{mp, ip[0]}, msg{m1, i1[0]}, msg{m2, i2[0]}
	for _, tc := range []struct {
		name    string
		enc     *queue.Encryption
		ok, bad []msg
		wantMsg string // in the error of a bad one
	}{
		{"plain store reads plain only", nil, []msg{p}, []msg{o, n}, "no key is configured"},
		{"k1 reads plain and k1", &queue.Encryption{Keys: seal.NewKeyring(k1)}, []msg{p, o}, []msg{n}, k2.ID().String()},
		{"rotated: k2 with k1 read-only", &queue.Encryption{Keys: seal.NewKeyring(k2, k1)}, []msg{p, o, n}, nil, ""},
		{"old keys only", &queue.Encryption{Keys: seal.NewKeyring(nil, k1, k2)}, []msg{p, o, n}, nil, ""},
		{"wrong key", &queue.Encryption{Keys: seal.NewKeyring(k3)}, []msg{p}, []msg{o, n}, "not configured"},
		{"required refuses plain", &queue.Encryption{Keys: seal.NewKeyring(k2, k1), Require: true}, []msg{o, n}, []msg{p}, "plain object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(tc.enc)
			for _, x := range tc.ok {
				c, e, err := readMsg(s, x.m, x.id)
				if err != nil || c == "" || e == "" {
					t.Fatalf("%v: %v", x.m, err)
				}
			}
			for _, x := range tc.bad {
				_, _, err := readMsg(s, x.m, x.id)
				if !errors.Is(err, queue.ErrCorrupt) || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("%v: err %v, want ErrCorrupt saying %q", x.m, err, tc.wantMsg)
				}
				for _, k := range []*seal.Key{k1, k2, k3} {
					if strings.Contains(err.Error(), "0101010101") {
						t.Fatalf("error shows a key: %v (%v)", err, k)
					}
				}
			}
		})
	}
	t.Run("sealed object renamed", func(t *testing.T) {
		// Splicing: the sealed content of one message under another's key.
		rawPut(t, s1, contentKey(mp), rawGet(t, s1, contentKey(m1)))
		_, _, err := readMsg(s2, mp, ip[0])
		if !errors.Is(err, queue.ErrCorrupt) {
			t.Fatalf("err %v, want ErrCorrupt", err)
		}
	})
	t.Run("required without a current key", func(t *testing.T) {
		_, err := queue.New(mem.OpenBackend("x"), &queue.Options{Encryption: &queue.Encryption{Keys: seal.NewKeyring(nil, k1), Require: true}})
		if !errors.Is(err, queue.ErrInvalid) {
			t.Fatalf("err %v, want ErrInvalid", err)
		}
	})
}

// TestEncryptionTamper: any change to a sealed content or envelope object
// is ErrCorrupt, never other data.
func TestEncryptionTamper(t *testing.T) {
	open := sealedStores(t)
	for _, compress := range []bool{false, true} {
		s := open(&queue.Encryption{Keys: seal.NewKeyring(testKey(t, 1)), Compress: compress})
		body := strings.Repeat("Subject: tamper test\r\n", 10000) // several segments
		for _, tc := range []struct {
			name   string
			key    func(m queue.MsgID, id queue.EvpID) string
			mangle func([]byte) []byte
		}{
			{"content byte flipped", func(m queue.MsgID, _ queue.EvpID) string { return contentKey(m) }, func(b []byte) []byte { b[len(b)/2] ^= 4; return b }},
			{"content key ID changed", func(m queue.MsgID, _ queue.EvpID) string { return contentKey(m) }, func(b []byte) []byte { b[9] ^= 1; return b }},
			{"content flags changed", func(m queue.MsgID, _ queue.EvpID) string { return contentKey(m) }, func(b []byte) []byte { b[6] ^= seal.FlagCompressed; return b }},
			{"content truncated", func(m queue.MsgID, _ queue.EvpID) string { return contentKey(m) }, func(b []byte) []byte { return b[:len(b)-1] }},
			{"content cut at a segment", func(m queue.MsgID, _ queue.EvpID) string { return contentKey(m) }, func(b []byte) []byte { return b[:min(len(b)-1, 15+seal.SegmentSize)] }},
			{"content header only", func(m queue.MsgID, _ queue.EvpID) string { return contentKey(m) }, func(b []byte) []byte { return b[:15] }},
			{"envelope byte flipped", func(_ queue.MsgID, id queue.EvpID) string { return envKey(id) }, func(b []byte) []byte { b[len(b)-3] ^= 1; return b }},
			{"envelope truncated", func(_ queue.MsgID, id queue.EvpID) string { return envKey(id) }, func(b []byte) []byte { return b[:len(b)-17] }},
		} {
			t.Run(fmt.Sprintf("%s compress=%v", tc.name, compress), func(t *testing.T) {
				m, ids := commitMsg(t, s, body, "rcpt")
				key := tc.key(m, ids[0])
				rawPut(t, s, key, tc.mangle(rawGet(t, s, key)))
				c, _, err := readMsg(s, m, ids[0])
				if !errors.Is(err, queue.ErrCorrupt) {
					t.Fatalf("err %v, want ErrCorrupt", err)
				}
				if c != "" && strings.HasSuffix(body, c) {
					t.Fatal("tampered content read as whole")
				}
			})
		}
	}
}

func writeKeyFile(t *testing.T, dir, name string, k []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, k, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEncryptionURL: the URL parameters that configure encryption for
// every scheme.
func TestEncryptionURL(t *testing.T) {
	dir := t.TempDir()
	secret := bytes.Repeat([]byte{9}, seal.KeySize)
	cur := writeKeyFile(t, dir, "cur.key", secret, 0o600)
	hexKey := writeKeyFile(t, dir, "hex.key", []byte(hex.EncodeToString(bytes.Repeat([]byte{8}, seal.KeySize))+"\n"), 0o400)
	open := writeKeyFile(t, dir, "open.key", secret, 0o644)
	short := writeKeyFile(t, dir, "short.key", secret[:16], 0o600)
	t.Setenv("MXQ_TEST_KEY", hex.EncodeToString(secret))
	k9, k8 := testKey(t, 9), testKey(t, 8)
	for _, tc := range []struct {
		name     string
		query    string
		want     error // nil: ok
		current  *seal.Key
		old      *seal.Key
		compress bool
		require  bool
		rest     string // the query left for the scheme's opener
	}{
		{"none", "x=1", nil, nil, nil, false, false, "x=1"},
		{"key file", "key_file=" + cur + "&x=1", nil, k9, nil, false, false, "x=1"},
		{"hex key file and old key", "key_file=" + hexKey + "&old_key_files=" + cur, nil, k8, k9, false, false, ""},
		{"key env", "key_env=MXQ_TEST_KEY&compress=true&require_encryption=1", nil, k9, nil, true, true, ""},
		{"old keys only", "old_key_files=" + cur + "," + hexKey, nil, nil, k8, false, false, ""},
		{"compress only", "compress=yes", nil, nil, nil, true, false, ""},
		{"key file readable by others", "key_file=" + open, queue.ErrInvalid, nil, nil, false, false, ""},
		{"short key", "key_file=" + short, queue.ErrInvalid, nil, nil, false, false, ""},
		{"missing file", "key_file=" + dir + "/nope", queue.ErrInvalid, nil, nil, false, false, ""},
		{"unset env", "key_env=MXQ_TEST_UNSET", queue.ErrInvalid, nil, nil, false, false, ""},
		{"file and env", "key_file=" + cur + "&key_env=MXQ_TEST_KEY", queue.ErrInvalid, nil, nil, false, false, ""},
		{"required without key", "require_encryption=true", queue.ErrInvalid, nil, nil, false, false, ""},
		{"bad bool", "compress=maybe", queue.ErrInvalid, nil, nil, false, false, ""},
		{"repeated", "compress=1&compress=0", queue.ErrInvalid, nil, nil, false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, _ := url.Parse("mem://q?" + tc.query)
			e, err := queue.EncryptionFromURL(u)
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("err %v, want %v", err, tc.want)
				}
				if strings.Contains(err.Error(), "0909090909") || strings.Contains(err.Error(), string(secret)) {
					t.Fatalf("error shows the key: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.RawQuery != tc.rest {
				t.Fatalf("query left %q, want %q", u.RawQuery, tc.rest)
			}
			if tc.query == tc.rest {
				if e != nil {
					t.Fatal("encryption without parameters")
				}
				return
			}
			if e.Compress != tc.compress || e.Require != tc.require {
				t.Fatalf("got %+v", e)
			}
			if got := e.Keys.Current(); (got == nil) != (tc.current == nil) || got != nil && got.ID() != tc.current.ID() {
				t.Fatalf("current key %v, want %v", got, tc.current)
			}
			if tc.old != nil && e.Keys.Lookup(tc.old.ID()) == nil {
				t.Fatalf("old key %v missing", tc.old)
			}
		})
	}
	t.Run("OpenOptions", func(t *testing.T) {
		var mux queue.URLMux
		mux.Register("mem", new(mem.URLOpener))
		s, err := mux.OpenOptions(t.Context(), "mem://sealed-url?key_file="+cur, &queue.Options{Node: "n1"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		m, ids := commitMsg(t, s, "over a URL", "rcpt")
		if b := rawGet(t, s, contentKey(m)); !bytes.HasPrefix(b, []byte(seal.Magic)) {
			t.Fatal("content not sealed")
		}
		if c, _, err := readMsg(s, m, ids[0]); err != nil || c != "over a URL" {
			t.Fatalf("%q %v", c, err)
		}
		_, err = mux.OpenOptions(t.Context(), "mem://sealed-url?key_file="+cur, &queue.Options{Encryption: &queue.Encryption{Compress: true}})
		if !errors.Is(err, queue.ErrInvalid) {
			t.Fatalf("URL and Options both: err %v", err)
		}
	})
}

// TestCompressInline: with compression on, a message whose content
// travels in its envelope is stored compressed, and reads back whole.
func TestCompressInline(t *testing.T) {
	ctx := context.Background()
	content := strings.Repeat("Subject: a line that repeats, as mail does\r\n", 200) // 8.8 KiB
	for i, e := range []*queue.Encryption{{Compress: true}, {Keys: seal.NewKeyring(testKey(t, 3)), Compress: true}} {
		open := sealedStores(t)
		s := open(e)
		tx, err := s.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id, err := tx.AddEnvelope([]byte("rcpt@example.org"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.CommitContent(ctx, strings.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Backend().Get(ctx, contentKey(id.MsgID())); !errors.Is(err, queue.ErrNotFound) && s.Backend().ErrorCode(err) != driver.CodeNotFound {
			t.Fatalf("a content object was written (%v): the content was meant to travel in the envelope", err)
		}
		if n := len(rawGet(t, s, envKey(id))); n > len(content)/4 {
			t.Errorf("case %d: the envelope holding %d bytes of content is stored in %d bytes: not compressed", i, len(content), n)
		}
		// A node that reads it from the store, not from its cache.
		other := open(e)
		got, data, err := readMsg(other, id.MsgID(), id)
		if err != nil || got != content || data != "rcpt@example.org" {
			t.Fatalf("read back: %d bytes of content, envelope %q, %v", len(got), data, err)
		}
	}
}
