package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxqueue/mxq/queue"
)

var statsFlags struct {
	sizes bool
}

func init() {
	register(&command{
		name:  "stats",
		args:  "[--sizes=false]",
		short: "count messages, envelopes and bytes, due times, claims, nodes and transactions",
		long: `Describes the queue from listings of its key layout, like smtpctl show stats:
the committed messages, envelopes and bytes; the oldest message by its
commit time; a histogram of due times; the envelopes claimed by each node;
the nodes with their last heartbeat; the quarantined messages; and the
transactions waiting for a sweep. It reads no envelope and no content: it
lists, and reads only the records of the nodes and open transactions. Bytes
take one metadata request per message; --sizes=false skips them. The cost of
the run, in requests, is printed last.`,
		flags: func(fs *flag.FlagSet) {
			fs.BoolVar(&statsFlags.sizes, "sizes", true, "add up the content sizes: one metadata request per message")
		},
		run: runStats,
	})
}

func runStats(ctx context.Context, c *cli, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	ctx, s, done, err := c.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	st, err := s.Stats(ctx, &queue.StatsOptions{Sizes: statsFlags.sizes})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st)
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	bytes := "-"
	if st.Bytes >= 0 {
		bytes = fmt.Sprintf("%d (%s)", st.Bytes, humanBytes(st.Bytes))
	}
	fmt.Fprintf(w, "messages\t%d\n", st.Messages)
	fmt.Fprintf(w, "envelopes\t%d\n", st.Envelopes)
	fmt.Fprintf(w, "bytes\t%s\n", bytes)
	if o := st.Oldest; o != nil {
		fmt.Fprintf(w, "oldest\t%s (envelope %s), committed %s, %s ago\n", o.ID, o.Envelope, o.Time.Format(time.RFC3339), age(st.Time.Sub(o.Time)))
	} else {
		fmt.Fprintf(w, "oldest\t-\n")
	}
	if st.AgeUnknown > 0 {
		fmt.Fprintf(w, "age unknown\t%d message(s), outside blocks of IDs\n", st.AgeUnknown)
	}
	fmt.Fprintf(w, "due now\t%d\n", st.Due.Now)
	fmt.Fprintf(w, "due within 1h\t%d\n", st.Due.Hour)
	fmt.Fprintf(w, "due within 1d\t%d\n", st.Due.Day)
	fmt.Fprintf(w, "due later\t%d\n", st.Due.Later)
	fmt.Fprintf(w, "unscheduled\t%d\n", st.Due.Unscheduled)
	for _, n := range sortedKeys(st.Held) {
		fmt.Fprintf(w, "held by %s\t%d\n", n, st.Held[n])
	}
	for _, n := range st.Nodes {
		state := "dead"
		if n.Alive {
			state = "alive"
		}
		fmt.Fprintf(w, "node %s\t%s, last heartbeat %s ago\n", n.Name, state, age(st.Time.Sub(n.Beat)))
	}
	fmt.Fprintf(w, "quarantined\t%d\n", st.Quarantined)
	fmt.Fprintf(w, "transactions\t%d open, %d abandoned (for the next sweep), %d aborted\n", st.Transactions.Open, st.Transactions.Abandoned, st.Transactions.Aborted)
	fmt.Fprintf(w, "cost\t%d list(s), %d get(s), %d head(s)\n", st.Cost.Lists, st.Cost.Gets, st.Cost.Heads)
	return w.Flush()
}

func sortedKeys(m map[string]int64) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// age prints a duration to the second.
func age(d time.Duration) string { return max(d, 0).Round(time.Second).String() }

// statsCollector exports queue.Stats as Prometheus gauges. A scrape
// reuses figures younger than every, so that scrapes cost the store at
// most one Stats run per interval.
type statsCollector struct {
	s     *queue.Store
	every time.Duration

	mu   sync.Mutex
	last *queue.Stats
	err  error

	messages, envelopes, bytes, oldest, quarantined, ageUnknown *prometheus.Desc
	due, held, alive, beat, txs, cost, ok                       *prometheus.Desc
}

func newStatsCollector(s *queue.Store, every time.Duration) *statsCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("mxq_queue_"+name, help, labels, nil)
	}
	return &statsCollector{
		s: s, every: every,
		messages:    d("messages", "Committed messages."),
		envelopes:   d("envelopes", "Committed envelopes."),
		bytes:       d("bytes", "Content bytes of the committed messages."),
		oldest:      d("oldest_message_age_seconds", "Age of the oldest message, by its commit minute."),
		ageUnknown:  d("age_unknown_messages", "Messages outside blocks of IDs (imported, or of an earlier version) with no due pointer, whose age the listing does not tell."),
		quarantined: d("quarantined_messages", "Quarantined messages."),
		due:         d("due_envelopes", "Envelopes by due time: now, hour, day, later, unscheduled.", "when"),
		held:        d("held_envelopes", "Envelopes claimed, by node.", "node"),
		alive:       d("node_alive", "1 if the node's heartbeat has not expired.", "node"),
		beat:        d("node_heartbeat_timestamp_seconds", "Time of the node's last heartbeat.", "node"),
		txs:         d("transactions", "Uncommitted transactions: open, abandoned (for the next sweep), aborted.", "state"),
		cost:        d("stats_requests", "Requests of the last stats run, by kind: list, get, head.", "kind"),
		ok:          d("stats_up", "1 if the last stats run succeeded."),
	}
}

// Describe implements prometheus.Collector.
func (sc *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sc.messages, sc.envelopes, sc.bytes, sc.oldest, sc.ageUnknown, sc.quarantined, sc.due, sc.held, sc.alive, sc.beat, sc.txs, sc.cost, sc.ok} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (sc *statsCollector) Collect(ch chan<- prometheus.Metric) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.last == nil || time.Since(sc.last.Time) >= sc.every {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		st, err := sc.s.Stats(ctx, &queue.StatsOptions{Sizes: true})
		cancel()
		sc.err = err
		if err == nil {
			sc.last = st
		}
	}
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if sc.err != nil {
		g(sc.ok, 0)
	} else {
		g(sc.ok, 1)
	}
	st := sc.last
	if st == nil {
		return
	}
	g(sc.messages, float64(st.Messages))
	g(sc.envelopes, float64(st.Envelopes))
	if st.Bytes >= 0 {
		g(sc.bytes, float64(st.Bytes))
	}
	if st.Oldest != nil {
		g(sc.oldest, st.Time.Sub(st.Oldest.Time).Seconds())
	}
	g(sc.ageUnknown, float64(st.AgeUnknown))
	g(sc.quarantined, float64(st.Quarantined))
	g(sc.due, float64(st.Due.Now), "now")
	g(sc.due, float64(st.Due.Hour), "hour")
	g(sc.due, float64(st.Due.Day), "day")
	g(sc.due, float64(st.Due.Later), "later")
	g(sc.due, float64(st.Due.Unscheduled), "unscheduled")
	for n, v := range st.Held {
		g(sc.held, float64(v), n)
	}
	for _, n := range st.Nodes {
		a := 0.0
		if n.Alive {
			a = 1
		}
		g(sc.alive, a, n.Name)
		g(sc.beat, float64(n.Beat.UnixNano())/1e9, n.Name)
	}
	g(sc.txs, float64(st.Transactions.Open), "open")
	g(sc.txs, float64(st.Transactions.Abandoned), "abandoned")
	g(sc.txs, float64(st.Transactions.Aborted), "aborted")
	g(sc.cost, float64(st.Cost.Lists), "list")
	g(sc.cost, float64(st.Cost.Gets), "get")
	g(sc.cost, float64(st.Cost.Heads), "head")
}
