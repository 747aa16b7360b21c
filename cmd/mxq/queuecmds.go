package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/mxqueue/mxq/queue"
)

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

var lsFlags struct {
	held, due  bool
	node, rcpt string
	olderThan  time.Duration
}

var putFlags struct {
	from string
	rcpt multiFlag
}

func init() {
	register(&command{
		name:  "put",
		args:  "-f sender -r rcpt [-r rcpt ...] < message",
		short: "queue a message read from standard input, one envelope per recipient",
		long: `The envelope of each recipient is the text "sender: <sender>\nrcpt: <rcpt>\n".
The message is committed atomically: once put prints the message ID, the
content and every envelope are stored; if it fails, none of them is visible.`,
		flags: func(fs *flag.FlagSet) {
			putFlags.rcpt = nil // run may be called more than once in a process
			fs.StringVar(&putFlags.from, "f", "", "envelope `sender` (may be empty for bounces)")
			fs.Var(&putFlags.rcpt, "r", "envelope `recipient`; repeat for several")
		},
		run: runPut,
	})
	register(&command{
		name:  "ls",
		args:  "[--held] [--due] [--node NAME] [--older-than DURATION] [--rcpt TEXT]",
		short: "list the committed envelopes, with their age, due time and holder",
		long: `Lists the committed envelopes: one listing per 1000 envelopes, one read per
envelope, and one listing per 1000 messages for the ages. AGE is the time
since the message was committed, to the minute ("-" for messages committed
claimed, whose commit time the queue does not keep); DUE is the time until
the envelope is due, "now", or "hold". The filters add up; --node NAME
lists the envelopes that node NAME has claimed.`,
		flags: func(fs *flag.FlagSet) {
			lsFlags = struct {
				held, due  bool
				node, rcpt string
				olderThan  time.Duration
			}{}
			fs.BoolVar(&lsFlags.held, "held", false, "only the envelopes on hold")
			fs.BoolVar(&lsFlags.due, "due", false, "only the envelopes due now and not claimed")
			fs.DurationVar(&lsFlags.olderThan, "older-than", 0, "only the messages committed longer ago than this `duration`")
			fs.StringVar(&lsFlags.rcpt, "rcpt", "", "only the envelopes with a recipient that contains `text`")
		},
		run: runLs,
	})
	register(&command{
		name:  "show",
		args:  "EVPID",
		short: "print one envelope with its version and lease",
		run:   runShow,
	})
	register(&command{
		name:  "cat",
		args:  "MSGID",
		short: "print a message's content, verifying its checksum",
		run:   runCat,
	})
	register(&command{
		name:  "rm",
		args:  "ID [ID ...]",
		short: "remove envelopes (16 hex digits) or whole messages (8 hex digits)",
		run:   runRm,
	})
	register(&command{
		name:  "sweep",
		args:  "",
		short: "abort abandoned transactions and remove their data",
		run:   runSweep,
	})
	register(&command{
		name:  "quarantine",
		args:  "MSGID [reason]",
		short: "move a message aside, or with no MSGID list the quarantined ones",
		run:   runQuarantine,
	})
}

func runPut(ctx context.Context, c *cli, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q; the message is read from standard input", args[0])
	}
	if len(putFlags.rcpt) == 0 {
		return usagef("at least one recipient (-r) is needed")
	}
	for _, a := range append([]string{putFlags.from}, putFlags.rcpt...) {
		if strings.ContainsAny(a, "\r\n\x00") {
			return usagef("address %q contains a line break or NUL", a)
		}
	}
	for _, r := range putFlags.rcpt {
		if r == "" {
			return usagef("empty recipient")
		}
	}
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	tx, err := s.Begin(ctx)
	if err != nil {
		return err
	}
	var ids []queue.EvpID
	for _, r := range putFlags.rcpt {
		id, err := tx.AddEnvelope(fmt.Appendf(nil, "sender: %s\nrcpt: %s\n", putFlags.from, r))
		if err != nil {
			tx.Rollback(ctx)
			return err
		}
		ids = append(ids, id)
	}
	n, err := tx.CommitContent(ctx, bufio.NewReaderSize(c.stdin, 64<<10))
	if err != nil {
		switch rerr := tx.Rollback(ctx); {
		case errors.Is(rerr, queue.ErrConflict):
			// The commit landed, though its answer was lost: queued.
		case rerr != nil && !errors.Is(rerr, queue.ErrClosed):
			return fmt.Errorf("%v (and the rollback failed: %v)", err, rerr)
		default:
			return err
		}
	}
	if c.json {
		return c.printJSON(map[string]any{"msgid": tx.ID(), "envelopes": ids, "size": n})
	}
	fmt.Fprintf(c.stdout, "%s queued: %d bytes, %d envelope(s)\n", tx.ID(), n, len(ids))
	for i, id := range ids {
		fmt.Fprintf(c.stdout, "  %s  %s\n", id, putFlags.rcpt[i])
	}
	return nil
}

