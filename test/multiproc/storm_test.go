package multiproc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

// The restart storm: workers drain a queue while the test SIGKILLs them at
// random moments and starts each replacement under the killed worker's
// node name, a new process of the same node. Every worker keeps its own
// fsync'd log; from the logs alone the test checks that no envelope was
// ever held by two live processes and that every envelope delivered twice
// was delivered first by a process killed before its delete.
const (
	stormSlots    = 5   // node names, one live process each at most
	stormMessages = 150 // of stormPerMsg envelopes each; twice as many on file://
	stormPerMsg   = 4
	stormLease    = 5 * time.Minute // longer than the run: no lease expires
	stormDeadline = 150 * time.Second
)

func TestRestartStorm(t *testing.T) {
	if os.Getenv("MXQ_STORM_WORKER") != "" {
		stormWorker(t)
		return
	}
	for name, u := range targets(t) {
		// Restarts under an old name: at least 20, more where they are
		// cheap. file:// drains fast, so it gets more messages: the
		// restarts that wait for a node's heartbeat to expire take as
		// long however fast the store is, and the storm must outlast
		// them.
		restarts, messages := 24, stormMessages
		if name == "file" {
			restarts, messages = 40, 4*stormMessages
		}
		t.Run(name, func(t *testing.T) { storm(t, u, restarts, messages) })
	}
}

// proc is one worker process: an incarnation of a node name.
type proc struct {
	name   string // the node name
	inc    string // name.generation: the process
	log    string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bytes.Buffer
	exited chan struct{}
	killed time.Time // when the kill was sent; zero if it was not killed
}

