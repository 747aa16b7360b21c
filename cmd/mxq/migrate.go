package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/mxqueue/mxq/queue"
)

var migrateFlags struct {
	move   bool
	jobs   int
	dryRun bool
	lease  time.Duration
}

func init() {
	register(&command{
		name:  "migrate",
		args:  "[--move] [-j N] [--dry-run] SRC DST",
		short: "copy every committed message from one queue URL to another",
		long: `Copies every committed message of the queue SRC, with its envelopes, their
data and due times, into the queue DST, under the same message and envelope
IDs. Any scheme to any scheme. The content is read from SRC through its
checksum, written to DST with a new one, and read back from DST and compared
before the message counts as copied.

With --move, each message is removed from SRC once DST has it whole and
verified. Its envelopes are claimed in SRC first, as a node would, so that
the nodes still running on SRC do not deliver them while they move; a
message with an envelope in delivery is left for a later run.

A rerun after an interrupt copies only what is missing: a message that DST
has already is not copied again (and, with --move, removed from SRC after
the check). Messages in flight are bounded by -j, so memory does not grow
with the queue. Progress goes to standard error: a bar on a terminal, a
line every few seconds otherwise; --json prints the summary as JSON.

migrate acts as a node named after --node (default "migrate-" and the host
name), never the name of an MX: one migrate per name at a time.`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&migrateFlags.move, "move", false, "remove each message from SRC once DST has it whole and verified")
			fs.IntVar(&migrateFlags.jobs, "j", 4, "copy this many messages at once")
			fs.BoolVar(&migrateFlags.dryRun, "dry-run", false, "report what would be copied, and copy nothing")
			fs.DurationVar(&migrateFlags.lease, "lease", time.Hour, "with --move, how long the claim on a message in SRC lasts")
		},
		run: runMigrate,
	})
}

// migrateSummary is what a migration did, or with --dry-run, would do.
type migrateSummary struct {
	DryRun    bool     `json:"dry_run,omitempty"`
	Messages  int64    `json:"messages"`  // in SRC when the run began
	Copied    int64    `json:"copied"`    // copied to DST by this run
	Present   int64    `json:"present"`   // in DST already
	Removed   int64    `json:"removed"`   // removed from SRC (--move)
	Busy      int64    `json:"busy"`      // left for a later run: in delivery, or open in DST
	Held      int64    `json:"held"`      // envelopes held in SRC: not in DST, though their message is
	Failed    int64    `json:"failed"`    // errors; see Errors
	Envelopes int64    `json:"envelopes"` // envelopes copied, or to copy
	Bytes     int64    `json:"bytes"`     // content bytes copied, or to copy
	Seconds   float64  `json:"seconds"`
	Errors    []string `json:"errors,omitempty"`
}

// migrator copies messages from src to dst.
type migrator struct {
	src, dst *queue.Store
	move     bool
	dryRun   bool
	lease    time.Duration

	copied, present, removed, busy, held, failed, envelopes, bytes, done atomic.Int64

	mu     sync.Mutex
	errs   []string
	onDone func() // called after each message, for progress
	onByte func(n int)
}

// migrateStall, if set (by tests), is called after a message is in DST and
// before it is removed from SRC.
var migrateStall func(m queue.MsgID)

// openNode opens the queue u as the node named node.
func (c *cli) openNode(ctx context.Context, u, node string) (*queue.Store, error) {
	old, oldNode := c.queueURL, c.node
	c.queueURL, c.node = u, node
	defer func() { c.queueURL, c.node = old, oldNode }()
	return c.open(ctx)
}

// toolNode is the node name of a tool that claims envelopes: --node, or
// verb and the host name, never the host's own node name, which its MX
// uses.
func (c *cli) toolNode(verb string) string {
	if c.node != "" {
		return c.node
	}
	n := verb + "-" + defaultNode()
	if len(n) > 64 {
		n = n[:64]
	}
	return n
}