// envelopeJSON is the JSON form of an envelope.
type envelopeJSON struct {
	ID      queue.EvpID `json:"id"`
	MsgID   queue.MsgID `json:"msgid"`
	Version string      `json:"version"`
	Holder  string      `json:"holder,omitempty"`
	Token   uint64      `json:"token,omitempty"`
	Expires *time.Time  `json:"expires,omitempty"`
	Due     *time.Time  `json:"due,omitempty"`
	Held    bool        `json:"held,omitempty"`
	// Committed is when the message was committed, to the minute, where
	// the queue keeps it (ls only).
	Committed *time.Time `json:"committed,omitempty"`
	Data      string     `json:"data"`
	Binary    bool       `json:"binary,omitempty"`
}

func toJSON(e *queue.Envelope) envelopeJSON {
	j := envelopeJSON{ID: e.ID, MsgID: e.ID.MsgID(), Version: string(e.Version), Held: e.Held()}
	if e.Lease.Holder != "" {
		j.Holder, j.Token = e.Lease.Holder, e.Lease.Token
		t := e.Lease.Expires.UTC()
		j.Expires = &t
	}
	if !e.Due.IsZero() {
		t := e.Due.UTC()
		j.Due = &t
	}
	if utf8.Valid(e.Data) && !bytes.ContainsRune(e.Data, 0) {
		j.Data = string(e.Data)
	} else {
		j.Data, j.Binary = fmt.Sprintf("%x", e.Data), true
	}
	return j
}

func preview(e *queue.Envelope) string {
	j := toJSON(e)
	if j.Binary {
		return fmt.Sprintf("(%d bytes of binary data)", len(e.Data))
	}
	p := strings.Join(strings.Fields(j.Data), " ")
	if len(p) > 70 {
		p = p[:67] + "..."
	}
	return p
}

