// Command mx is a small, complete MX on an mxq queue: it accepts mail by
// SMTP into a queue that any number of instances share, and delivers it to
// a relay with retries, bounces, and takeover of a dead instance's mail.
//
// It is documentation first: the reference for Go MTA authors who link
// mxq. Read it in this order:
//
//	accept.go   SMTP in: one envelope per recipient, 250 only after Commit
//	deliver.go  the delivery loop: Due, ClaimEnvelope, SMTP out, Delete/Defer/bounce
//	dsn.go      the RFC 3464 bounce, queued like any other message
//	main.go     flags, the node (heartbeat and takeover), operations, shutdown
//
// See README.md for how to run it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	_ "github.com/mxqueue/mxq/adapters/all" // every queue URL scheme
	"github.com/mxqueue/mxq/queue"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// config is what the flags set.
type config struct {
	Listen, HTTP, Queue, Relay  string
	Hostname, Node              string
	Domains                     []string
	Workers, MaxRcpts           int
	MaxSize                     int64
	RetryMin, RetryMax, Expire  time.Duration
	Poll, Lease, Heartbeat, TTL time.Duration
	Shutdown                    time.Duration
	LogLevel                    slog.Level
}

const usageText = `Usage: mx [flags]

mx is a small MX on an mxq queue. It accepts mail by SMTP into the queue
(one envelope per recipient; 250 only once the message is committed) and
delivers it to one relay: a 4xx is retried with exponential backoff, a 5xx
or a message older than --expire is bounced to its sender with an RFC 3464
report. Any number of instances may share one queue URL; the mail of an
instance that dies is taken over by the others once its heartbeat expires
(--node-ttl). SIGINT or SIGTERM stops accepting, lets deliveries in flight
finish for up to --shutdown-timeout, and releases the rest to the other
instances.

Examples:
  mx                                              ./spool, SMTP on 127.0.0.1:2525
  mx --queue s3://bucket/mx --relay mail.internal:25 --listen :25 --domains example.org --node mx1

Flags:
`

// flagSet defines the flags, with their defaults, into c.
func flagSet(c *config) *flag.FlagSet {
	host, _ := os.Hostname()
	spool, _ := filepath.Abs("spool")
	queueURL := os.Getenv("MXQ_QUEUE")
	if queueURL == "" {
		queueURL = "file://" + filepath.ToSlash(spool)
	}
	fs := flag.NewFlagSet("mx", flag.ContinueOnError)
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:2525", "SMTP `address` to accept mail on")
	fs.StringVar(&c.HTTP, "http", "127.0.0.1:9025", "`address` of /healthz and /metrics (\"\" to disable)")
	fs.StringVar(&c.Queue, "queue", queueURL, "queue `URL`: file://, s3://, minio://, gs://, datastore://, http(s)://; $MXQ_QUEUE sets the default")
	fs.StringVar(&c.Relay, "relay", "127.0.0.1:25", "`host:port` of the relay (smarthost) every message is delivered to")
	fs.StringVar(&c.Hostname, "hostname", host, "`name` in the SMTP greeting, HELO, Received and bounces")
	fs.Func("domains", "comma-separated `domains` to accept mail for (default: any, an open relay: only behind a firewall)", func(v string) error {
		c.Domains = strings.Split(strings.ToLower(strings.ReplaceAll(v, " ", "")), ",")
		return nil
	})
	fs.StringVar(&c.Node, "node", "", "this instance's node `name` in the queue, unique per instance (default: the host name)")
	fs.IntVar(&c.Workers, "workers", 16, "deliveries in parallel")
	fs.IntVar(&c.MaxRcpts, "max-rcpts", 100, "recipients per message")
	fs.Int64Var(&c.MaxSize, "max-size", 64<<20, "largest message accepted, in `bytes`")
	fs.DurationVar(&c.RetryMin, "retry-min", 5*time.Minute, "wait before the first retry, doubled for each further one")
	fs.DurationVar(&c.RetryMax, "retry-max", 2*time.Hour, "longest wait between retries, before a random extra of up to half")
	fs.DurationVar(&c.Expire, "expire", 5*24*time.Hour, "bounce a message still undelivered this long after it was accepted")
	fs.DurationVar(&c.Poll, "poll", time.Second, "how often an idle instance asks the queue for due mail")
	fs.DurationVar(&c.Lease, "lease", 15*time.Minute, "how long a delivery attempt holds its envelopes; it gives up before (a dead instance loses them sooner, see --node-ttl)")
	fs.DurationVar(&c.Heartbeat, "heartbeat", 10*time.Second, "how often this instance tells the queue it is alive")
	fs.DurationVar(&c.TTL, "node-ttl", 30*time.Second, "how long after its last heartbeat a silent instance's mail is taken over")
	fs.DurationVar(&c.Shutdown, "shutdown-timeout", 30*time.Second, "on SIGTERM, how long sessions and deliveries in flight may take to finish")
	fs.TextVar(&c.LogLevel, "log-level", slog.LevelInfo, "`level` of the log: debug, info, warn or error")
	return fs
}

