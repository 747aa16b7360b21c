package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/layout"
)

var benchFlags struct {
	n     int
	walk  int
	large bool
	seal  bool
}

func init() {
	register(&command{
		name:  "bench",
		args:  "[-n N] [-walk N] [-large=false] [-encryption]",
		short: "measure the queue against the raw floor of its store and print ratios",
		long: `Each operation runs through the queue and, side by side, as the fewest
requests the same store needs for it (the raw floor), and bench reports the
ratio. It writes to the queue: use a scratch queue. Everything it writes is
removed at the end. The floor of a commit is one create-only PUT of the
message's bytes. A one-recipient commit is measured twice: whole (Begin,
then CommitContent), and as an MTA that calls Tx.Prepare at RCPT TO waits
for it after DATA (CommitContent, 20 ms after Prepare), against one PUT
20 ms after the previous. Targets: a
one-recipient commit's p50 at most 1.3x the floor, 64 concurrent commits at least 0.8x its throughput, a walk at most 1.2x a
listing of the same keys, a claim one conditional request, and a 100 MiB
message in and out with a peak RSS under 64 MiB. Then it counts the
requests of each operation (commit, load, claim, update, defer, delete,
delivery, walk) beside the fewest the store needs, with the request budgets
of docs/performance.md, and drains 5n one-recipient messages with 8
workers of one Store: envelopes per second, and requests per envelope
beside the floor of 3 (a read, a claim, a delete). Unless --node is given, bench
runs as a node of its own (the host name, -bench- and a random suffix), so
that it never supersedes a node running on the same host.`,
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&benchFlags.n, "n", 200, "operations per measurement")
			fs.IntVar(&benchFlags.walk, "walk", 10000, "envelopes in the queue for the walk")
			fs.BoolVar(&benchFlags.large, "large", true, "also move a 100 MiB message in and out and report the peak RSS")
			fs.BoolVar(&benchFlags.seal, "encryption", false, "also measure commit and OpenContent encrypted, and compressed and encrypted, against plain, and the compression ratio of a generated corpus")
		},
		run: runBench,
	})
}

type benchRow struct {
	Op     string  `json:"op"`
	Metric string  `json:"metric"`
	Queue  float64 `json:"queue"`
	Raw    float64 `json:"raw"`
	Ratio  float64 `json:"ratio"`
	Target string  `json:"target"`
}

