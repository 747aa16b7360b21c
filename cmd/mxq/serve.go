package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/net/netutil"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/rest"
)

var serveFlags struct {
	listen      string
	tokenFile   string
	tlsCert     string
	tlsKey      string
	maxBody     sizeFlag
	maxEnvelope sizeFlag
	maxInFlight int
	maxConns    int
	bodyTimeout time.Duration
	txTimeout   time.Duration
	drain       time.Duration
	statsEvery  time.Duration
}

func init() {
	register(&command{
		name:  "serve",
		args:  "[--listen ADDR] [--token-file F] [--tls-cert F --tls-key F] [--max-body N] [--max-inflight N]",
		short: "serve the queue over HTTP: the REST API of docs/rest.md",
		long: `Serves the queue named by --queue to MTAs and tools on other machines:
they open it as http://ADDR (or https://ADDR with --tls-cert and --tls-key)
and share it with every other node of the store.

The server is one node of the queue (--node): it heartbeats while it runs,
claims made through it are its node's, and it takes over the claims of
dead nodes, making them due for its clients (GET /v1/due).

The bearer token is read from --token-file, else from $MXQ_TOKEN. It is
required unless --listen is a loopback address. GET /healthz answers without
it; GET /metrics (Prometheus) needs it when there is one. Besides the
server's own metrics, /metrics has the figures of "mxq stats" as
mxq_queue_* gauges, refreshed at most every --stats-every.

On SIGTERM or SIGINT the server stops accepting connections, lets the
requests in flight finish (at most --drain), rolls back the transactions
that clients left open, and closes the store.

A request refused before its body is read (401, 400, 405, 413) is answered
at once and its connection closed. A body that stalls for --body-timeout
fails its request; headers must arrive within 10 seconds, a whole request
within 30 minutes. At most --max-conns connections are open at once; more
wait to be accepted.`,
		flags: func(fs *flag.FlagSet) {
			serveFlags.maxBody = 1 << 30
			serveFlags.maxEnvelope = 64 << 10
			fs.StringVar(&serveFlags.listen, "listen", "127.0.0.1:8025", "listen on this `address`")
			fs.StringVar(&serveFlags.tokenFile, "token-file", "", "read the bearer token from this `file` (default $MXQ_TOKEN)")
			fs.StringVar(&serveFlags.tlsCert, "tls-cert", "", "serve HTTPS with this PEM certificate `file` (with --tls-key)")
			fs.StringVar(&serveFlags.tlsKey, "tls-key", "", "the PEM private key `file` of --tls-cert")
			fs.Var(&serveFlags.maxBody, "max-body", "largest message content or object accepted, in `bytes` (suffixes K, M, G)")
			fs.Var(&serveFlags.maxEnvelope, "max-envelope", "largest envelope accepted, in `bytes`; the store's limit is 64K")
			fs.IntVar(&serveFlags.maxInFlight, "max-inflight", 256, "requests served at once; more get 503")
			fs.IntVar(&serveFlags.maxConns, "max-conns", 1024, "connections open at once; more wait to be accepted")
			fs.DurationVar(&serveFlags.bodyTimeout, "body-timeout", time.Minute, "fail a request whose body sends nothing for this long")
			fs.DurationVar(&serveFlags.txTimeout, "tx-timeout", 5*time.Minute, "roll back a transaction idle this long")
			fs.DurationVar(&serveFlags.drain, "drain", time.Minute, "at shutdown, wait this long for requests in flight")
			fs.DurationVar(&serveFlags.statsEvery, "stats-every", time.Minute, "refresh the mxq_queue_* gauges of /metrics (mxq stats) at most this often; 0: no gauges")
		},
		run: runServe,
	})
}

// sizeFlag is a byte count with an optional K, M or G suffix (powers of
// 1024; a trailing "iB" or "B" is accepted).
type sizeFlag int64

func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *sizeFlag) Set(v string) error {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(v)), "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return fmt.Errorf("size %q: want a positive number of bytes, optionally with K, M or G", v)
	}
	*s = sizeFlag(n * mult)
	return nil
}

// loopback reports whether a listen host only accepts local connections.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func serveToken() (string, error) {
	f := serveFlags.tokenFile
	if f == "" {
		return strings.TrimSpace(os.Getenv("MXQ_TOKEN")), nil
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return "", usagef("--token-file: %v", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", usagef("--token-file %s is empty", f)
	}
	return tok, nil
}