func storm(t *testing.T, u string, minRestarts, messages int) {
	ctx := t.Context()
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 17))
	begin := time.Now()

	want := fill(t, u, messages)
	dir := t.TempDir()
	if d := os.Getenv("MXQ_MP_KEEP"); d != "" {
		dir = filepath.Join(d, strings.ReplaceAll(t.Name(), "/", "-"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var (
		procs []*proc
		slots [stormSlots]*proc // the live process of each name, or nil
		gen   [stormSlots]int
		next  [stormSlots]time.Time // when to start a slot's replacement
	)
	start := func(i int) {
		t.Helper()
		p := &proc{name: fmt.Sprintf("w%d", i), out: new(bytes.Buffer), exited: make(chan struct{})}
		p.inc = fmt.Sprintf("%s.%d", p.name, gen[i])
		gen[i]++
		p.log = filepath.Join(dir, p.inc+".log")
		p.cmd = exec.Command(os.Args[0], "-test.run=^TestRestartStorm$", "-test.timeout=4m")
		p.cmd.Env = append(os.Environ(), "MXQ_STORM_WORKER=1", "MXQ_STORM_URL="+u, "MXQ_STORM_NAME="+p.name, "MXQ_STORM_LOG="+p.log)
		p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
		var err error
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.cmd.Wait(); close(p.exited) }()
		procs = append(procs, p)
		slots[i] = p
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			for _, p := range procs {
				if o := strings.TrimSpace(p.out.String()); o != "" && o != "PASS" {
					t.Logf("output of %s:\n%s", p.inc, p.out.String())
				}
			}
			t.Logf("logs in %s (set MXQ_MP_KEEP to keep them)", dir)
		}
	})
	for i := range stormSlots {
		start(i)
	}

	// Kill at evenly spaced points of the progress, so that the kills
	// spread over the whole drain however fast the store is.
	step := len(want) / (minRestarts + 6)
	progress := &doneCounter{}
	restarts, nextKill := 0, step
	kinds := map[string]int{}
	s, err := openStore(ctx, u, "storm-watch")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lastEmptyCheck := time.Time{}
	for {
		if time.Since(begin) > stormDeadline {
			stuck(t, s)
			t.Fatalf("the storm did not end within %v: %d restarts, %d envelopes done", stormDeadline, restarts, progress.n)
		}
		for i, p := range slots {
			if p != nil {
				select {
				case <-p.exited:
					t.Fatalf("worker %s exited by itself: %v", p.inc, p.cmd.ProcessState)
				default:
				}
			}
			if p == nil && !next[i].IsZero() && time.Now().After(next[i]) {
				start(i)
				next[i] = time.Time{}
				restarts++
			}
		}
		done := progress.count(procs)
		live := 0
		for _, p := range slots {
			if p != nil {
				live++
			}
		}
		if restarts+(stormSlots-live) < minRestarts && done >= nextKill && live >= 3 {
			nextKill += step
			var alive []int
			for i, p := range slots {
				if p != nil {
					alive = append(alive, i)
				}
			}
			i := alive[rnd.IntN(len(alive))]
			time.Sleep(time.Duration(rnd.IntN(30)) * time.Millisecond) // a random moment
			p := slots[i]
			p.killed = time.Now()
			p.cmd.Process.Signal(syscall.SIGKILL)
			<-p.exited
			slots[i] = nil
			// The replacement starts at once (its predecessor's heartbeat
			// still alive and cached by others), a little later, or after
			// the heartbeat expired (a takeover first).
			var delay time.Duration
			switch r := rnd.IntN(10); {
			case r < 5:
				kinds["at once"]++
			case r < 8:
				delay = time.Duration(rnd.IntN(400)) * time.Millisecond
				kinds["within the node TTL"]++
			default:
				delay = nodeTTL + time.Duration(200+rnd.IntN(400))*time.Millisecond
				kinds["after the node TTL"]++
			}
			next[i] = time.Now().Add(delay)
		}
		if restarts >= minRestarts && time.Since(lastEmptyCheck) > 200*time.Millisecond {
			lastEmptyCheck = time.Now()
			empty := true
			for _, err := range s.Walk(ctx) {
				if err != nil {
					t.Fatalf("Walk: %v", err)
				}
				empty = false
				break
			}
			if empty {
				break
			}
		}
		if done >= len(want) && restarts < minRestarts {
			t.Fatalf("the queue drained after only %d restarts; make the storm longer", restarts)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Stop the workers: they see their stdin close, stop their node and
	// exit.
	for _, p := range slots {
		if p != nil {
			p.stdin.Close()
		}
	}
	for _, p := range slots {
		if p == nil {
			continue
		}
		select {
		case <-p.exited:
			if !p.cmd.ProcessState.Success() {
				t.Errorf("worker %s: %v", p.inc, p.cmd.ProcessState)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("worker %s did not stop", p.inc)
		}
	}
	st := checkStorm(t, procs, want)
	t.Logf("%d envelopes in %v; %d processes, %d restarts under old names (%v); %d claims, %d of them taken from a dead process (%d by its own successor), %d defers; %d envelopes delivered twice, each after a kill before the delete; %d overlaps of live holders; %d takeovers from a live process whose heartbeat had lapsed",
		len(want), time.Since(begin).Round(100*time.Millisecond), len(procs), restarts, kinds, st.claims, st.takeovers, st.successor, st.defers, st.duplicates, st.overlaps, st.lapses)
	for range s.Walk(ctx) {
		t.Fatal("the queue is not empty after the storm")
	}
}

// stuck logs what is left in the queue: the raw records of up to 20
// envelopes and every heartbeat.
func stuck(t *testing.T, s *queue.Store) {
	ctx := t.Context()
	raw := func(key string) string {
		rc, _, err := s.Backend().Get(ctx, key)
		if err != nil {
			return err.Error()
		}
		defer rc.Close()
		b, _ := io.ReadAll(io.LimitReader(rc, 512))
		line, _, _ := bytes.Cut(b, []byte("\n"))
		return string(line)
	}
	n := 0
	for id, err := range s.Walk(ctx) {
		if err != nil || n == 20 {
			break
		}
		n++
		t.Logf("left: %v %s", id, raw(layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)})))
	}
	keys, _, _ := s.Backend().List(ctx, layout.Key(layout.Handle{Kind: layout.Node}), "", 100)
	for _, k := range keys {
		t.Logf("heartbeat %s: %s", k, raw(k))
	}
	own, _, _ := s.Backend().List(ctx, layout.Key(layout.Handle{Kind: layout.Claim}), "", 100)
	t.Logf("claim pointers: %v", own)
}

// fill commits the messages of the storm and returns their envelopes.
func fill(t *testing.T, u string, messages int) map[queue.EvpID]bool {
	ctx := t.Context()
	s, err := openStore(ctx, u, "storm-filler")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := make(map[queue.EvpID]bool)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < messages; i += 8 {
				tx, err := s.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				for range stormPerMsg {
					id, _ := tx.AddEnvelope([]byte("0")) // the attempts so far
					mu.Lock()
					want[id] = true
					mu.Unlock()
				}
				if _, err := tx.WriteContent(ctx, strings.NewReader("body")); err != nil {
					errs <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("fill: %v", err)
	}
	return want
}

// doneCounter counts the finished envelopes in the logs, reading only
// what was added since the last count.
type doneCounter struct {
	off map[string]int64
	n   int
}

func (d *doneCounter) count(procs []*proc) int {
	if d.off == nil {
		d.off = make(map[string]int64)
	}
	for _, p := range procs {
		f, err := os.Open(p.log)
		if err != nil {
			continue
		}
		f.Seek(d.off[p.log], io.SeekStart)
		b, _ := io.ReadAll(f)
		f.Close()
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			b = b[:i+1]
			d.off[p.log] += int64(len(b))
			d.n += bytes.Count(b, []byte(" done "))
		}
	}
	return d.n
}