func runBench(ctx context.Context, c *cli, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	if benchFlags.n < 10 {
		return usagef("-n must be at least 10")
	}
	if c.node == "" {
		// bench claims, so it is a node; under the host's name it would
		// supersede the node of an mxq serve or opensmtpd on this host.
		c.node = benchNode()
	}
	s, err := c.open(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Ping(ctx); err != nil {
		return err
	}
	raw := s.Backend()
	defer bench.CleanRaw(context.WithoutCancel(ctx), raw)
	var rows []benchRow
	progress := func(format string, a ...any) {
		if !c.json {
			fmt.Fprintf(c.stderr, format+"\n", a...)
		}
	}
	if benchFlags.large {
		progress("100 MiB message in and out ...")
		peak, err := benchLarge(ctx, s)
		if err != nil {
			return err
		}
		rows = append(rows, benchRow{Op: "100 MiB message", Metric: "peak RSS MiB", Queue: peak, Target: "< 64"})
	}
	content := bytes.Repeat([]byte("x"), 4096)
	n := benchFlags.n
	for _, rcpts := range []int{1, 10} {
		progress("commit 4 KiB, %d recipient(s) ...", rcpts)
		q, err := bench.Measure(ctx, bench.Commit(s, content, rcpts), n, 1)
		if err != nil {
			return err
		}
		r, err := bench.Measure(ctx, bench.RawCommit(raw, content, rcpts), n, 1)
		if err != nil {
			return err
		}
		target := "<= 1.3"
		if rcpts > 1 {
			target = "" // one object per recipient: no single PUT does that
		}
		rows = append(rows, latency(fmt.Sprintf("commit 4 KiB, %d rcpt", rcpts), q, r, target))
		if rcpts == 1 {
			progress("commit 4 KiB, 1 recipient, prepared at RCPT TO ...")
			p, err := bench.MeasureTimed(ctx, bench.PreparedCommit(s, content), n, 1)
			if err != nil {
				return err
			}
			pr, err := bench.MeasureTimed(ctx, bench.After(bench.DataTime, bench.RawCommit(raw, content, 1)), n, 1)
			if err != nil {
				return err
			}
			rows = append(rows, latency("commit 4 KiB, 1 rcpt, after Prepare", p, pr, "<= 1.3"))
		}
	}
	progress("64 concurrent commits ...")
	q, err := bench.Measure(ctx, bench.Commit(s, content, 1), 4*n, 64)
	if err != nil {
		return err
	}
	r, err := bench.Measure(ctx, bench.RawCommit(raw, content, 1), 4*n, 64)
	if err != nil {
		return err
	}
	rows = append(rows, benchRow{Op: "64 concurrent commits", Metric: "msg/s", Queue: q.Throughput, Raw: r.Throughput, Ratio: q.Throughput / r.Throughput, Target: ">= 0.8"})

	progress("walk of %d envelopes (filling) ...", benchFlags.walk)
	before, err := countEnvelopes(ctx, s)
	if err != nil {
		return err
	}
	if err := bench.Fill(ctx, s, max(benchFlags.walk-before, 0), 10, 32); err != nil {
		return err
	}
	q, err = bench.Measure(ctx, bench.Walk(s), 5, 1)
	if err != nil {
		return err
	}
	r, err = bench.Measure(ctx, bench.RawList(raw, layout.Key(layout.Handle{Kind: layout.Envelope})), 5, 1)
	if err != nil {
		return err
	}
	rows = append(rows, latency(fmt.Sprintf("walk of %d envelopes", max(benchFlags.walk, before)), q, r, "<= 1.2"))

	progress("claim and release ...")
	var ids []queue.EvpID
	for id, err := range s.Walk(ctx) {
		if err != nil {
			return err
		}
		if ids = append(ids, id); len(ids) == 64 {
			break
		}
	}
	if len(ids) > 0 {
		rawOp, _ := bench.RawCAS(raw)
		q, err = bench.Measure(ctx, bench.ClaimRelease(s, ids), n, 1)
		if err != nil {
			return err
		}
		r, err = bench.Measure(ctx, rawOp, n, 1)
		if err != nil {
			return err
		}
		rows = append(rows, latency("claim + release", q, r, "1 conditional write each"))
	}
	progress("requests per operation ...")
	costs, err := bench.Costs(ctx, raw, s.Node(), min(n, 100))
	if err != nil {
		return err
	}
	for _, k := range costs {
		rows = append(rows, benchRow{Op: k.Op, Metric: "requests", Queue: k.Requests, Raw: k.Floor, Ratio: k.Requests / k.Floor, Target: costTargets[k.Op]})
	}
	progress("drain of %d envelopes by 8 workers ...", 5*n)
	d, err := bench.Drain(ctx, raw, s.Node(), 5*n, 8, content)
	if err != nil {
		return err
	}
	op := fmt.Sprintf("drain of %d envelopes, 8 workers", d.Envelopes)
	rows = append(rows,
		benchRow{Op: op, Metric: "requests/envelope", Queue: d.Requests, Raw: 3, Ratio: d.Requests / 3, Target: "<= 4"},
		benchRow{Op: op, Metric: "envelopes/s", Queue: d.Throughput, Target: "the same per envelope at any backlog"})
	if benchFlags.seal {
		sr, err := benchEncryption(ctx, c.queueURL, s.Node(), n, progress)
		if err != nil {
			return err
		}
		rows = append(rows, sr...)
	}
	progress("removing what bench wrote ...")
	if err := removeBenchMessages(ctx, s); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(rows)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "OPERATION\tMETRIC\tQUEUE\tRAW FLOOR\tRATIO\tTARGET\n")
	for _, r := range rows {
		ratio, rawv := "-", "-"
		if r.Raw != 0 {
			ratio, rawv = fmt.Sprintf("%.2fx", r.Ratio), fmt.Sprintf("%.2f", r.Raw)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%s\t%s\t%s\n", r.Op, r.Metric, r.Queue, rawv, ratio, r.Target)
	}
	return tw.Flush()
}

// costTargets are the request budgets of issue-tracked targets, shown
// beside the measured counts.
var costTargets = map[string]string{
	"commit, 1 rcpt":                    "<= 3 (R+2)",
	"commit, 10 rcpt":                   "<= 12 (R+2)",
	"deliver (due scan, claim, delete)": "<= 4",
}

func latency(op string, q, r bench.Result, target string) benchRow {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return benchRow{Op: op, Metric: "p50 ms", Queue: ms(q.P50), Raw: ms(r.P50), Ratio: ms(q.P50) / ms(r.P50), Target: target}
}

// benchLarge commits and reads back 100 MiB and returns the process's peak
// RSS in MiB.
func benchLarge(ctx context.Context, s *queue.Store) (float64, error) {
	const size = 100 << 20
	runtime.GC()
	tx, err := s.Begin(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := tx.AddEnvelope([]byte("bench")); err != nil {
		return 0, err
	}
	h := sha256.New()
	if _, err := tx.WriteContent(ctx, io.TeeReader(io.LimitReader(&counter{}, size), h)); err != nil {
		tx.Rollback(ctx)
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	defer s.DeleteMessage(context.WithoutCancel(ctx), tx.ID())
	rc, err := s.OpenContent(ctx, tx.ID())
	if err != nil {
		return 0, err
	}
	h2 := sha256.New()
	_, err = io.Copy(h2, rc)
	rc.Close()
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
		return 0, fmt.Errorf("the 100 MiB message came back different")
	}
	return peakRSS()
}

// counter is an endless stream of counting words, cheap to make.
type counter struct{ n uint64 }

func (c *counter) Read(p []byte) (int, error) {
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], c.n)
		c.n++
	}
	return i, nil
}

func peakRSS() (float64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/self/status")
}

func countEnvelopes(ctx context.Context, s *queue.Store) (int, error) {
	n := 0
	for _, err := range s.Walk(ctx) {
		if err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

// removeBenchMessages deletes the messages bench committed: those whose
// envelopes it wrote ("rcptN@example.org" or "bench").
func removeBenchMessages(ctx context.Context, s *queue.Store) error {
	var last queue.MsgID
	for id, err := range s.Walk(ctx) {
		if err != nil {
			return err
		}
		if id.MsgID() == last {
			continue
		}
		e, err := s.Load(ctx, id)
		if err != nil {
			continue
		}
		if d := string(e.Data); strings.HasPrefix(d, "rcpt") && strings.HasSuffix(d, "@example.org") {
			last = id.MsgID()
			if err := s.DeleteMessage(ctx, last); err != nil {
				return err
			}
		}
	}
	return nil
}

// benchNode is the default node name of bench: the host's, with -bench-
// and a random suffix, at most 64 characters.
func benchNode() string {
	var b [4]byte
	rand.Read(b[:])
	suffix := fmt.Sprintf("-bench-%x", b)
	n := defaultNode()
	return n[:min(len(n), 64-len(suffix))] + suffix
}