func runServe(ctx context.Context, c *cli, args []string) error {
	f := &serveFlags
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	host, _, err := net.SplitHostPort(f.listen)
	if err != nil {
		return usagef("--listen %q: want host:port, such as 127.0.0.1:8025", f.listen)
	}
	token, err := serveToken()
	if err != nil {
		return err
	}
	if strings.ContainsAny(token, " \t\r\n") {
		return usagef("the token must not contain white space")
	}
	if token == "" && !loopback(host) {
		return usagef("--listen %s is not a loopback address: a token is required; set MXQ_TOKEN or --token-file (generate one with: openssl rand -hex 32)", f.listen)
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	if f.maxConns <= 0 {
		return usagef("--max-conns must be positive")
	}
	if f.bodyTimeout <= 0 {
		return usagef("--body-timeout must be positive")
	}
	if f.maxInFlight <= 0 {
		return usagef("--max-inflight must be positive")
	}

	log := slog.New(slog.NewTextHandler(c.stderr, nil))
	s, err := c.open(ctx)
	if err != nil {
		return err
	}
	defer s.Close() // open has pinged the store

	// The server is a node of the queue: the claims its clients make are
	// this node's, held while it heartbeats. It takes over the claims of
	// dead nodes and makes them due at once, so that its clients find
	// them in GET /v1/due.
	nctx, stopNode := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNode()
	nodeDone := make(chan struct{})
	go func() {
		defer close(nodeDone)
		s.RunNode(nctx, &queue.NodeOptions{
			OnTakeover: func(ids []queue.EvpID) {
				for _, id := range ids {
					c, err := s.Resume(nctx, id)
					if err == nil {
						err = c.Defer(nctx, nil, time.Now())
					}
					if err != nil {
						log.Warn("making a taken-over envelope due", "evpid", id.String(), "err", err)
					}
				}
			},
			OnError: func(err error) { log.Warn("node", "err", err) },
		})
	}()
	defer func() { stopNode(); <-nodeDone }()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if f.statsEvery > 0 {
		reg.MustRegister(newStatsCollector(s, f.statsEvery))
	}
	h := rest.New(s, &rest.Options{
		Token:           token,
		MaxBodySize:     int64(f.maxBody),
		MaxEnvelopeSize: int64(f.maxEnvelope),
		MaxInFlight:     f.maxInFlight,
		BodyIdleTimeout: f.bodyTimeout,
		TxIdleTimeout:   f.txTimeout,
		Logger:          log,
		Metrics:         reg,
	})
	srv := &http.Server{
		Handler: h,
		// Headers are small and come at once; bodies may be a large
		// message on a slow link, so the whole-request timeouts are
		// generous and the handler bounds each body by --max-body.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Minute,
		WriteTimeout:      30 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return err
	}
	ln = netutil.LimitListener(ln, f.maxConns)
	scheme := "http"
	if f.tlsCert != "" {
		scheme = "https"
	}
	addr := ln.Addr().String()
	fmt.Fprintf(c.stdout, "mxq serve: listening on %s://%s\n", scheme, addr)
	log.Info("serving", "addr", addr, "tls", scheme == "https", "queue", queue.RedactURL(c.queueURL),
		"node", s.Node(), "auth", token != "", "max_body", int64(f.maxBody), "max_inflight", f.maxInFlight)

	served := make(chan error, 1)
	go func() {
		if scheme == "https" {
			served <- srv.ServeTLS(ln, f.tlsCert, f.tlsKey)
		} else {
			served <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-served:
		// The listener failed, or the certificate did not load.
		h.Shutdown(context.WithoutCancel(ctx))
		return err
	case <-ctx.Done():
	}

	log.Info("shutting down: finishing the requests in flight", "drain", f.drain)
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.drain)
	defer cancel()
	if err := srv.Shutdown(dctx); err != nil {
		log.Warn("requests still in flight after the drain time; closing their connections", "err", err)
		srv.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("serve", "err", err)
	}
	rctx, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel2()
	if err := h.Shutdown(rctx); err != nil {
		log.Warn("rolling back open transactions", "err", err)
	}
	stopNode()
	<-nodeDone
	if err := s.Close(); err != nil && !errors.Is(err, queue.ErrClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}
