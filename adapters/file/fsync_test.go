package file

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// TestFsyncsPerCommit counts the fsyncs of a commit: every write is one
// fsync of the data and one of its directory, and a directory created
// for it costs one more, of its parent. Deletes are not made durable.
func TestFsyncsPerCommit(t *testing.T) {
	b, err := openBackend(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := bench.Count(b)
	s, err := queue.New(c.Backend(), &queue.Options{Node: "fsync-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	content := bytes.Repeat([]byte("x"), 4096)
	for _, rcpts := range []int{1, 10} {
		const n = 50
		base, f0, m0 := c.Counts(), fsyncs.Load(), mkdirs.Load()
		op := bench.Commit(s, content, rcpts)
		for range n {
			if err := op(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		// The committed bits that a one-round commit leaves to the
		// background are written now, and counted with the commits.
		if err := s.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		d, f, m := c.Counts().Sub(base), fsyncs.Load()-f0, mkdirs.Load()-m0
		if f != 2*d.Put+m {
			t.Errorf("%d rcpt: %d fsyncs for %d writes and %d new directories, want %d", rcpts, f, d.Put, m, 2*d.Put+m)
		}
		t.Logf("commit, %d rcpt: %.2f fsyncs, %.2f writes, %.2f requests per message",
			rcpts, float64(f)/n, float64(d.Put)/n, float64(d.Total())/n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOpensPerWrite: a write into an existing directory opens two
// things, its temporary file and the directory, which it locks and
// fsyncs through the same descriptor.
func TestOpensPerWrite(t *testing.T) {
	b, err := openBackend(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	put := func(key string) {
		t.Helper()
		if _, err := b.Put(t.Context(), key, bytes.NewReader([]byte("x")), &driver.PutOptions{IfNoneMatch: true, Size: 1}); err != nil {
			t.Fatal(err)
		}
	}
	put("evp/00000001/0000000000000000") // creates the directory
	const n = 20
	o0, f0 := opens.Load(), fsyncs.Load()
	for i := range n {
		put(fmt.Sprintf("evp/00000001/%016x", i+1))
	}
	if o, f := opens.Load()-o0, fsyncs.Load()-f0; o != 2*n || f != 2*n {
		t.Errorf("%d writes opened %d files and directories and made %d fsyncs, want %d and %d", n, o, f, 2*n, 2*n)
	}
}