// A storm log line: <unix nanos> <event> <evpid> <token>. The events:
//
//	try      a claim's write is about to be sent (from the backend)
//	claim    it succeeded
//	miss     it failed
//	release  a write that gives the lease up (Defer) is about to be sent
//	deliver  the delivery begins
//	done     Claim.Delete returned: the envelope is gone
//	defer    Claim.Defer begins
//	deferred Claim.Defer returned
//	lost     Claim.Delete or Claim.Defer found the lease lost
type stormEvent struct {
	at    time.Time
	kind  string
	id    queue.EvpID
	token uint64
	p     *proc
}

type stormStats struct {
	claims, takeovers, successor, defers, duplicates, overlaps, lapses int
}

// checkStorm checks the logs of every process of the storm.
func checkStorm(t *testing.T, procs []*proc, want map[queue.EvpID]bool) stormStats {
	type key struct {
		id    queue.EvpID
		token uint64
	}
	var st stormStats
	tries := make(map[key][]stormEvent)
	claims := make(map[key]stormEvent)
	missed := make(map[key]map[*proc]bool)
	releases := make(map[key]map[*proc]time.Time)
	var delivers []stormEvent
	outcome := make(map[key]map[*proc]string)
	beats := make(map[*proc][]time.Time)
	for _, p := range procs {
		f, err := os.Open(p.log)
		if errors.Is(err, os.ErrNotExist) && !p.killed.IsZero() {
			continue // killed before it wrote anything
		}
		if err != nil {
			t.Fatalf("%s: %v", p.inc, err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var ns int64
			var e stormEvent
			var id string
			if _, err := fmt.Sscanf(sc.Text(), "%d %s %s %d", &ns, &e.kind, &id, &e.token); err != nil {
				if p.killed.IsZero() {
					t.Errorf("%s: log line %q: %v", p.inc, sc.Text(), err)
				}
				continue // a killed process's last line may be cut
			}
			e.at, e.p = time.Unix(0, ns), p
			if e.id, err = queue.ParseEvpID(id); err != nil {
				t.Fatalf("%s: log line %q: %v", p.inc, sc.Text(), err)
			}
			k := key{e.id, e.token}
			set := func(m map[key]map[*proc]string, v string) {
				if m[k] == nil {
					m[k] = make(map[*proc]string)
				}
				m[k][p] = v
			}
			switch e.kind {
			case "try":
				tries[k] = append(tries[k], e)
			case "claim":
				if prev, ok := claims[k]; ok {
					t.Errorf("%v token %d claimed twice: by %s and %s", e.id, e.token, prev.p.inc, p.inc)
				}
				claims[k] = e
				st.claims++
			case "miss":
				if missed[k] == nil {
					missed[k] = make(map[*proc]bool)
				}
				missed[k][p] = true
			case "release":
				if releases[k] == nil {
					releases[k] = make(map[*proc]time.Time)
				}
				if _, ok := releases[k][p]; !ok {
					releases[k][p] = e.at
				}
			case "beat":
				beats[p] = append(beats[p], e.at)
				continue
			case "deliver":
				delivers = append(delivers, e)
			case "done", "lost":
				set(outcome, e.kind)
			case "defer":
				st.defers++
			case "deferred":
			default:
				t.Fatalf("%s: unknown event in %q", p.inc, sc.Text())
			}
		}
		f.Close()
	}
	alive := func(p *proc, at time.Time) bool { return p.killed.IsZero() || p.killed.After(at) }
	// current reports whether p's heartbeat was current at at: written
	// less than the node TTL before. A live process whose heartbeat
	// lapsed (starved of CPU) is dead to the others by the protocol, and
	// a takeover of its claims is what must happen.
	current := func(p *proc, at time.Time) bool {
		bs := beats[p]
		i, _ := slices.BinarySearchFunc(bs, at, func(b, at time.Time) int { return b.Compare(at) })
		return i > 0 && at.Sub(bs[i-1]) < nodeTTL
	}
	// lapsed reports whether p's heartbeat ever lapsed while it ran.
	lapsed := func(p *proc) bool {
		bs := beats[p]
		for i := 1; i < len(bs); i++ {
			if bs[i].Sub(bs[i-1]) >= nodeTTL {
				return true
			}
		}
		return false
	}

	// No envelope held by two live processes: each claim after the first
	// must find the holder of the token before it dead or releasing.
	for k, c := range claims {
		if k.token <= 1 {
			continue
		}
		prev := key{k.id, k.token - 1}
		var holders []*proc
		if h, ok := claims[prev]; ok {
			holders = []*proc{h.p}
		} else {
			// Its claimant was killed between the write and the log.
			for _, tr := range tries[prev] {
				if !missed[prev][tr.p] && !tr.p.killed.IsZero() {
					holders = append(holders, tr.p)
				}
			}
		}
		if len(holders) == 0 {
			t.Errorf("%v: token %d was claimed by %s, but no process claimed token %d", k.id, k.token, c.p.inc, prev.token)
			continue
		}
		overlap := true
		for _, h := range holders {
			released, ok := releases[prev][h]
			if h == c.p || !alive(h, c.at) || ok && !released.After(c.at) {
				overlap = false
			}
		}
		if overlap && !current(holders[0], c.at) {
			st.lapses++
			t.Logf("%v: %s claimed token %d at %s from %s, whose heartbeat had lapsed: a takeover by the rules",
				k.id, c.p.inc, k.token, c.at.Format("15:04:05.000000"), holders[0].inc)
			continue
		}
		if overlap {
			st.overlaps++
			t.Errorf("%v: %s claimed token %d at %s while %s, alive until %s, held token %d",
				k.id, c.p.inc, k.token, c.at.Format("15:04:05.000000"), holders[0].inc, stamp(holders[0].killed), prev.token)
			continue
		}
		if _, ok := releases[prev][holders[0]]; !ok && len(holders) == 1 && !alive(holders[0], c.at) {
			st.takeovers++
			if holders[0].name == c.p.name {
				st.successor++
			}
		}
	}

	// Deliveries: every envelope at least once; a second delivery only
	// after the first deliverer was killed before its delete finished.
	per := make(map[queue.EvpID][]stormEvent)
	for _, d := range delivers {
		per[d.id] = append(per[d.id], d)
	}
	for id := range want {
		ds := per[id]
		if len(ds) == 0 {
			t.Errorf("%v was never delivered", id)
			continue
		}
		done := 0
		for _, d := range ds {
			switch outcome[key{id, d.token}][d.p] {
			case "done":
				done++
			case "lost":
				if lapsed(d.p) {
					continue // taken over while its heartbeat had lapsed
				}
				t.Errorf("%v: %s delivered it under token %d and then found its lease lost: a duplicate delivery no kill explains", id, d.p.inc, d.token)
			default:
				if d.p.killed.IsZero() {
					t.Errorf("%v: %s delivered it under token %d and never deleted it, yet was not killed", id, d.p.inc, d.token)
				}
			}
		}
		if done > 1 {
			t.Errorf("%v deleted %d times", id, done)
		}
		if len(ds) > 1 {
			st.duplicates++
		}
	}
	for id := range per {
		if !want[id] {
			t.Errorf("%v delivered, but it was never committed", id)
		}
	}
	return st
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "the end"
	}
	return t.Format("15:04:05.000000")
}