func runMigrate(ctx context.Context, c *cli, args []string) error {
	if len(args) != 2 {
		return usagef("want SRC and DST queue URLs")
	}
	if migrateFlags.jobs < 1 {
		return usagef("-j must be at least 1")
	}
	if args[0] == args[1] {
		return usagef("SRC and DST are the same queue")
	}
	node := c.toolNode("migrate")
	src, err := c.openNode(ctx, args[0], node)
	if err != nil {
		return fmt.Errorf("SRC: %w", err)
	}
	defer src.Close()
	dst, err := c.openNode(ctx, args[1], node)
	if err != nil {
		return fmt.Errorf("DST: %w", err)
	}
	defer dst.Close()
	mg := &migrator{src: src, dst: dst, move: migrateFlags.move, dryRun: migrateFlags.dryRun, lease: migrateFlags.lease}
	start := time.Now()

	// A first pass counts the messages, by listing only, for the ETA.
	total, err := countMessages(ctx, src)
	if err != nil {
		return fmt.Errorf("SRC: %w", err)
	}
	stopProgress := mg.progress(c, total)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var beatErr atomic.Pointer[error]
	if mg.move && !mg.dryRun {
		// The claims in SRC hold while this node heartbeats.
		if err := src.Heartbeat(ctx); err != nil {
			return fmt.Errorf("SRC: %w", err)
		}
		go func() {
			t := time.NewTicker(5 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if err := src.Heartbeat(ctx); errors.Is(err, queue.ErrConflict) {
						beatErr.Store(&err)
						cancel()
						return
					}
				}
			}
		}()
	}

	work := make(chan msgWork, migrateFlags.jobs)
	var wg sync.WaitGroup
	for range migrateFlags.jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range work {
				mg.one(ctx, w.m, w.evps)
				mg.done.Add(1)
				if mg.onDone != nil {
					mg.onDone()
				}
			}
		}()
	}
	walkErr := groupByMessage(ctx, src, func(m queue.MsgID, evps []queue.EvpID) bool {
		select {
		case work <- msgWork{m, evps}:
			return true
		case <-ctx.Done():
			return false
		}
	})
	close(work)
	wg.Wait()
	stopProgress()

	sum := migrateSummary{
		DryRun: mg.dryRun, Messages: total,
		Copied: mg.copied.Load(), Present: mg.present.Load(), Removed: mg.removed.Load(),
		Busy: mg.busy.Load(), Held: mg.held.Load(), Failed: mg.failed.Load(),
		Envelopes: mg.envelopes.Load(), Bytes: mg.bytes.Load(),
		Seconds: time.Since(start).Seconds(), Errors: mg.errs,
	}
	if c.json {
		if err := c.printJSON(sum); err != nil {
			return err
		}
	} else {
		verb := "copied"
		if mg.dryRun {
			verb = "to copy"
		}
		fmt.Fprintf(c.stdout, "%d message(s) in SRC: %d %s (%d envelope(s), %s), %d in DST already, %d removed from SRC, %d busy, %d failed, in %.1fs\n",
			total, sum.Copied, verb, sum.Envelopes, humanBytes(sum.Bytes), sum.Present, sum.Removed, sum.Busy, sum.Failed, sum.Seconds)
		if sum.Held > 0 {
			fmt.Fprintf(c.stdout, "%d envelope(s) held in SRC for a decision: see below\n", sum.Held)
		}
		for _, e := range sum.Errors {
			fmt.Fprintf(c.stdout, "  %s\n", e)
		}
	}
	switch {
	case beatErr.Load() != nil:
		return fmt.Errorf("another process took over node %s in SRC: %w", node, *beatErr.Load())
	case walkErr != nil:
		return fmt.Errorf("SRC: %w", walkErr)
	case ctx.Err() != nil:
		return ctx.Err()
	case sum.Failed > 0:
		return fmt.Errorf("%d message(s) failed", sum.Failed)
	case sum.Busy > 0:
		return fmt.Errorf("%d message(s) were busy; run again to move them", sum.Busy)
	}
	return nil
}

type msgWork struct {
	m    queue.MsgID
	evps []queue.EvpID
}

