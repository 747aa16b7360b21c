package main

import (
	"context"
	"fmt"
	"time"

	"github.com/mxqueue/mxq/queue"
)

func init() {
	register(&command{
		name:  "reseal",
		args:  "",
		short: "re-encrypt every message and envelope of the queue with its current key",
		long: `Rewrites each content and envelope object that is plain, or sealed with an
older key, under the current key of the queue URL (key_file= or key_env=;
see docs/encryption.md), and prints its progress on standard error. Use it
after turning encryption on or rotating a key; then old keys can be dropped
and require_encryption=true set. It is safe while the queue is in use:
each rewrite is conditional on the object being unchanged, and envelopes
under a lease are left to their holder. Objects that changed meanwhile or
were leased are counted busy: run reseal again to finish them. It is not
bounded by --timeout; interrupt it at any point and run it again.`,
		run: runReseal,
	})
}

func runReseal(ctx context.Context, c *cli, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	s, err := c.open(ctx)
	if err != nil {
		return err
	}
	defer s.Close()
	start := time.Now()
	last := start
	show := func(p queue.ResealProgress) string {
		return fmt.Sprintf("scanned %d: resealed %d, current %d, busy %d, corrupt %d", p.Scanned, p.Resealed, p.Current, p.Busy, p.Corrupt)
	}
	p, err := s.Reseal(ctx, func(p queue.ResealProgress) {
		if !c.json && time.Since(last) >= time.Second {
			last = time.Now()
			fmt.Fprintf(c.stderr, "reseal: %s (%.0f objects/s)\n", show(p), float64(p.Scanned)/time.Since(start).Seconds())
		}
	})
	if err != nil {
		if p.Scanned > 0 {
			fmt.Fprintf(c.stderr, "reseal: stopped after %s\n", show(p))
		}
		return err
	}
	if c.json {
		return c.printJSON(p)
	}
	fmt.Fprintf(c.stdout, "%s in %s\n", show(p), time.Since(start).Round(time.Millisecond))
	if p.Busy > 0 {
		fmt.Fprintf(c.stdout, "%d object(s) busy: run reseal again later\n", p.Busy)
	}
	return nil
}
