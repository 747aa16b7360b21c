package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/mxqueue/mxq/queue"
)

// selectFlags choose envelopes for hold, release and schedule: IDs on the
// command line, or a match on the sender or a recipient.
type selectFlags struct {
	sender string
	rcpt   string
	all    bool
}

func (f *selectFlags) register(fs *flag.FlagSet) {
	*f = selectFlags{}
	fs.StringVar(&f.sender, "sender", "", "the envelopes whose sender contains `text` (case-insensitive)")
	fs.StringVar(&f.rcpt, "rcpt", "", "the envelopes with a recipient that contains `text` (case-insensitive)")
	fs.BoolVar(&f.all, "all", false, "every envelope of the queue")
}

var opFlags struct {
	sel selectFlags
	at  string
}

// selectorHelp is the part of the help that hold, release and schedule
// share.
const selectorHelp = `An ID of 16 hex digits names an envelope, one of 8 a message and all its
envelopes. --sender and --rcpt walk the queue and read every envelope (one
listing per 1000 envelopes and one read per envelope); they match the
"sender:"/"mailfrom:" and "rcpt:"/"dest:" lines of the envelope, as mxq put
and OpenSMTPD write them. Several selectors add up.`

func init() {
	register(&command{
		name:  "hold",
		args:  "[--sender TEXT] [--rcpt TEXT] [--all] [ID ...]",
		short: "put envelopes on hold, like postsuper -h: no node delivers them until released",
		long: `Puts envelopes on hold. A held envelope is not due, and no node can claim
it, until "mxq release". The hold goes through a claim, so it is safe while
nodes run: an envelope in delivery by a live node is reported busy and left
alone; run hold again later. Nodes running a version without holds ignore
them. Costs about six requests per envelope.

` + selectorHelp,
		flags: func(fs *flag.FlagSet) { opFlags.sel.register(fs) },
		run: func(ctx context.Context, c *cli, args []string) error {
			return runOp(ctx, c, "hold", args, func(ctx context.Context, s *queue.Store, id queue.EvpID) error {
				return s.Hold(ctx, id)
			})
		},
	})
	register(&command{
		name:  "release",
		args:  "[--sender TEXT] [--rcpt TEXT] [--all] [ID ...]",
		short: "release held envelopes, like postsuper -H: due now",
		long: `Takes envelopes off hold and makes them due now. Releasing an envelope that
is not held does nothing. Costs three requests per held envelope.

` + selectorHelp,
		flags: func(fs *flag.FlagSet) { opFlags.sel.register(fs) },
		run: func(ctx context.Context, c *cli, args []string) error {
			return runOp(ctx, c, "release", args, func(ctx context.Context, s *queue.Store, id queue.EvpID) error {
				return s.ReleaseHold(ctx, id)
			})
		},
	})
	register(&command{
		name:  "schedule",
		args:  "[--at TIME] [--sender TEXT] [--rcpt TEXT] [--all] [ID ...]",
		short: "make envelopes due now (or at --at), like smtpctl schedule",
		long: `Makes envelopes due now, or at --at (RFC 3339, or a duration from now such
as 2h). It claims each envelope and defers it, so an envelope in delivery
by a live node, or on hold, is reported busy and left alone. Costs about
six requests per envelope.

` + selectorHelp,
		flags: func(fs *flag.FlagSet) {
			opFlags.sel.register(fs)
			opFlags.at = ""
			fs.StringVar(&opFlags.at, "at", "", "due at this `time`: RFC 3339, or a duration from now (default: now)")
		},
		run: func(ctx context.Context, c *cli, args []string) error {
			var at time.Time
			if opFlags.at != "" {
				if d, err := time.ParseDuration(opFlags.at); err == nil {
					at = time.Now().Add(d)
				} else if at, err = time.Parse(time.RFC3339, opFlags.at); err != nil {
					return usagef("--at %q: want RFC 3339 or a duration", opFlags.at)
				}
			}
			return runOp(ctx, c, "schedule", args, func(ctx context.Context, s *queue.Store, id queue.EvpID) error {
				return s.Schedule(ctx, id, at)
			})
		},
	})
}