// groupByMessage walks s and calls fn with the envelopes of each message,
// one message at a time, until fn returns false.
func groupByMessage(ctx context.Context, s *queue.Store, fn func(queue.MsgID, []queue.EvpID) bool) error {
	var cur queue.MsgID
	var evps []queue.EvpID
	for id, err := range s.Walk(ctx) {
		if err != nil {
			return err
		}
		if m := id.MsgID(); m != cur {
			if len(evps) > 0 && !fn(cur, evps) {
				return ctx.Err()
			}
			cur, evps = m, nil
		}
		evps = append(evps, id)
	}
	if len(evps) > 0 {
		fn(cur, evps)
	}
	return ctx.Err()
}

func countMessages(ctx context.Context, s *queue.Store) (int64, error) {
	var n int64
	var last queue.MsgID
	for id, err := range s.Walk(ctx) {
		if err != nil {
			return 0, err
		}
		if id.MsgID() != last {
			n++
			last = id.MsgID()
		}
	}
	return n, nil
}

func (mg *migrator) fail(m queue.MsgID, err error) {
	mg.failed.Add(1)
	mg.mu.Lock()
	if len(mg.errs) < 100 {
		mg.errs = append(mg.errs, fmt.Sprintf("%s: %s", m, oneLine(err)))
	}
	mg.mu.Unlock()
}

// one migrates the message m, whose envelopes the walk found to be evps.
func (mg *migrator) one(ctx context.Context, m queue.MsgID, evps []queue.EvpID) {
	if ctx.Err() != nil {
		return
	}
	// The envelopes as they are now: claimed, with --move, so that no
	// node of SRC delivers them while they move.
	var claims []*queue.Claim
	var envs []queue.ImportEnvelope
	release := func() {
		for _, cl := range claims {
			cl.Release(context.WithoutCancel(ctx))
		}
	}
	for _, id := range evps {
		if mg.dryRun {
			// The walk's IDs are enough to count and to compare.
			envs = append(envs, queue.ImportEnvelope{ID: id})
			continue
		}
		var e *queue.Envelope
		if mg.move {
			cl, err := mg.src.Claim(ctx, id, mg.lease)
			switch {
			case errors.Is(err, queue.ErrNotFound):
				continue // delivered meanwhile
			case errors.Is(err, queue.ErrConflict):
				release()
				mg.busy.Add(1)
				return
			case err != nil:
				release()
				mg.fail(m, err)
				return
			}
			claims = append(claims, cl)
			e = cl.Envelope()
		} else {
			var err error
			e, err = mg.src.Load(ctx, id)
			if errors.Is(err, queue.ErrNotFound) {
				continue
			}
			if err != nil {
				mg.fail(m, err)
				return
			}
		}
		envs = append(envs, queue.ImportEnvelope{ID: e.ID, Data: e.Data, Due: e.Due})
	}
	if len(envs) == 0 {
		return // gone meanwhile
	}

	// What DST has of the message: nothing, this message (an envelope ID
	// in common, 64 random bits), or another message under the same ID.
	have, err := mg.dst.Envelopes(ctx, m)
	if err != nil {
		release()
		mg.fail(m, fmt.Errorf("DST: %w", err))
		return
	}
	if len(have) > 0 {
		same := false
		for _, h := range have {
			for _, e := range envs {
				same = same || h == e.ID
			}
		}
		if !same {
			release()
			mg.fail(m, fmt.Errorf("DST holds another message under this ID; it was left in SRC"))
			return
		}
	}

	if mg.dryRun {
		if len(have) > 0 {
			mg.present.Add(1)
			return
		}
		size, err := mg.src.ContentSize(ctx, m)
		if err != nil {
			mg.fail(m, err)
			return
		}
		mg.copied.Add(1)
		mg.envelopes.Add(int64(len(envs)))
		mg.bytes.Add(max(size, 0))
		return
	}

	var sum []byte
	if len(have) == 0 {
		rc, err := mg.src.OpenContent(ctx, m)
		if err != nil {
			release()
			if errors.Is(err, queue.ErrNotFound) {
				return // deleted meanwhile
			}
			mg.fail(m, fmt.Errorf("SRC: %w", err))
			return
		}
		h := sha256.New()
		n, err := mg.dst.Import(ctx, m, envs, &countingReader{r: io.TeeReader(rc, h), fn: mg.onByte})
		rc.Close()
		if errors.Is(err, queue.ErrExists) {
			release()
			mg.busy.Add(1) // a transaction of another node in DST
			return
		}
		if err != nil {
			release()
			mg.fail(m, err)
			return
		}
		sum = h.Sum(nil)
		mg.copied.Add(1)
		mg.envelopes.Add(int64(len(envs)))
		mg.bytes.Add(n)
	} else {
		mg.present.Add(1)
		if !mg.move {
			return
		}
		// Copied by an earlier run: check it before SRC loses it.
		h := sha256.New()
		if err := readContent(ctx, mg.src, m, h); err != nil {
			release()
			mg.fail(m, fmt.Errorf("SRC: %w", err))
			return
		}
		sum = h.Sum(nil)
	}

	// End to end: DST's content, read back through its own checksum, is
	// the bytes that SRC's checksum vouched for.
	h := sha256.New()
	if err := readContent(ctx, mg.dst, m, h); err != nil {
		release()
		mg.fail(m, fmt.Errorf("DST: read back: %w", err))
		return
	}
	if string(h.Sum(nil)) != string(sum) {
		release()
		mg.fail(m, fmt.Errorf("DST's content differs from SRC's; it was left in SRC"))
		return
	}
	if !mg.move {
		return
	}
	if migrateStall != nil {
		migrateStall(m)
	}
	inDST := map[queue.EvpID]bool{}
	for _, id := range have {
		inDST[id] = true
	}
	kept := 0
	for _, cl := range claims {
		id := cl.Envelope().ID
		if len(have) > 0 && !inDST[id] {
			// Copied by an earlier run and delivered in DST since, or
			// added to SRC after the copy: which, nothing tells. It is
			// not removed, since DST does not have it, nor left for
			// SRC's nodes, which may deliver it a second time: it is
			// held for the operator.
			kept++
			if err := mg.src.Hold(ctx, id); err != nil {
				mg.fail(m, fmt.Errorf("SRC: hold %s: %w", id, err))
				return
			}
			mg.mu.Lock()
			mg.errs = append(mg.errs, fmt.Sprintf("%s: envelope %s is not in DST (delivered there since an earlier copy, or added to SRC since): held in SRC; remove it with mxq rm or release it", m, id))
			mg.mu.Unlock()
			continue
		}
		if err := cl.Delete(ctx); err != nil {
			mg.fail(m, fmt.Errorf("SRC: remove %s: %w", id, err))
			return
		}
	}
	mg.held.Add(int64(kept))
	mg.removed.Add(1)
}