// stormWorker drains the queue as a node of the storm until its stdin
// closes, logging what it does.
func stormWorker(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	name := os.Getenv("MXQ_STORM_NAME")
	lf, err := os.OpenFile(os.Getenv("MXQ_STORM_LOG"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	var logMu sync.Mutex
	logf := func(kind string, id queue.EvpID, token uint64) {
		logMu.Lock()
		defer logMu.Unlock()
		_, err := fmt.Fprintf(lf, "%d %s %s %d\n", time.Now().UnixNano(), kind, id, token)
		if err == nil {
			err = lf.Sync()
		}
		if err != nil {
			// Not t.Fatal: the backend logs from the Store's goroutines.
			fmt.Fprintf(os.Stderr, "log: %v\n", err)
			os.Exit(3)
		}
	}
	// The Store runs on a backend that logs every claim this process
	// writes, whichever path makes it (Due, a takeover in RunNode).
	opened, err := openStore(ctx, os.Getenv("MXQ_STORM_URL"), name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := queue.New(&claimLog{Backend: opened.Backend(), node: name, logf: logf}, &queue.Options{
		Node:              name,
		LeaseDuration:     stormLease,
		HeartbeatInterval: heartbeat,
		NodeTTL:           nodeTTL,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stop) }()

	taken := make(chan []queue.EvpID, 64)
	nodeCtx, stopNode := context.WithCancel(ctx)
	nodeDone := make(chan struct{})
	go func() {
		defer close(nodeDone)
		s.RunNode(nodeCtx, &queue.NodeOptions{
			ScanInterval: heartbeat,
			OnTakeover:   func(ids []queue.EvpID) { taken <- ids },
			OnError:      func(err error) { fmt.Fprintf(os.Stderr, "node: %v\n", err) },
		})
	}()
	finish := func(c *queue.Claim) {
		id, token := c.Envelope().ID, c.Lease().Token
		attempts, _ := strconv.Atoi(string(c.Envelope().Data))
		var err error
		if attempts < 2 && rand.IntN(8) == 0 {
			// A temporary failure: try again a little later.
			logf("defer", id, token)
			err = c.Defer(ctx, []byte(strconv.Itoa(attempts+1)), time.Now().Add(time.Duration(rand.IntN(500))*time.Millisecond))
			if err == nil {
				logf("deferred", id, token)
			}
		} else {
			logf("deliver", id, token)
			time.Sleep(time.Duration(1+rand.IntN(6)) * time.Millisecond)
			err = c.Delete(ctx)
			if err == nil {
				logf("done", id, token)
			}
		}
		if errors.Is(err, queue.ErrLeaseLost) {
			logf("lost", id, token)
		} else if err != nil {
			t.Fatalf("%v: %v", id, err)
		}
	}
	for deadline := time.Now().Add(4 * time.Minute); time.Now().Before(deadline); {
		select {
		case <-stop:
			stopNode()
			<-nodeDone
			return
		case ids := <-taken:
			for _, id := range ids {
				if c, err := s.Resume(ctx, id); err == nil {
					finish(c)
				}
			}
			continue
		default:
		}
		due, err := s.Due(ctx, 8)
		if err != nil {
			t.Fatalf("Due: %v", err)
		}
		if len(due) == 0 {
			time.Sleep(time.Duration(50+rand.IntN(100)) * time.Millisecond)
			continue
		}
		var batch []*queue.Claim
		for _, e := range due {
			c, err := s.ClaimEnvelope(ctx, e, stormLease)
			if errors.Is(err, queue.ErrConflict) || errors.Is(err, queue.ErrNotFound) {
				continue
			}
			if err != nil {
				t.Fatalf("ClaimEnvelope: %v", err)
			}
			batch = append(batch, c)
		}
		for _, c := range batch {
			finish(c)
		}
	}
	t.Fatal("the storm did not end in time")
}

// claimLog is a Backend that logs the envelope writes of its node: a
// claim (the node becomes the holder) before it is sent and its outcome
// after, and a release before it is sent. It reads the record header,
// "mxq-evp/1 " (or "/2 ") and a line of JSON.
// beatID stands in the envelope ID field of a heartbeat's log line.
const beatID = queue.EvpID(1<<32 | 1)

type claimLog struct {
	driver.Backend
	node string
	logf func(kind string, id queue.EvpID, token uint64)
}

func (c *claimLog) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	if strings.HasSuffix(key, "node/"+c.node) {
		// A heartbeat: logged once written, so that the check can tell
		// a live process whose heartbeat lapsed (a starved machine) from
		// one whose claim was taken while its heartbeat was current.
		v, err := c.Backend.Put(ctx, key, r, opts)
		if err == nil {
			c.logf("beat", beatID, 0)
		}
		return v, err
	}
	i := strings.LastIndex(key, "evp/")
	if i < 0 || opts.IfMatch == "" {
		return c.Backend.Put(ctx, key, r, opts)
	}
	id, err := queue.ParseEvpID(key[strings.LastIndexByte(key, '/')+1:])
	if err != nil {
		return c.Backend.Put(ctx, key, r, opts)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	// "mxq-evp/1 ", or "mxq-evp/2 " for a record with its message's
	// content after the data.
	line, _, _ := bytes.Cut(bytes.TrimPrefix(bytes.TrimPrefix(b, []byte("mxq-evp/1 ")), []byte("mxq-evp/2 ")), []byte("\n"))
	var h struct {
		Holder string `json:"h"`
		Token  uint64 `json:"t"`
		Gone   bool   `json:"g"`
	}
	if err := json.Unmarshal(line, &h); err != nil {
		return "", fmt.Errorf("storm: envelope record header %q: %v", line, err)
	}
	claim := h.Holder == c.node && !h.Gone
	switch {
	case claim:
		c.logf("try", id, h.Token)
	case h.Holder == "" && !h.Gone:
		c.logf("release", id, h.Token)
	}
	v, err := c.Backend.Put(ctx, key, bytes.NewReader(b), opts)
	if claim {
		if err == nil {
			c.logf("claim", id, h.Token)
		} else {
			c.logf("miss", id, h.Token)
		}
	}
	return v, err
}
