package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"

	"github.com/mxqueue/mxq/queue"
)

func init() {
	// As the child process of TestMigrateKilled: stop for good after the
	// n-th message is in DST, before SRC loses it, and say so.
	if n, err := strconv.Atoi(os.Getenv("MXQ_MIGRATE_STALL")); err == nil {
		count := 0
		migrateStall = func(m queue.MsgID) {
			if count++; count == n {
				fmt.Fprintf(os.Stderr, "stalled at %s\n", m)
				select {}
			}
		}
	}
}

// required fails the test when services are required, and skips it
// otherwise.
func required(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
		t.Fatalf("MXQ_REQUIRE_SERVICES=1: "+format, args...)
	}
	t.Skipf(format, args...)
}

// storeURL returns a fresh, empty queue of the given kind on the test
// services (scripts/services env).
func storeURL(t *testing.T, kind string) string {
	t.Helper()
	switch kind {
	case "file":
		return "file://" + t.TempDir()
	case "minio":
		u, ok := minioURL(t)
		if !ok {
			required(t, "MinIO is not configured")
		}
		return u
	case "gcs":
		raw := os.Getenv("MXQ_TEST_GCS_URL")
		if raw == "" || os.Getenv("STORAGE_EMULATOR_HOST") == "" {
			required(t, "MXQ_TEST_GCS_URL or STORAGE_EMULATOR_HOST not set")
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		c, err := storage.NewClient(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		err = c.Bucket(u.Host).Create(t.Context(), "mxq-test", nil)
		var ge *googleapi.Error
		if err != nil && !(errors.As(err, &ge) && ge.Code == http.StatusConflict) {
			t.Fatalf("create bucket %s: %v", u.Host, err)
		}
		u.Path = strings.TrimSuffix(u.Path, "/") + "/migrate-" + randHex(6) + "/"
		return u.String()
	case "datastore":
		raw := os.Getenv("MXQ_TEST_DATASTORE_URL")
		if raw == "" || os.Getenv("DATASTORE_EMULATOR_HOST") == "" {
			required(t, "MXQ_TEST_DATASTORE_URL or DATASTORE_EMULATOR_HOST not set")
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		u.Path = "/migrate" + randHex(6)
		return u.String()
	}
	t.Fatalf("unknown store %q", kind)
	return ""
}

// wantEnvelope is an envelope as the test stored it.
type wantEnvelope struct {
	data string
	due  int64 // Unix seconds, 0 for due now
}

// corpus is what fillQueue stored.
type corpus struct {
	envs    map[queue.EvpID]wantEnvelope
	content map[queue.MsgID]string
}

func openTest(t *testing.T, u, node string) *queue.Store {
	t.Helper()
	s, err := queue.DefaultURLMux().OpenOptions(t.Context(), u, &queue.Options{Node: node})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fillQueue commits n messages of one to three envelopes and assorted
// sizes to the queue u; one envelope in three is deferred by an hour.
func fillQueue(t *testing.T, u string, n int) corpus {
	t.Helper()
	ctx := t.Context()
	s := openTest(t, u, "filler")
	c := corpus{envs: map[queue.EvpID]wantEnvelope{}, content: map[queue.MsgID]string{}}
	later := time.Now().Add(time.Hour).Unix()
	for i := range n {
		tx, err := s.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []queue.EvpID
		for r := range 1 + i%3 {
			data := fmt.Sprintf("sender: s%d@example.org\nrcpt: r%d@example.org\n", i, r)
			id, err := tx.AddEnvelope([]byte(data))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
			c.envs[id] = wantEnvelope{data: data}
		}
		body := fmt.Sprintf("Subject: %d\r\n\r\n%s", i, strings.Repeat("0123456789abcdef", (i*7919)%9000))
		if _, err := tx.WriteContent(ctx, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		c.content[tx.ID()] = body
		if i%3 == 1 {
			cl, err := s.Claim(ctx, ids[0], 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.Defer(ctx, nil, time.Unix(later, 0)); err != nil {
				t.Fatal(err)
			}
			w := c.envs[ids[0]]
			w.due = later
			c.envs[ids[0]] = w
		}
	}
	return c
}

// checkQueue fails the test unless the queue u holds exactly the
// envelopes and contents of c, each once.
func checkQueue(t *testing.T, u string, c corpus) {
	t.Helper()
	ctx := t.Context()
	s := openTest(t, u, "checker")
	seen := map[queue.EvpID]bool{}
	msgs := map[queue.MsgID]bool{}
	for id, err := range s.Walk(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		want, ok := c.envs[id]
		if !ok || seen[id] {
			t.Errorf("%s: unexpected or repeated envelope", id)
			continue
		}
		seen[id] = true
		e, err := s.Load(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if string(e.Data) != want.data {
			t.Errorf("%s: data %q, want %q", id, e.Data, want.data)
		}
		if want.due != 0 && e.Due.Unix() != want.due {
			t.Errorf("%s: due %v, want %v", id, e.Due, time.Unix(want.due, 0))
		}
		if want.due == 0 && e.Due.After(time.Now()) {
			t.Errorf("%s: due %v, want now", id, e.Due)
		}
		msgs[id.MsgID()] = true
	}
	if len(seen) != len(c.envs) {
		t.Errorf("%d envelopes, want %d", len(seen), len(c.envs))
	}
	for m := range msgs {
		rc, err := s.OpenContent(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(b) != c.content[m] {
			t.Errorf("%s: content of %d bytes (%v), want %d", m, len(b), err, len(c.content[m]))
		}
	}
}

// queueEnvelopes returns the number of envelopes in the queue u.
func queueEnvelopes(t *testing.T, u string) int {
	t.Helper()
	n := 0
	for _, err := range openTest(t, u, "checker").Walk(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}

func migrateJSON(t *testing.T, args ...string) (int, migrateSummary, string) {
	t.Helper()
	code, out, errs := runMxq(t, "", append([]string{"--json", "--node", "migrate-test", "migrate"}, args...)...)
	var sum migrateSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("migrate %v: exit %d, output %q, stderr %q: %v", args, code, out, errs, err)
	}
	return code, sum, errs
}

// TestMigrate moves queues between stores: a dry run that changes
// nothing, a copy, and a rerun with --move that copies nothing twice and
// empties SRC.
func TestMigrate(t *testing.T) {
	for _, tc := range []struct{ name, src, dst string }{
		{"file-to-minio", "file", "minio"},
		{"minio-to-gcs", "minio", "gcs"},
		{"datastore-to-file", "datastore", "file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := storeURL(t, tc.src), storeURL(t, tc.dst)
			const n = 12
			c := fillQueue(t, src, n)
			var bytes int64
			for _, b := range c.content {
				bytes += int64(len(b))
			}

			code, sum, errs := migrateJSON(t, "--dry-run", src, dst)
			if code != 0 || sum.Copied != n || sum.Envelopes != int64(len(c.envs)) || sum.Bytes != bytes {
				t.Errorf("dry run: exit %d, %+v (stderr %q); want %d messages, %d envelopes, %d bytes", code, sum, errs, n, len(c.envs), bytes)
			}
			if k := queueEnvelopes(t, dst); k != 0 {
				t.Fatalf("the dry run wrote %d envelopes to DST", k)
			}

			code, sum, errs = migrateJSON(t, "-j", "3", src, dst)
			if code != 0 || sum.Copied != n || sum.Removed != 0 || sum.Bytes != bytes {
				t.Errorf("copy: exit %d, %+v (stderr %q)", code, sum, errs)
			}
			checkQueue(t, dst, c)
			checkQueue(t, src, c)

			code, sum, errs = migrateJSON(t, "--move", src, dst)
			if code != 0 || sum.Copied != 0 || sum.Present != n || sum.Removed != n {
				t.Errorf("move: exit %d, %+v (stderr %q); want %d present and removed", code, sum, errs, n)
			}
			checkQueue(t, dst, c)
			if k := queueEnvelopes(t, src); k != 0 {
				t.Errorf("SRC still has %d envelopes after --move", k)
			}
		})
	}
}

// TestMigrateKilled kills a "migrate --move" with SIGKILL after a message
// is in DST but before SRC lost it, and resumes it: the message was never
// only in DST's hands, and no message is copied twice.
func TestMigrateKilled(t *testing.T) {
	dstKind := "minio"
	if os.Getenv("MXQ_TEST_MINIO_URL") == "" && os.Getenv("MXQ_TEST_S3_URL") == "" && os.Getenv("MXQ_REQUIRE_SERVICES") != "1" {
		dstKind = "file"
	}
	src, dst := "file://"+t.TempDir(), storeURL(t, dstKind)
	const n, stall = 15, 4
	c := fillQueue(t, src, n)

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(),
		"MXQ_SERVE_HELPER_ARGS="+strings.Join([]string{"--node", "migrate-test", "migrate", "--move", "-j", "1", src, dst}, "\n"),
		fmt.Sprintf("MXQ_MIGRATE_STALL=%d", stall))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var stalled queue.MsgID
	var log bytes.Buffer
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if m, ok := strings.CutPrefix(sc.Text(), "stalled at "); ok {
			if stalled, err = queue.ParseMsgID(m); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if stalled == 0 {
		t.Fatalf("migrate ended without reaching message %d: %s", stall, log.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	// Killed between DST's commit and SRC's delete: both have it.
	ctx := t.Context()
	for _, u := range []string{src, dst} {
		ids, err := openTest(t, u, "checker").Envelopes(ctx, stalled)
		if err != nil || len(ids) == 0 {
			t.Errorf("%s: the message in flight has envelopes %v (%v); want them in both queues", u, ids, err)
		}
	}
	if k := queueEnvelopes(t, src) + queueEnvelopes(t, dst); k <= len(c.envs) {
		t.Errorf("%d envelopes in SRC and DST together, want more than the %d stored: the one in flight in both", k, len(c.envs))
	}

	code, sum, errs := migrateJSON(t, "--move", src, dst)
	if code != 0 || sum.Present != 1 || sum.Copied != n-stall || sum.Removed != n-stall+1 {
		t.Errorf("resume: exit %d, %+v (stderr %q); want 1 present, %d copied, %d removed", code, sum, errs, n-stall, n-stall+1)
	}
	checkQueue(t, dst, c)
	if k := queueEnvelopes(t, src); k != 0 {
		t.Errorf("SRC still has %d envelopes", k)
	}
}

// TestMigrateUsage checks the arguments.
func TestMigrateUsage(t *testing.T) {
	for _, args := range [][]string{{"migrate"}, {"migrate", "file:///a"}, {"migrate", "mem://x", "mem://x"}, {"migrate", "-j", "0", "mem://a", "mem://b"}} {
		if code, _, _ := runMxq(t, "", args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

// TestMigrateDeliveredInDST copies a queue, lets DST deliver one envelope,
// and moves: the envelope DST no longer has is neither removed from SRC
// (DST never confirmed it whole) nor left for SRC's nodes to deliver again,
// but held in SRC for the operator.
func TestMigrateDeliveredInDST(t *testing.T) {
	src, dst := storeURL(t, "file"), storeURL(t, "file")
	c := fillQueue(t, src, 3) // message 2 has three envelopes
	if code, _, errs := migrateJSON(t, src, dst); code != 0 {
		t.Fatal(errs)
	}
	var delivered queue.EvpID
	for id := range c.envs {
		if strings.Contains(c.envs[id].data, "s2@") {
			delivered = id
			break
		}
	}
	if err := openTest(t, dst, "mx").DeleteEnvelope(t.Context(), delivered); err != nil {
		t.Fatal(err)
	}
	code, sum, errs := migrateJSON(t, "--move", src, dst)
	if code != 0 || sum.Present != 3 || sum.Removed != 3 || sum.Held != 1 || len(sum.Errors) != 1 || !strings.Contains(sum.Errors[0], delivered.String()) {
		t.Errorf("move: exit %d, %+v (stderr %q); want 3 removed and %s held", code, sum, errs, delivered)
	}
	es := lsJSON(t, src)
	if len(es) != 1 || es[0].ID != delivered || !es[0].Held {
		t.Errorf("SRC after the move: %+v, want only %s, held", es, delivered)
	}
}
