package datastore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"cloud.google.com/go/datastore"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// testEnv returns a client for DATASTORE_EMULATOR_HOST and a fresh
// namespace under MXQ_TEST_DATASTORE_URL. It skips the test when they are
// not set, unless MXQ_REQUIRE_SERVICES=1.
func testEnv(t testing.TB) (*datastore.Client, string) {
	t.Helper()
	raw := os.Getenv("MXQ_TEST_DATASTORE_URL")
	if raw == "" || os.Getenv("DATASTORE_EMULATOR_HOST") == "" {
		if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
			t.Fatal("MXQ_TEST_DATASTORE_URL and DATASTORE_EMULATOR_HOST must be set (scripts/services env)")
		}
		t.Skip("MXQ_TEST_DATASTORE_URL or DATASTORE_EMULATOR_HOST not set")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != Scheme {
		t.Fatalf("MXQ_TEST_DATASTORE_URL=%q: want datastore://project/namespace", raw)
	}
	c, err := testClient(u.Host, u.Query().Get("database"))
	if err != nil {
		t.Fatal(err)
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	ns := strings.Trim(u.Path, "/")
	if ns != "" {
		ns += "-"
	}
	return c, ns + fmt.Sprintf("test-%x", rnd)
}

var testClients = struct {
	sync.Mutex
	m map[[2]string]*datastore.Client
}{m: make(map[[2]string]*datastore.Client)}

// testClient returns the client of every test of project and database,
// made once.
func testClient(project, database string) (*datastore.Client, error) {
	testClients.Lock()
	defer testClients.Unlock()
	k := [2]string{project, database}
	if c := testClients.m[k]; c != nil {
		return c, nil
	}
	if project == "" {
		project = datastore.DetectProjectID
	}
	c, err := datastore.NewClientWithDatabase(context.Background(), project, database, clientOptions...)
	if err != nil {
		return nil, err
	}
	testClients.m[k] = c
	return c, nil
}

type harness struct {
	c       *datastore.Client
	ns      string
	offline *datastore.Client // of MakeDeadBackend
}

func (h *harness) MakeBackend(ctx context.Context) (driver.Backend, error) {
	return openBackend(ctx, h.c, h.ns)
}

func (h *harness) Capabilities() conformance.Capabilities {
	return conformance.Capabilities{IfMatchMissing: driver.CodeNotFound}
}

func (h *harness) Close() {
	if h.offline != nil {
		h.offline.Close()
	}
}

// MakeDeadBackend implements conformance.DeadHarness. The emulator takes
// any credentials, and a namespace needs no creating, so only a dead
// endpoint fails.
func (h *harness) MakeDeadBackend(ctx context.Context, d conformance.Dead) (driver.Backend, error) {
	if d != conformance.DeadEndpoint {
		return nil, nil
	}
	c, err := newOfflineClient(ctx)
	if err != nil {
		return nil, err
	}
	h.offline = c
	return openBackend(ctx, c, h.ns)
}

func newHarness(ctx context.Context, t testing.TB) (conformance.Harness, error) {
	c, ns := testEnv(t)
	return &harness{c: c, ns: ns}, nil
}

func TestConformance(t *testing.T) { conformance.Run(t, newHarness) }

func TestConformanceEncrypted(t *testing.T) { conformance.RunEncrypted(t, newHarness) }

func BenchmarkConformance(b *testing.B) { conformance.RunBenchmarks(b, newHarness) }

func testBackend(t testing.TB) *backend {
	c, ns := testEnv(t)
	b, err := openBackend(t.Context(), c, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// chunks counts the chunk entities of b's namespace.
func chunks(t testing.TB, b *backend) int {
	t.Helper()
	keys, err := b.c.GetAll(t.Context(), datastore.NewQuery(chunkKind).Namespace(b.ns).KeysOnly(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// newOfflineClient returns a client of a server that is not there.
func newOfflineClient(ctx context.Context) (*datastore.Client, error) {
	return datastore.NewClient(ctx, "offline",
		option.WithEndpoint("127.0.0.1:1"), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		clientOptions[0])
}

func offlineClient(t testing.TB) *datastore.Client {
	c, err := newOfflineClient(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestURLOpener(t *testing.T) {
	o := &URLOpener{Client: offlineClient(t)}
	for _, tc := range []struct {
		name, url string
		wantErr   error
	}{
		{"project", "datastore://proj", nil},
		{"project and namespace", "datastore://proj/mx1", nil},
		{"trailing slash", "datastore://proj/mx1/", nil},
		{"database", "datastore://proj/mx1?database=queue", nil},
		{"no project", "datastore:///mx1", nil},
		{"namespace with slash", "datastore://proj/a/b", queue.ErrInvalid},
		{"namespace with bad character", "datastore://proj/a%20b", queue.ErrInvalid},
		{"reserved namespace", "datastore://proj/__x__", queue.ErrInvalid},
		{"namespace too long", "datastore://proj/" + strings.Repeat("n", 101), queue.ErrInvalid},
		{"unknown parameter", "datastore://proj/mx1?prefix=x", queue.ErrInvalid},
		{"repeated database", "datastore://proj/mx1?database=a&database=b", queue.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := url.Parse(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			s, err := o.OpenStoreURL(t.Context(), u, nil)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("OpenStoreURL(%s) = %v, want %v", tc.url, err, tc.wantErr)
			}
			if s != nil {
				s.Close()
			}
		})
	}
}

func TestSchemeRegistered(t *testing.T) {
	if !queue.DefaultURLMux().ValidScheme("datastore") {
		t.Fatal("datastore is not registered with the default mux")
	}
}

func TestErrorCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want driver.Code
	}{
		{"no such entity", datastore.ErrNoSuchEntity, driver.CodeNotFound},
		{"wrapped no such entity", fmt.Errorf("x: %w", datastore.ErrNoSuchEntity), driver.CodeNotFound},
		{"multi no such entity", datastore.MultiError{datastore.ErrNoSuchEntity}, driver.CodeNotFound},
		{"precondition", errPrecondition, driver.CodePrecondition},
		{"already exists", status.Error(codes.AlreadyExists, "x"), driver.CodePrecondition},
		{"multi already exists", datastore.MultiError{status.Error(codes.AlreadyExists, "x")}, driver.CodePrecondition},
		{"concurrent transaction", datastore.ErrConcurrentTransaction, driver.CodeUnavailable},
		{"aborted", status.Error(codes.Aborted, "x"), driver.CodeUnavailable},
		{"failed precondition is not ours", status.Error(codes.FailedPrecondition, "no index"), driver.CodeUnknown},
		{"grpc not found", status.Error(codes.NotFound, "x"), driver.CodeNotFound},
		{"invalid argument", status.Error(codes.InvalidArgument, "x"), driver.CodeInvalid},
		{"invalid key", datastore.ErrInvalidKey, driver.CodeInvalid},
		{"our invalid key", fmt.Errorf("%w: x", errInvalidKey), driver.CodeInvalid},
		{"unavailable", status.Error(codes.Unavailable, "x"), driver.CodeUnavailable},
		{"deadline", status.Error(codes.DeadlineExceeded, "x"), driver.CodeUnavailable},
		{"resource exhausted", status.Error(codes.ResourceExhausted, "x"), driver.CodeUnavailable},
		{"unimplemented", status.Error(codes.Unimplemented, "x"), driver.CodeUnsupported},
		{"permission denied is not guessed", status.Error(codes.PermissionDenied, "x"), driver.CodeUnknown},
		{"corrupt", errCorrupt, driver.CodeCorrupt},
		{"field mismatch", &datastore.ErrFieldMismatch{FieldName: "x", Reason: "y"}, driver.CodeCorrupt},
		{"other", errors.New("x"), driver.CodeUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := errorCode(tc.err); got != tc.want {
				t.Errorf("errorCode(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestPrefixEnd(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", ""},
		{"slash", "evp/", "evp0"},
		{"letter", "inc/0000000a", "inc/0000000b"},
		{"high byte", "a\xff", "b"},
		{"all high", "\xff\xff", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := prefixEnd(tc.in); got != tc.want {
				t.Errorf("prefixEnd(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestInvalidKeys(t *testing.T) {
	b, _ := openBackend(t.Context(), offlineClient(t), "")
	for _, tc := range []struct{ name, key string }{
		{"empty", ""},
		{"too long", strings.Repeat("k", maxKey+1)},
		{"reserved", "__x__"},
		{"chunk separator", "a#b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := b.Put(t.Context(), tc.key, strings.NewReader("x"), &driver.PutOptions{Size: 1})
			if b.ErrorCode(err) != driver.CodeInvalid {
				t.Errorf("Put(%q) = %v, want CodeInvalid", tc.key, err)
			}
			if _, _, err := b.Get(t.Context(), tc.key); b.ErrorCode(err) != driver.CodeInvalid {
				t.Errorf("Get(%q) = %v, want CodeInvalid", tc.key, err)
			}
		})
	}
}

// pattern is a reader of n bytes of a repeating non-trivial pattern.
type pattern struct{ n, off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if int64(len(b)) > p.n-p.off {
		b = b[:p.n-p.off]
	}
	for i := range b {
		x := p.off + int64(i)
		b[i] = byte(x ^ x>>8 ^ x>>16)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func checkRoundTrip(t *testing.T, b driver.Backend, key string, size, sizeOpt int64, opts driver.PutOptions) driver.Version {
	t.Helper()
	h := sha256.New()
	io.Copy(h, &pattern{n: size})
	want := h.Sum(nil)
	opts.Size = sizeOpt
	v, err := b.Put(t.Context(), key, &pattern{n: size}, &opts)
	if err != nil {
		t.Fatal(err)
	}
	rc, a, err := b.Get(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	h.Reset()
	n, err := io.Copy(h, rc)
	if err != nil || n != size || a.Size != size || a.Version != v || !bytes.Equal(h.Sum(nil), want) {
		t.Fatalf("read %d of %d bytes (attrs %+v, put version %s), err %v, checksum match %v", n, size, a, v, err, bytes.Equal(h.Sum(nil), want))
	}
	return v
}

func TestBigObject(t *testing.T) {
	b := testBackend(t)
	for _, tc := range []struct {
		name string
		size int64
		opt  int64
	}{
		{"empty", 0, 0},
		{"one chunk exactly", chunkData, -1},
		{"one chunk and a byte", chunkData + 1, -1},
		{"a full commit of chunks and the head", (chunksPerCommit + 1) * chunkData, (chunksPerCommit + 1) * chunkData},
		{"12 MiB, unknown size", 12 << 20, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkRoundTrip(t, b, "msg/00/00000001", tc.size, tc.opt, driver.PutOptions{})
		})
	}
	if err := b.Delete(t.Context(), "msg/00/00000001"); err != nil {
		t.Fatal(err)
	}
	if n := chunks(t, b); n != 0 {
		t.Fatalf("%d chunks left after replacing and deleting", n)
	}
}

func TestChunkCleanup(t *testing.T) {
	b := testBackend(t)
	const key = "msg/00/00000002"
	v := checkRoundTrip(t, b, key, 3*chunkData+5, -1, driver.PutOptions{IfNoneMatch: true})
	if n := chunks(t, b); n != 3 {
		t.Fatalf("%d chunks, want 3", n)
	}
	t.Run("refused create", func(t *testing.T) {
		_, err := b.Put(t.Context(), key, &pattern{n: 2 * chunkData}, &driver.PutOptions{IfNoneMatch: true, Size: -1})
		if b.ErrorCode(err) != driver.CodePrecondition {
			t.Fatalf("create of existing = %v", err)
		}
		if n := chunks(t, b); n != 3 {
			t.Fatalf("%d chunks after a refused write, want 3", n)
		}
	})
	t.Run("stale compare-and-swap", func(t *testing.T) {
		_, err := b.Put(t.Context(), key, &pattern{n: 2 * chunkData}, &driver.PutOptions{IfMatch: "0123456789abcdef", Size: -1})
		if b.ErrorCode(err) != driver.CodePrecondition {
			t.Fatalf("stale CAS = %v", err)
		}
		if n := chunks(t, b); n != 3 {
			t.Fatalf("%d chunks after a refused write, want 3", n)
		}
	})
	t.Run("replaced while read", func(t *testing.T) {
		rc, _, err := b.Get(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if _, err := io.ReadFull(rc, make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		v = checkRoundTrip(t, b, key, chunkData+1, -1, driver.PutOptions{IfMatch: v})
		_, err = io.Copy(io.Discard, rc)
		if b.ErrorCode(err) != driver.CodeNotFound {
			t.Fatalf("reading a replaced object: %v (code %v), want NotFound", err, b.ErrorCode(err))
		}
		if n := chunks(t, b); n != 1 {
			t.Fatalf("%d chunks after replacing, want 1", n)
		}
	})
}

// TestDeleteMulti: a batch deletes big and small objects, their chunks
// with them, and takes missing keys for gone.
func TestDeleteMulti(t *testing.T) {
	b := testBackend(t)
	checkRoundTrip(t, b, "msg/00/00000003", 2*chunkData+7, -1, driver.PutOptions{})
	checkRoundTrip(t, b, "due/000000000001/00000003", 0, 0, driver.PutOptions{})
	if n := chunks(t, b); n != 2 {
		t.Fatalf("%d chunks, want 2", n)
	}
	keys := []string{"msg/00/00000003", "due/000000000001/00000003", "due/000000000001/missing"}
	if err := b.DeleteMulti(t.Context(), keys); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, _, err := b.Get(t.Context(), k); b.ErrorCode(err) != driver.CodeNotFound {
			t.Errorf("Get(%s) after DeleteMulti: %v", k, err)
		}
	}
	if n := chunks(t, b); n != 0 {
		t.Errorf("%d chunks left after DeleteMulti", n)
	}
}