func readContent(ctx context.Context, s *queue.Store, m queue.MsgID, h hash.Hash) error {
	rc, err := s.OpenContent(ctx, m)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(h, rc)
	return err
}

// countingReader reports the bytes read through it.
type countingReader struct {
	r  io.Reader
	fn func(int)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.fn != nil && n > 0 {
		c.fn(n)
	}
	return n, err
}

// progress shows the migration's progress on standard error, and returns
// the function that ends the display.
func (mg *migrator) progress(c *cli, total int64) func() {
	f, ok := c.stderr.(*os.File)
	if ok && term.IsTerminal(int(f.Fd())) && !c.json {
		desc := "migrating"
		if mg.dryRun {
			desc = "checking"
		}
		bar := progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(f),
			progressbar.OptionSetDescription(desc),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("msg"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		var mu sync.Mutex
		mg.onDone = func() {
			mu.Lock()
			bar.Add(1)
			bar.Describe(fmt.Sprintf("%s %s", desc, humanBytes(mg.bytes.Load())))
			mu.Unlock()
		}
		return func() {
			mu.Lock()
			bar.Finish()
			mu.Unlock()
		}
	}
	// Plain lines, every few seconds, for logs.
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				done := mg.done.Load()
				el := time.Since(start)
				line := fmt.Sprintf("migrate: %d/%d messages, %s, %.1f msg/s", done, total, humanBytes(mg.bytes.Load()), float64(done)/el.Seconds())
				if done > 0 && total > done {
					eta := time.Duration(float64(el) / float64(done) * float64(total-done))
					line += ", ETA " + eta.Round(time.Second).String()
				}
				fmt.Fprintln(c.stderr, line)
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for x := n / unit; x >= unit; x /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
