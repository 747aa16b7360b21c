// Package outage proves the queue through a real store outage: a MinIO
// server of the test's own is killed mid-run and started again (or
// paused and resumed), while a writer commits messages and a worker
// claims and updates envelopes through one Store, over the s3 and the
// minio adapter. The test reports what the clients saw, and checks that
// every error was a transient one, that the same Store works again once
// the server is back, and that nothing acknowledged was lost.
//
// It needs the MinIO binary that scripts/services caches, named by
// MXQ_MINIO_BIN; without it the test skips, or fails with
// MXQ_REQUIRE_SERVICES=1.
package outage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	miniogo "github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/mxqueue/mxq/adapters/minio"
	"github.com/mxqueue/mxq/adapters/s3"
	"github.com/mxqueue/mxq/internal/miniotest"
	"github.com/mxqueue/mxq/queue"
)

const (
	// callTimeout bounds every Store call of the workload.
	callTimeout = 3 * time.Second
	// outageFor is how long the server stays down.
	outageFor = 3 * time.Second
	// acks is how many commits are acknowledged before the outage, and
	// again after it, before the run ends.
	acks = 8
	// waitFor bounds each wait of the test for progress.
	waitFor = 60 * time.Second
)

// result is one Store call of the workload.
type result struct {
	op    string
	start time.Time
	took  time.Duration
	err   error
}

// committed is a message a commit was tried for.
type committed struct {
	m       queue.MsgID
	ids     []queue.EvpID
	content []byte
	err     error
}

// recorder collects the workload's results.
type recorder struct {
	mu       sync.Mutex
	results  []result
	commits  []committed
	updated  map[queue.EvpID]bool // acknowledged: holds "updated"
	unknown  map[queue.EvpID]bool // failed: holds its old data or "updated"
	lastAck  time.Time
	ackCount int
}

func (r *recorder) add(op string, start time.Time, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.results = append(r.results, result{op, start, time.Since(start), err})
}

func (r *recorder) acked() (int, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ackCount, r.lastAck
}