// opResult is the JSON form of what a verb did to one envelope.
type opResult struct {
	ID     queue.EvpID `json:"id"`
	Result string      `json:"result"` // done, busy, gone or failed
	Error  string      `json:"error,omitempty"`
}

// runOp applies fn to each envelope the arguments and selectors name.
func runOp(ctx context.Context, c *cli, verb string, args []string, fn func(context.Context, *queue.Store, queue.EvpID) error) error {
	sel := opFlags.sel
	ts, err := parseTargets(args)
	if err != nil {
		return err
	}
	if len(ts) == 0 && sel.sender == "" && sel.rcpt == "" && !sel.all {
		return usagef("name envelopes or messages by ID, or select them with --sender, --rcpt or --all")
	}
	if c.node == "" {
		c.node = c.toolNode(verb) // never the name of this host's MX
	}
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	var results []opResult
	failed := 0
	apply := func(id queue.EvpID) {
		r := opResult{ID: id, Result: "done"}
		if err := fn(ctx, s, id); err != nil {
			r.Error = oneLine(err)
			switch {
			case errors.Is(err, queue.ErrNotFound):
				r.Result = "gone"
			case errors.Is(err, queue.ErrConflict):
				r.Result, failed = "busy", failed+1
			default:
				r.Result, failed = "failed", failed+1
			}
		}
		if c.json {
			results = append(results, r)
			return
		}
		if r.Error != "" {
			fmt.Fprintf(c.stdout, "%s %s: %s\n", id, r.Result, r.Error)
		} else {
			fmt.Fprintf(c.stdout, "%s %s\n", id, pastTense(verb))
		}
	}
	seen := map[queue.EvpID]bool{}
	for _, t := range ts {
		ids := []queue.EvpID{t.e}
		if t.e == 0 {
			if ids, err = s.Envelopes(ctx, t.m); err != nil {
				return err
			}
			if len(ids) == 0 {
				return fmt.Errorf("%s: %w", t.m, queue.ErrNotFound)
			}
		}
		for _, id := range ids {
			if !seen[id] {
				seen[id] = true
				apply(id)
			}
		}
	}
	if sel.sender != "" || sel.rcpt != "" || sel.all {
		for id, err := range s.Walk(ctx) {
			if err != nil {
				return err
			}
			if seen[id] {
				continue
			}
			if !sel.all {
				e, err := s.Load(ctx, id)
				if errors.Is(err, queue.ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				if !matchEnvelope(e.Data, sel.sender, sel.rcpt) {
					continue
				}
			}
			seen[id] = true
			apply(id)
		}
	}
	if c.json {
		if results == nil {
			results = []opResult{}
		}
		if err := c.printJSON(results); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d envelope(s) not %s", failed, pastTense(verb))
	}
	return nil
}

func pastTense(verb string) string {
	switch verb {
	case "hold":
		return "held"
	case "release":
		return "released"
	}
	return verb + "d"
}

// envelopeField returns the values of the "key: value" lines of an
// envelope whose key is one of keys.
func envelopeField(data []byte, keys ...string) []string {
	var out []string
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		for _, want := range keys {
			if k == want {
				out = append(out, strings.TrimSpace(v))
			}
		}
	}
	return out
}

// matchEnvelope reports whether the envelope's sender contains sender and
// one of its recipients contains rcpt, ignoring case; an empty pattern
// matches anything.
func matchEnvelope(data []byte, sender, rcpt string) bool {
	match := func(pat string, keys ...string) bool {
		if pat == "" {
			return true
		}
		for _, v := range envelopeField(data, keys...) {
			if strings.Contains(strings.ToLower(v), strings.ToLower(pat)) {
				return true
			}
		}
		return false
	}
	return match(sender, "sender", "mailfrom") && match(rcpt, "rcpt", "dest")
}