// parseFlags reads the command line. Bad flags are errors of one line.
func parseFlags(args []string) (config, error) {
	var c config
	fs := flagSet(&c)
	fs.SetOutput(io.Discard) // run reports errors, in one line
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, err
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.Node == "" {
		c.Node = strings.ToLower(c.Hostname)
	}
	if err := queue.ValidNodeName(c.Node); err != nil {
		return c, fmt.Errorf("--node %q: %v (pass --node)", c.Node, err)
	}
	if _, _, err := net.SplitHostPort(c.Relay); err != nil {
		return c, fmt.Errorf("--relay %q: %v", c.Relay, err)
	}
	switch {
	case c.Workers < 1:
		return c, fmt.Errorf("--workers must be at least 1")
	case c.MaxRcpts < 1 || c.MaxSize < 1:
		return c, fmt.Errorf("--max-rcpts and --max-size must be positive")
	case c.RetryMin <= 0 || c.RetryMax < c.RetryMin:
		return c, fmt.Errorf("--retry-min must be positive and at most --retry-max")
	case c.Expire <= 0 || c.Poll <= 0 || c.Lease <= 0:
		return c, fmt.Errorf("--expire, --poll and --lease must be positive")
	case c.Shutdown < 0:
		return c, fmt.Errorf("--shutdown-timeout must not be negative")
	case c.Heartbeat <= 0 || c.TTL <= c.Heartbeat:
		return c, fmt.Errorf("--node-ttl (%v) must exceed --heartbeat (%v)", c.TTL, c.Heartbeat)
	}
	return c, nil
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run is main with its streams, so that the tests run it in a child process.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usageText)
		fs := flagSet(new(config))
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "mx: %v (see mx --help)\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, queue.DefaultURLMux(), cfg, log); err != nil {
		fmt.Fprintf(stderr, "mx: %v\n", err)
		if errors.Is(err, queue.ErrInvalid) {
			return 2
		}
		return 1
	}
	return 0
}

