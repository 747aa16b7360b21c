// Package multiproc proves the shared queue with separate OS processes:
// several workers drain one queue while one of them is killed with SIGKILL
// (TestMultiProcess), or while many are, each replaced by a new process
// under the killed one's node name (TestRestartStorm); the workers' logs
// show that no envelope was held by two live workers at once and that none
// was lost. The workers are the test binary itself, run again.
package multiproc

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/mxqueue/mxq/adapters/all"
	"github.com/mxqueue/mxq/queue"
)

const (
	workers   = 4
	messages  = 500
	perMsg    = 4
	lease     = 3 * time.Second
	heartbeat = 200 * time.Millisecond
	nodeTTL   = time.Second
)

// targets returns the queue URLs to run on: a fresh file:// queue always,
// and the MinIO of scripts/services when its variables are set.
func targets(t *testing.T) map[string]string {
	m := map[string]string{"file": "file://" + t.TempDir()}
	var rnd [6]byte
	rand.Read(rnd[:])
	run := "multiproc-" + hex.EncodeToString(rnd[:])
	for _, v := range []struct{ name, env string }{{"s3", "MXQ_TEST_S3_URL"}, {"minio", "MXQ_TEST_MINIO_URL"}} {
		raw := os.Getenv(v.env)
		if raw == "" {
			if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
				t.Fatalf("%s is not set and MXQ_REQUIRE_SERVICES=1", v.env)
			}
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", v.env, err)
		}
		if !queue.DefaultURLMux().ValidScheme(u.Scheme) {
			continue // the adapter is not built in
		}
		u.Path = strings.TrimSuffix(u.Path, "/") + "/" + run + "/"
		m[v.name] = u.String()
		break // one S3-compatible run is enough
	}
	return m
}

func TestMultiProcess(t *testing.T) {
	if os.Getenv("MXQ_MP_WORKER") != "" {
		worker(t)
		return
	}
	for name, u := range targets(t) {
		t.Run(name, func(t *testing.T) { drain(t, u) })
	}
}

func openStore(ctx context.Context, u, node string) (*queue.Store, error) {
	return queue.DefaultURLMux().OpenOptions(ctx, u, &queue.Options{
		Node:              node,
		LeaseDuration:     lease,
		HeartbeatInterval: heartbeat,
		NodeTTL:           nodeTTL,
	})
}

func drain(t *testing.T, u string) {
	ctx := t.Context()
	s, err := openStore(ctx, u, "filler")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := make(map[queue.EvpID]bool)
	for i := range messages {
		tx, err := s.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for j := range perMsg {
			id, _ := tx.AddEnvelope(fmt.Appendf(nil, "%d/%d", i, j))
			want[id] = true
		}
		if _, err := tx.WriteContent(ctx, strings.NewReader("body")); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	if d := os.Getenv("MXQ_MP_KEEP"); d != "" {
		dir = d
	}
	var cmds []*exec.Cmd
	for w := range workers {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMultiProcess$", "-test.timeout=5m")
		cmd.Env = append(os.Environ(), "MXQ_MP_WORKER="+strconv.Itoa(w), "MXQ_MP_URL="+u, "MXQ_MP_LOG="+filepath.Join(dir, fmt.Sprintf("w%d.log", w)))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("worker output:\n%s", out.String())
			}
		})
	}
	// Kill worker 0 once it has finished an eighth of the work.
	victim := filepath.Join(dir, "w0.log")
	deadline := time.Now().Add(2 * time.Minute)
	var killedAt time.Time
	for time.Now().Before(deadline) {
		// Kill it while it holds claims it has not finished.
		// The victim delivers slowly, so once it has claims it holds
		// them for a while: the kill lands while it holds some.
		if claimed, done := counts(victim); done >= 16 && claimed > done {
			cmds[0].Process.Signal(syscall.SIGKILL)
			killedAt = time.Now()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if killedAt.IsZero() {
		t.Fatal("worker 0 did not get going")
	}
	cmds[0].Wait()
	for _, cmd := range cmds[1:] {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("worker: %v", err)
			}
		case <-time.After(3 * time.Minute):
			for id, err := range s.Walk(ctx) {
				e, lerr := s.Load(ctx, id)
				t.Logf("left in the queue: %v %v: %+v %v", id, err, e, lerr)
			}
			t.Fatal("a worker did not finish")
		}
	}
	check(t, dir, want, killedAt)
	for id, err := range s.Walk(ctx) {
		t.Fatalf("queue not empty after the drain: %v %v", id, err)
	}
}

func counts(path string) (claimed, done int) {
	b, _ := os.ReadFile(path)
	return bytes.Count(b, []byte(" claim ")), bytes.Count(b, []byte(" done "))
}

// A log line: <unix nanos> <event> <evpid> <worker> <token>
type event struct {
	at     time.Time
	kind   string
	id     queue.EvpID
	worker string
	token  uint64
}