func runLs(ctx context.Context, c *cli, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	f := lsFlags
	// ls claims nothing, so --node, which names the node of tools that
	// claim, names the node whose claims to list.
	f.node = c.node
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	times, err := s.CommitTimes(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	if !c.json {
		fmt.Fprintln(tw, "ENVELOPE\tAGE\tDUE\tHOLDER\tDATA")
	}
	n := 0
	for id, err := range s.Walk(ctx) {
		if err != nil {
			return err
		}
		committed, known := times[id.MsgID()]
		if f.olderThan > 0 && (!known || now.Sub(committed) <= f.olderThan) {
			continue
		}
		e, err := s.Load(ctx, id)
		if errors.Is(err, queue.ErrNotFound) {
			continue // delivered meanwhile
		}
		if err != nil {
			return err
		}
		claimed := e.Lease.Holder != "" && e.Lease.Expires.After(now)
		switch {
		case f.held && !e.Held(),
			f.due && (e.Held() || claimed || e.Due.After(now)),
			f.node != "" && (!claimed || e.Lease.Holder != f.node),
			f.rcpt != "" && !matchEnvelope(e.Data, "", f.rcpt):
			continue
		}
		n++
		if c.json {
			j := toJSON(e)
			if known {
				t := committed.UTC()
				j.Committed = &t
			}
			if err := c.printJSON(j); err != nil {
				return err
			}
			continue
		}
		holder := "-"
		if claimed {
			holder = e.Lease.Holder
		}
		ageCol := "-"
		if known {
			ageCol = age(now.Sub(committed))
		}
		dueCol := "now"
		switch {
		case e.Held():
			dueCol = "hold"
		case e.Due.After(now):
			dueCol = "in " + age(e.Due.Sub(now))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id, ageCol, dueCol, holder, preview(e))
	}
	if c.json {
		return nil
	}
	tw.Flush()
	fmt.Fprintf(c.stdout, "%d envelope(s)\n", n)
	return nil
}

func runShow(ctx context.Context, c *cli, args []string) error {
	if len(args) != 1 {
		return usagef("want one envelope ID")
	}
	id, err := queue.ParseEvpID(args[0])
	if err != nil {
		return err
	}
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	e, err := s.Load(ctx, id)
	if err != nil {
		return err
	}
	j := toJSON(e)
	if c.json {
		return c.printJSON(j)
	}
	fmt.Fprintf(c.stdout, "envelope: %s\nmessage:  %s\nversion:  %s\n", j.ID, j.MsgID, j.Version)
	if j.Holder != "" {
		fmt.Fprintf(c.stdout, "lease:    %s (token %d) until %s\n", j.Holder, j.Token, j.Expires.Format(time.RFC3339))
	}
	if j.Due != nil {
		fmt.Fprintf(c.stdout, "due:      %s\n", j.Due.Format(time.RFC3339))
	}
	if j.Held {
		fmt.Fprintf(c.stdout, "held:     yes (mxq release %s)\n", j.ID)
	}
	if j.Binary {
		fmt.Fprintf(c.stdout, "data (%d bytes, hex):\n%s\n", len(e.Data), j.Data)
	} else {
		fmt.Fprintf(c.stdout, "data (%d bytes):\n%s", len(e.Data), j.Data)
		if !strings.HasSuffix(j.Data, "\n") {
			fmt.Fprintln(c.stdout)
		}
	}
	return nil
}

func runCat(ctx context.Context, c *cli, args []string) error {
	if len(args) != 1 {
		return usagef("want one message ID")
	}
	m, err := queue.ParseMsgID(args[0])
	if err != nil {
		return err
	}
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	rc, err := s.OpenContent(ctx, m)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(c.stdout, rc)
	return err
}

// target is a message (e zero) or an envelope named on the command line.
type target struct {
	m queue.MsgID
	e queue.EvpID
}

// parseTargets parses message and envelope IDs.
func parseTargets(args []string) ([]target, error) {
	var ts []target
	for _, a := range args {
		m, e, err := queue.ParseID(a)
		if err != nil {
			return nil, err
		}
		ts = append(ts, target{m, e})
	}
	return ts, nil
}

func runRm(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 {
		return usagef("want at least one ID")
	}
	ts, err := parseTargets(args)
	if err != nil {
		return err
	}
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	for _, t := range ts {
		if t.e != 0 {
			err = s.DeleteEnvelope(ctx, t.e)
		} else {
			err = s.DeleteMessage(ctx, t.m)
		}
		if err != nil {
			return err
		}
		if !c.json {
			if t.e != 0 {
				fmt.Fprintf(c.stdout, "%s removed\n", t.e)
			} else {
				fmt.Fprintf(c.stdout, "%s removed\n", t.m)
			}
		}
	}
	return nil
}

func runSweep(ctx context.Context, c *cli, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	st, err := s.Sweep(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st)
	}
	fmt.Fprintf(c.stdout, "aborted %d abandoned transaction(s), removed %d old record(s), %d still open\n", st.Aborted, st.Removed, st.Open)
	if st.Corrupt > 0 {
		fmt.Fprintf(c.stdout, "left %d unreadable transaction record(s) alone\n", st.Corrupt)
	}
	return nil
}

func runQuarantine(ctx context.Context, c *cli, args []string) error {
	var m queue.MsgID
	if len(args) > 0 {
		var err error
		if m, err = queue.ParseMsgID(args[0]); err != nil {
			return err
		}
	}
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	if m != 0 {
		reason := strings.Join(args[1:], " ")
		if reason == "" {
			reason = "quarantined by an operator"
		}
		if err := s.Quarantine(ctx, m, reason); err != nil {
			return err
		}
		if !c.json {
			fmt.Fprintf(c.stdout, "%s quarantined\n", m)
		}
		return nil
	}
	qs, err := s.Quarantined(ctx)
	if err != nil {
		return err
	}
	if c.json {
		if qs == nil {
			qs = []queue.Quarantined{}
		}
		return c.printJSON(qs)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MESSAGE\tWHEN\tENVELOPES\tREASON")
	for _, q := range qs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", q.ID, q.Time.Format(time.RFC3339), len(q.Envelopes), q.Reason)
	}
	return tw.Flush()
}