// serve runs the MX on the queue that mux opens for cfg.Queue until ctx is
// done, then shuts it down gracefully.
func serve(ctx context.Context, mux *queue.URLMux, cfg config, log *slog.Logger) error {
	// Open the queue and prove the store answers, so that a wrong
	// endpoint or missing credentials fail now, in one line.
	st, err := mux.OpenOptions(ctx, cfg.Queue, &queue.Options{
		Node:              cfg.Node,
		LeaseDuration:     cfg.Lease,
		HeartbeatInterval: cfg.Heartbeat,
		NodeTTL:           cfg.TTL,
	})
	if err != nil {
		return err
	}
	defer st.Close()
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = st.Ping(pctx)
	cancel()
	if err != nil {
		return fmt.Errorf("queue %s: %w", queue.RedactURL(cfg.Queue), err)
	}
	smtpLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	var httpLn net.Listener
	if cfg.HTTP != "" {
		if httpLn, err = net.Listen("tcp", cfg.HTTP); err != nil {
			smtpLn.Close()
			return err
		}
	}
	mx := newMX(cfg, st, log)

	// The node: a heartbeat every --heartbeat, and takeover of the
	// envelopes of instances whose heartbeat stopped. It runs until the
	// deliveries have ended, because a claim is only as alive as the
	// heartbeat of its holder.
	nodeCtx, stopNode := context.WithCancel(context.WithoutCancel(ctx))
	nodeDone := make(chan struct{})
	go func() {
		defer close(nodeDone)
		st.RunNode(nodeCtx, &queue.NodeOptions{
			OnTakeover: func(ids []queue.EvpID) { go mx.takeover(nodeCtx, ids) },
			OnError:    func(err error) { log.Warn("node", "err", err) },
		})
	}()
	defer func() { stopNode(); <-nodeDone }()
	// Envelopes this node held in its previous life (same --node, killed
	// or crashed) are claimed again by Owned: hand them back to the queue.
	if err := mx.reclaim(ctx); err != nil {
		log.Warn("reclaim", "err", err)
	}

	// Delivery: until ctx is done; deliveries in flight then have until
	// the shutdown deadline, after which abort cuts them short and they
	// release their envelopes.
	deliverCtx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	deliveryDone := make(chan struct{})
	go func() { mx.run(ctx, deliverCtx); close(deliveryDone) }()

	srv := mx.smtpServer()
	go srv.Serve(smtpLn)
	var hs *http.Server
	httpAddr := "off"
	if httpLn != nil {
		hs = &http.Server{Handler: mx.opsHandler(), ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(httpLn)
		httpAddr = httpLn.Addr().String()
	}
	if len(cfg.Domains) == 0 {
		log.Warn("no --domains: accepting mail for any recipient")
	}
	log.Info("started", "smtp", smtpLn.Addr(), "http", httpAddr, "node", st.Node(),
		"queue", queue.RedactURL(cfg.Queue), "relay", cfg.Relay, "workers", cfg.Workers)

	<-ctx.Done()
	log.Info("shutting down", "timeout", cfg.Shutdown)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown)
	defer cancel()
	context.AfterFunc(sctx, abort)
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close() // sessions still in DATA roll back: their client gets no 250
	}
	<-deliveryDone
	if hs != nil {
		hs.Close()
	}
	log.Info("stopped")
	return nil
}

// opsHandler serves /healthz (the store answers) and /metrics (Prometheus).
func (mx *MX) opsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := mx.q.Ping(ctx); err != nil {
			http.Error(w, "queue: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(mx.reg, promhttp.HandlerOpts{}))
	return mux
}

// metrics are the MX's Prometheus metrics.
type metrics struct {
	accepted  prometheus.Counter
	settled   *prometheus.CounterVec
	attempt   prometheus.Histogram
	inflight  prometheus.Gauge
	takenOver prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) metrics {
	m := metrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mx_accepted_messages_total", Help: "Messages committed to the queue and answered 250, bounces included."}),
		settled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mx_envelopes_total", Help: "Envelopes settled after a delivery attempt, by result: delivered, deferred, bounced, dropped (a failed bounce), released (shutdown), lost (lease lost)."},
			[]string{"result"}),
		attempt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mx_delivery_seconds", Help: "Duration of SMTP transactions with the relay.", Buckets: prometheus.DefBuckets}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mx_deliveries_in_flight", Help: "SMTP transactions with the relay in progress."}),
		takenOver: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mx_taken_over_envelopes_total", Help: "Envelopes taken over from dead instances or from this node's previous process."}),
	}
	reg.MustRegister(m.accepted, m.settled, m.attempt, m.inflight, m.takenOver,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