func check(t *testing.T, dir string, want map[queue.EvpID]bool, killedAt time.Time) {
	claims := make(map[queue.EvpID][]event)
	done := make(map[queue.EvpID][]event)
	for w := range workers {
		f, err := os.Open(filepath.Join(dir, fmt.Sprintf("w%d.log", w)))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var ns int64
			var e event
			var id string
			if _, err := fmt.Sscanf(sc.Text(), "%d %s %s %s %d", &ns, &e.kind, &id, &e.worker, &e.token); err != nil {
				continue // the victim's last line may be cut
			}
			e.at = time.Unix(0, ns)
			if e.id, err = queue.ParseEvpID(id); err != nil {
				t.Fatalf("log line %q: %v", sc.Text(), err)
			}
			switch e.kind {
			case "claim":
				claims[e.id] = append(claims[e.id], e)
			case "done":
				done[e.id] = append(done[e.id], e)
			}
		}
		f.Close()
	}
	retaken := 0
	var takeover time.Duration
	unlogged := 0
	for id := range want {
		cs := claims[id]
		slices.SortFunc(cs, func(a, b event) int { return cmp.Compare(a.token, b.token) })
		switch {
		case len(done[id]) == 0 && len(cs) > 0 && cs[len(cs)-1].worker == "w0":
			// Deleted by the victim, which was killed before it could log
			// it: the final check that the queue is empty tells.
			unlogged++
		case len(done[id]) != 1:
			t.Errorf("%v finished %d times", id, len(done[id]))
		}
		for i := 1; i < len(cs); i++ {
			prev, next := cs[i-1], cs[i]
			// A second claim is legitimate only when the first holder
			// was dead or its lease had expired.
			dead := prev.worker == "w0" && next.at.After(killedAt)
			expired := next.at.Sub(prev.at) >= lease
			if !dead && !expired && prev.worker != next.worker {
				t.Errorf("%v claimed by %s (token %d) at %v while %s held it since %v (token %d); all claims %+v", id, next.worker, next.token, next.at, prev.worker, prev.at, prev.token, cs)
			}
			retaken++
			if dead {
				if d := next.at.Sub(killedAt); d > takeover {
					takeover = d
				}
			}
		}
	}
	if len(done)+unlogged != len(want) {
		t.Errorf("%d envelopes finished, want %d", len(done)+unlogged, len(want))
	}
	per := make(map[string]int)
	for _, es := range done {
		per[es[0].worker]++
	}
	t.Logf("%d envelopes, finished per worker %v; %d claims of the killed worker were taken over, the last %v after the kill (node TTL %v)", len(want), per, retaken, takeover.Round(time.Millisecond), nodeTTL)
	if retaken == 0 {
		t.Error("the killed worker held no envelope, so the test proved no takeover; kill it earlier")
	}
}

// worker drains the queue, logging every claim and every finish.
func worker(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	name := "w" + os.Getenv("MXQ_MP_WORKER")
	delivery := time.Millisecond
	if name == "w0" {
		delivery = 50 * time.Millisecond // the victim: see drain
	}
	s, err := openStore(ctx, os.Getenv("MXQ_MP_URL"), name)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	log, err := os.OpenFile(os.Getenv("MXQ_MP_LOG"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	logf := func(kind string, id queue.EvpID, token uint64) {
		fmt.Fprintf(log, "%d %s %s %s %d\n", time.Now().UnixNano(), kind, id, name, token)
	}
	taken := make(chan []queue.EvpID, 16)
	go s.RunNode(ctx, &queue.NodeOptions{ScanInterval: heartbeat, OnTakeover: func(ids []queue.EvpID) { taken <- ids }})
	finish := func(c *queue.Claim, log bool) {
		id := c.Envelope().ID
		if log {
			logf("claim", id, c.Lease().Token)
		}
		time.Sleep(delivery) // the delivery
		err := c.Delete(ctx)
		if errors.Is(err, queue.ErrLeaseLost) {
			logf("lost", id, c.Lease().Token)
			return
		}
		if err != nil {
			t.Fatalf("Delete: %v", err)
		}
		logf("done", id, c.Lease().Token)
	}
	idle := 0
	for deadline := time.Now().Add(4 * time.Minute); time.Now().Before(deadline); {
		select {
		case ids := <-taken:
			// Envelopes taken over from a dead worker: deliver them.
			for _, id := range ids {
				c, err := s.Resume(ctx, id)
				if err != nil {
					continue // finished or taken again meanwhile
				}
				finish(c, true)
			}
		default:
		}
		due, err := s.Due(ctx, 8)
		if err != nil {
			t.Fatalf("Due: %v", err)
		}
		if len(due) == 0 {
			// Done when nothing is left at all, not just nothing due.
			empty := true
			for range s.Walk(ctx) {
				empty = false
				break
			}
			if empty {
				return
			}
			idle++
			time.Sleep(100 * time.Millisecond)
			continue
		}
		idle = 0
		// Claim a batch first, so that a worker holds several envelopes
		// at any time, as a real one delivering in parallel would.
		var batch []*queue.Claim
		for _, e := range due {
			c, err := s.ClaimEnvelope(ctx, e, lease)
			if errors.Is(err, queue.ErrConflict) || errors.Is(err, queue.ErrNotFound) {
				continue
			}
			if err != nil {
				t.Fatalf("ClaimEnvelope: %v", err)
			}
			logf("claim", e.ID, c.Lease().Token)
			batch = append(batch, c)
		}
		for _, c := range batch {
			finish(c, false)
		}
	}
	t.Fatal("the queue did not drain in time")
}
