package queue_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver/drivertest"
)

// TestImport commits a message under given IDs and due times, refuses a
// second import of the same ID, and replaces an import of its own node that
// was interrupted before its commit.
func TestImport(t *testing.T) {
	ctx := t.Context()
	open := memNodes(t)
	s := open("importer")
	const m = queue.MsgID(0x1234abcd)
	later := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	envs := []queue.ImportEnvelope{
		{ID: m.Evp(1), Data: []byte("rcpt: a\n")},
		{ID: m.Evp(2), Data: []byte("rcpt: b\n"), Due: later},
	}
	content := strings.Repeat("line\r\n", 5000)

	// An interrupted import: its content fails half way.
	if _, err := s.Import(ctx, m, envs, io.MultiReader(strings.NewReader(content[:100]), errReader{})); err == nil {
		t.Fatal("import from a failing reader succeeded")
	}
	if _, err := s.Load(ctx, m.Evp(1)); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("envelope of a failed import: %v, want ErrNotFound", err)
	}

	n, err := s.Import(ctx, m, envs, strings.NewReader(content))
	if err != nil || n != int64(len(content)) {
		t.Fatalf("Import = %d, %v; want %d, nil", n, err, len(content))
	}
	for _, want := range envs {
		e, err := s.Load(ctx, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(e.Data, want.Data) {
			t.Errorf("%s: data %q, want %q", want.ID, e.Data, want.Data)
		}
		if !want.Due.IsZero() && !e.Due.Equal(want.Due) {
			t.Errorf("%s: due %v, want %v", want.ID, e.Due, want.Due)
		}
	}
	due, err := s.Due(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 1 || due[0].ID != m.Evp(1) {
		t.Errorf("due now: %d envelopes, want only %s", len(due), m.Evp(1))
	}
	rc, err := s.OpenContent(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(got) != content {
		t.Fatalf("content: %d bytes, %v", len(got), err)
	}
	if size, err := s.ContentSize(ctx, m); err != nil || size != int64(len(content)) {
		t.Errorf("ContentSize = %d, %v; want %d", size, err, len(content))
	}

	// A second import of a committed ID, by this node or another.
	for _, st := range []*queue.Store{s, open("other")} {
		if _, err := st.Import(ctx, m, envs, strings.NewReader(content)); !errors.Is(err, queue.ErrExists) {
			t.Errorf("import by %s of a committed message: %v, want ErrExists", st.Node(), err)
		}
	}
	ids, err := s.Envelopes(ctx, m)
	if err != nil || len(ids) != 2 {
		t.Errorf("Envelopes = %v, %v; want 2", ids, err)
	}

	// This node's open transaction, as a killed importer leaves it, is
	// aborted and replaced. The importer dies after its reservation and
	// content check, the first two requests.
	f := drivertest.New(mem.OpenBackend(fmt.Sprintf("nodes-%s-%d", t.Name(), time.Now().UnixNano())), 1)
	killed, err := queue.New(f, &queue.Options{Node: "importer", Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	const stale = queue.MsgID(0x2345bcde)
	f.CrashAfter(2)
	if _, err := killed.Import(ctx, stale, []queue.ImportEnvelope{{ID: stale.Evp(1), Data: []byte("stale")}}, strings.NewReader("stale")); err == nil {
		t.Fatal("import by a node that dies succeeded")
	}
	killed.Close()
	fresh := []queue.ImportEnvelope{{ID: stale.Evp(7), Data: []byte("fresh")}}
	if _, err := s.Import(ctx, stale, fresh, strings.NewReader("fresh")); err != nil {
		t.Fatalf("import over this node's open transaction: %v", err)
	}
	if ids, err := s.Envelopes(ctx, stale); err != nil || len(ids) != 1 || ids[0] != fresh[0].ID {
		t.Errorf("after replacing an open transaction: envelopes %v, %v; want only %s", ids, err, fresh[0].ID)
	}

	// Another node's open transaction of an ID is left alone.
	o := open("other")
	tx, err := o.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := s.Import(ctx, tx.ID(), []queue.ImportEnvelope{{ID: tx.ID().Evp(1), Data: []byte("x")}}, strings.NewReader("x")); !errors.Is(err, queue.ErrExists) {
		t.Errorf("import over another node's open transaction: %v, want ErrExists", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("broken source") }
