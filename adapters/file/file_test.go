package file

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

type harness struct{ root string }

func (h *harness) MakeBackend(context.Context) (driver.Backend, error) { return openBackend(h.root) }
func (h *harness) Capabilities() conformance.Capabilities {
	return conformance.Capabilities{IfMatchMissing: driver.CodeNotFound}
}
func (h *harness) Close() {}

func newHarness(ctx context.Context, t testing.TB) (conformance.Harness, error) {
	return &harness{root: t.TempDir()}, nil
}

func TestConformance(t *testing.T) { conformance.Run(t, newHarness) }

func TestConformanceEncrypted(t *testing.T) { conformance.RunEncrypted(t, newHarness) }

func BenchmarkConformance(b *testing.B) { conformance.RunBenchmarks(b, newHarness) }

// TestProcessesShareDirectory runs several OS processes that increment a
// counter in one envelope with compare-and-swap: no increment may be lost.
func TestProcessesShareDirectory(t *testing.T) {
	if dir := os.Getenv("MXQ_FILE_CHILD_DIR"); dir != "" {
		childIncrement(t, dir, os.Getenv("MXQ_FILE_CHILD_EVP"))
		return
	}
	ctx := t.Context()
	dir := t.TempDir()
	s, err := Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tx, err := s.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := tx.AddEnvelope([]byte("0"))
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	const procs = 4
	var cmds []*exec.Cmd
	for range procs {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestProcessesShareDirectory$")
		cmd.Env = append(os.Environ(), "MXQ_FILE_CHILD_DIR="+dir, "MXQ_FILE_CHILD_EVP="+id.String())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("child output:\n%s", out.String())
			}
		})
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	e, err := s.Load(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(e.Data), strconv.Itoa(procs*childIncrements); got != want {
		t.Fatalf("counter = %s after %d processes each added %d: increments were lost", got, procs, childIncrements)
	}
}

const childIncrements = 40

func childIncrement(t *testing.T, dir, evp string) {
	ctx := t.Context()
	s, err := Open(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	id, err := queue.ParseEvpID(evp)
	if err != nil {
		t.Fatal(err)
	}
	for done := 0; done < childIncrements; {
		e, err := s.Load(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(string(e.Data))
		e.Data = []byte(strconv.Itoa(n + 1))
		switch err := s.Update(ctx, e); {
		case err == nil:
			done++
		case errors.Is(err, queue.ErrConflict):
		default:
			t.Fatal(err)
		}
	}
}

// TestInvalidKeys: keys outside the shared rule (driver.ValidKey) are
// refused as invalid, never as an internal error, and touch nothing.
func TestInvalidKeys(t *testing.T) {
	root := t.TempDir()
	b, err := openBackend(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, key := range []string{"foo", ".tmp/x", ".hidden/x", "inc/.x", "inc/a,b", "inc//a", "../x/y"} {
		_, err := b.Put(ctx, key, bytes.NewReader([]byte("x")), &driver.PutOptions{})
		if c := b.ErrorCode(err); c != driver.CodeInvalid {
			t.Errorf("Put %q: %v (code %v), want CodeInvalid", key, err, c)
		}
		_, _, err = b.Get(ctx, key)
		if c := b.ErrorCode(err); c != driver.CodeInvalid {
			t.Errorf("Get %q: %v (code %v), want CodeInvalid", key, err, c)
		}
		if c := b.ErrorCode(b.Delete(ctx, key)); c != driver.CodeInvalid {
			t.Errorf("Delete %q: code %v, want CodeInvalid", key, c)
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != ".tmp" {
			t.Errorf("invalid keys left %s in the queue directory", e.Name())
		}
	}
}

// TestDeleteMulti: the keys of a batch go, whichever directories they are
// in, and a key in a directory that does not exist creates none.
func TestDeleteMulti(t *testing.T) {
	ctx := t.Context()
	root := t.TempDir()
	b, err := openBackend(root)
	if err != nil {
		t.Fatal(err)
	}
	keys := []string{"due/000000000001/a", "due/000000000001/b", "own/n/c"}
	for _, k := range keys {
		if _, err := b.Put(ctx, k, strings.NewReader("x"), &driver.PutOptions{Size: 1}); err != nil {
			t.Fatal(err)
		}
	}
	before, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteMulti(ctx, append(keys, "due/000000000001/missing", "zzz/never/made")); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if _, _, err := b.Get(ctx, k); b.ErrorCode(err) != driver.CodeNotFound {
			t.Errorf("Get(%s) after DeleteMulti: %v", k, err)
		}
	}
	after, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Errorf("DeleteMulti made directories: %v, before %v", after, before)
	}
}