// waitAcks waits until n commits are acknowledged in all.
func (r *recorder) waitAcks(t *testing.T, n int, why string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		if got, _ := r.acked(); got >= n {
			return
		}
		if time.Now().After(deadline) {
			got, _ := r.acked()
			r.mu.Lock()
			var last error
			for _, res := range r.results {
				if res.err != nil {
					last = res.err
				}
			}
			r.mu.Unlock()
			t.Fatalf("%s: %d commits acknowledged, want %d; the last error: %v", why, got, n, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// commit commits message i: two envelopes and 1 to 64 KiB of content.
func commit(ctx context.Context, st *queue.Store, rng *mrand.Rand, i int) committed {
	c := committed{content: make([]byte, 1+rng.IntN(64<<10))}
	for j := range c.content {
		c.content[j] = byte('a' + (i+j)%26)
	}
	tx, err := st.Begin(ctx)
	if err != nil {
		c.err = err
		return c
	}
	c.m = tx.ID()
	for j := range 2 {
		id, err := tx.AddEnvelope(fmt.Appendf(nil, "message %d envelope %d", i, j))
		if err != nil {
			c.err = err
			tx.Rollback(ctx)
			return c
		}
		c.ids = append(c.ids, id)
	}
	if _, err := tx.WriteContent(ctx, bytes.NewReader(c.content)); err != nil {
		c.err = err
		tx.Rollback(ctx)
		return c
	}
	c.err = tx.Commit(ctx)
	return c
}

// TestRealOutage runs the workload through an outage of each kind, on each
// adapter: "kill" kills MinIO with SIGKILL and starts it again on the same
// directory, so requests fail at once; "pause" stops it with SIGSTOP and
// resumes it, so requests hang until their deadline.
func TestRealOutage(t *testing.T) {
	srv := miniotest.New(t)
	srv.Start(t)
	ctx := t.Context()
	t.Setenv("AWS_ACCESS_KEY_ID", srv.User)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.Pass)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("MINIO_ROOT_USER", srv.User)
	t.Setenv("MINIO_ROOT_PASSWORD", srv.Pass)
	mc, err := miniogo.New(srv.Addr, &miniogo.Options{Creds: credentials.NewStaticV4(srv.User, srv.Pass, "")})
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.MakeBucket(ctx, "outage", miniogo.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	mux := new(queue.URLMux)
	mux.Register(s3.Scheme, new(s3.URLOpener))
	mux.Register(minio.Scheme, new(minio.URLOpener))
	for _, scheme := range []string{"s3", "minio"} {
		for _, mode := range []string{"kill", "pause"} {
			t.Run(scheme+"/"+mode, func(t *testing.T) {
				prefix := scheme + "-" + mode + "/"
				u := fmt.Sprintf("s3://outage/%s?endpoint=http://%s&use_path_style=true&region=us-east-1", prefix, srv.Addr)
				if scheme == "minio" {
					u = fmt.Sprintf("minio://%s/outage/%s?secure=false&region=us-east-1", srv.Addr, prefix)
				}
				runOutage(t, mux, u, srv, mode)
			})
		}
	}
}

func runOutage(t *testing.T, mux *queue.URLMux, u string, srv *miniotest.Server, mode string) {
	ctx := t.Context()
	st, err := mux.OpenOptions(ctx, u, &queue.Options{Node: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rec := &recorder{updated: make(map[queue.EvpID]bool), unknown: make(map[queue.EvpID]bool)}

	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	wg.Add(2)
	go func() { // the writer
		defer wg.Done()
		rng := mrand.New(mrand.NewPCG(1, 2))
		for i := 0; wctx.Err() == nil; i++ {
			cctx, cancel := context.WithTimeout(wctx, callTimeout)
			start := time.Now()
			c := commit(cctx, st, rng, i)
			cancel()
			if wctx.Err() != nil && c.err != nil {
				return // the run is over, not the store
			}
			rec.add("commit", start, c.err)
			rec.mu.Lock()
			rec.commits = append(rec.commits, c)
			if c.err == nil {
				rec.ackCount++
				rec.lastAck = time.Now()
			}
			rec.mu.Unlock()
			if c.err != nil {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	go func() { // the worker: claims and updates each acknowledged envelope once
		defer wg.Done()
		done := make(map[queue.EvpID]bool)
		for wctx.Err() == nil {
			var id queue.EvpID
			rec.mu.Lock()
			for _, c := range rec.commits {
				if c.err == nil && !done[c.ids[0]] {
					id = c.ids[0]
					break
				}
			}
			rec.mu.Unlock()
			if id == 0 {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			cctx, cancel := context.WithTimeout(wctx, callTimeout)
			start := time.Now()
			c, err := st.Claim(cctx, id, time.Minute)
			if wctx.Err() != nil {
				cancel()
				return
			}
			rec.add("claim", start, err)
			if err == nil {
				start = time.Now()
				err = c.Update(cctx, []byte("updated"))
				if wctx.Err() == nil {
					rec.add("update", start, err)
				}
				rec.mu.Lock()
				if err == nil {
					rec.updated[id] = true
				} else {
					rec.unknown[id] = true
				}
				rec.mu.Unlock()
				done[id] = true
				c.Release(cctx)
			} else {
				time.Sleep(50 * time.Millisecond)
			}
			cancel()
		}
	}()

	rec.waitAcks(t, acks, "before the outage")
	began := time.Now()
	if mode == "kill" {
		srv.Kill()
	} else {
		srv.Signal(t, syscall.SIGSTOP)
	}
	time.Sleep(outageFor)
	before, _ := rec.acked()
	if mode == "kill" {
		srv.Start(t)
	} else {
		srv.Signal(t, syscall.SIGCONT)
	}
	ended := time.Now()
	rec.waitAcks(t, before+acks, "after the outage: the same Store does not recover")
	stop()
	wg.Wait()

	// What the clients saw.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var during, okDuring, unavailable, deadline int
	var slowest time.Duration
	firstAck := time.Duration(-1)
	for _, r := range rec.results {
		// A call counts as during the outage if it was running at any
		// time between the kill (or pause) and the server's return.
		if r.start.Add(r.took).Before(began) || r.start.After(ended) {
			if r.err == nil && r.op == "commit" && r.start.After(ended) && firstAck < 0 {
				firstAck = r.start.Add(r.took).Sub(ended)
			}
			if r.err != nil && r.start.After(ended.Add(callTimeout)) {
				t.Errorf("%s failed after the server was back: %v", r.op, r.err)
			}
			continue
		}
		during++
		slowest = max(slowest, r.took)
		switch {
		case r.err == nil:
			okDuring++
		case errors.Is(r.err, queue.ErrUnavailable):
			unavailable++
		case errors.Is(r.err, context.DeadlineExceeded):
			deadline++
		default:
			t.Errorf("%s during the outage: %v, want ErrUnavailable or the deadline", r.op, r.err)
		}
	}
	acked := rec.ackCount
	t.Logf("%s outage of %v (server back after %v): %d calls ran during it: %d succeeded, %d ErrUnavailable, %d deadline; slowest %v (call timeout %v); first commit acknowledged %v after the server was back; %d commits acknowledged in all, %d failed",
		mode, outageFor, ended.Sub(began).Round(time.Millisecond), during, okDuring, unavailable, deadline, slowest.Round(time.Millisecond), callTimeout, firstAck.Round(time.Millisecond), acked, len(rec.commits)-acked)

	// Nothing acknowledged is lost: a new Store finds every acknowledged
	// message whole; a failed commit is whole or absent.
	clock := time.Now().Add(time.Hour)
	check, err := mux.OpenOptions(ctx, u, &queue.Options{Node: "checker", Clock: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close()
	for _, c := range rec.commits {
		if c.m == 0 {
			continue
		}
		got, err := check.Envelopes(ctx, c.m)
		if err != nil {
			t.Fatalf("Envelopes(%v): %v", c.m, err)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(c.ids))
		if c.err != nil && len(got) == 0 {
			continue // not committed: absent
		}
		if !slices.Equal(got, want) {
			t.Fatalf("message %v (commit error %v) has envelopes %v, want %v", c.m, c.err, got, want)
		}
		for j, id := range c.ids {
			e, err := check.Load(ctx, id)
			if err != nil {
				t.Fatalf("Load(%v) of a message whose commit gave %v: %v", id, c.err, err)
			}
			d := string(e.Data)
			orig := fmt.Sprintf("envelope %d", j)
			switch {
			case rec.updated[id] && d != "updated":
				t.Fatalf("%v: the update was acknowledged, but it holds %q", id, d)
			case !rec.updated[id] && !rec.unknown[id] && !bytes.HasSuffix(e.Data, []byte(orig)):
				t.Fatalf("%v holds %q", id, d)
			}
		}
		rc, err := check.OpenContent(ctx, c.m)
		if err != nil {
			t.Fatalf("OpenContent(%v): %v", c.m, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(b, c.content) {
			t.Fatalf("content of %v: %d bytes (%v), want %d", c.m, len(b), err, len(c.content))
		}
	}
	// What failed commits left is swept once their grace is past.
	if _, err := check.Sweep(ctx); err != nil {
		t.Fatalf("Sweep: %v", err)
	}
}
