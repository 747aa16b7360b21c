package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/mxqueue/mxq/opensmtpd"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// DefaultQueueConfig is the configuration the queue process reads when
// smtpd gives it no argument (-B queue=mxq).
const defaultQueueConfig = "/etc/mxq/queue.conf"

func init() {
	register(&command{
		name:  "opensmtpd-queue",
		args:  "URL|CONFIG",
		short: "serve OpenSMTPD's queue on fd 0, as smtpd's -B queue= process",
		long: `smtpd started with "-B queue=NAME:ARG" runs /usr/libexec/opensmtpd/queue-NAME
with ARG as its argument and speaks the queue protocol on fd 0; install that
program with "mxq opensmtpd install". A binary started under a name beginning
with "queue-" (smtpd passes "queue-proc") runs this command directly.

ARG is a queue URL, or the path of a configuration file of key=value lines
(blank lines and lines starting with # are ignored):

  queue=URL        the queue (required)
  node=NAME        this node's name in the queue (default: from the host name)
  timeout=10s      bound on each operation; past it smtpd gets a temporary failure
  header=auto      imsg header layout smtpd speaks: auto, 6.8 (smtpd 6.4 to
                   7.6) or 7.7 (smtpd 7.7 and later); auto reads the version
                   of the smtpd at the other end of fd 0 from its executable
                   and refuses to start when it cannot; set it for builds
                   whose version string does not tell
  smtpd-patched=false  true when smtpd (7.5 or later) was built with the
                   MESSAGE_FD_R fix in mxq's docs; silences the start-up
                   warning about upstream's bug, which makes every delivery
                   from an external queue fail on unpatched 7.5 to 7.9
  prealloc=N       accepted and ignored: MAIL FROM makes no store request, as
                   message IDs come from blocks of 4,096
  shared=false     true when several smtpd instances share the queue: each walks
                   only its own envelopes, and a survivor takes over a dead
                   instance's envelopes and hands them to its smtpd with
                   "smtpctl discover <evpid>"; give each instance its own node=
  heartbeat=10s    shared mode: how often this node proves it is alive; it is
                   taken over after 3 missed heartbeats
  smtpctl=/usr/sbin/smtpctl   shared mode: the smtpctl that reaches this smtpd
  tmpdir=DIR       where message bodies are copied for smtpd (default: $TMPDIR)
  log=info         log level: debug, info, warn or error
  procs=0          CPUs the queue process runs Go code on at once
                   (GOMAXPROCS); 0 leaves the default, every CPU. It serves
                   one request at a time: 1 spares it thread switches and
                   some CPU on a network store, but not on file://, whose
                   fsyncs block a thread (docs/performance.md)
  profile=FILE     write to FILE, every 10 s and at exit, where the queue
                   process's time goes: per request type its count and its
                   time to answer (mean, p50, p99), the time smtpd took
                   before sending it, and the share of the wall time the
                   queue process kept smtpd waiting

Without ARG, ` + defaultQueueConfig + ` is read. Logs go to standard error,
which is smtpd's log.`,
		run: runOpensmtpdQueue,
	})
	register(&command{
		name:  "opensmtpd",
		args:  "install [--name mxq] [--dir /usr/libexec/opensmtpd] [--smtpd PATH]",
		short: "install this binary as OpenSMTPD's queue-<name> program",
		long: `"install" creates the symbolic link DIR/queue-NAME to this binary (replacing an
older link), so that "smtpd -B queue=NAME:ARG" runs it. ARG is a queue URL or
a configuration file; see "mxq help opensmtpd-queue".

It then reads the version of the smtpd that will run it (--smtpd; by default
DIR/../../sbin/smtpd when that exists, else /usr/sbin/smtpd) and reports the
imsg header layout the queue process will use, and whether that release has
upstream's MESSAGE_FD_R bug, which needs a patched smtpd (docs/opensmtpd.md).`,
		run: runOpensmtpd,
	})
}

// queueConfig is the queue process's configuration.
type queueConfig struct {
	queue   string
	node    string
	timeout time.Duration
	header  opensmtpd.HeaderFormat
	patched bool
	tmpdir  string
	level   slog.Level
	profile string
	procs   int

	shared    bool
	heartbeat time.Duration
	smtpctl   string
}

// loadQueueConfig interprets the argument smtpd passes: a URL, or a file.
func loadQueueConfig(arg string) (*queueConfig, error) {
	cfg := &queueConfig{timeout: 10 * time.Second, smtpctl: "/usr/sbin/smtpctl"}
	if strings.Contains(arg, "://") {
		cfg.queue = arg
		return cfg, nil
	}
	f, err := os.Open(arg)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		bad := func(format string, args ...any) error {
			return usagef("%s:%d: %s", arg, line, fmt.Sprintf(format, args...))
		}
		if !ok {
			return nil, bad("want key=value")
		}
		switch k {
		case "queue":
			cfg.queue = v
		case "node":
			if err := queue.ValidNodeName(v); err != nil {
				return nil, bad("node: %v", err)
			}
			cfg.node = v
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return nil, bad("timeout: want a positive duration such as 10s")
			}
			cfg.timeout = d
		case "header":
			switch v {
			case "auto":
				cfg.header = opensmtpd.HeaderAuto
			case "6.8":
				cfg.header = opensmtpd.Header68
			case "7.7":
				cfg.header = opensmtpd.Header77
			default:
				return nil, bad("header: want auto, 6.8 or 7.7")
			}
		case "smtpd-patched":
			b, err := driver.ParseBool(k, v, false)
			if err != nil {
				return nil, bad("smtpd-patched: want true or false")
			}
			cfg.patched = b
		case "prealloc":
			// Accepted, for configuration files written for earlier
			// versions; Begin makes no request now.
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 10000 {
				return nil, bad("prealloc: want a number from 0 to 10000")
			}
		case "shared":
			b, err := driver.ParseBool(k, v, false)
			if err != nil {
				return nil, bad("shared: want true or false")
			}
			cfg.shared = b
		case "heartbeat":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return nil, bad("heartbeat: want a positive duration such as 10s")
			}
			cfg.heartbeat = d
		case "smtpctl":
			cfg.smtpctl = v
		case "tmpdir":
			cfg.tmpdir = v
		case "profile":
			cfg.profile = v
		case "procs":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return nil, bad("procs: want a number of CPUs, or 0 for all")
			}
			cfg.procs = n
		case "log":
			if err := cfg.level.UnmarshalText([]byte(v)); err != nil {
				return nil, bad("log: want debug, info, warn or error")
			}
		default:
			return nil, bad("unknown key %q", k)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if cfg.queue == "" {
		return nil, usagef("%s: no queue=URL line", arg)
	}
	return cfg, nil
}

// shutdownGrace is how long the queue process keeps serving after SIGTERM
// or SIGINT: smtpd, stopping too, still sends CLOSE and then hangs up.
const shutdownGrace = 30 * time.Second

func runOpensmtpdQueue(ctx context.Context, c *cli, args []string) error {
	arg := defaultQueueConfig
	switch len(args) {
	case 0:
		if os.Getenv("MXQ_QUEUE") != "" {
			arg = os.Getenv("MXQ_QUEUE")
		}
	case 1:
		arg = args[0]
	default:
		return usagef("want one argument, a queue URL or a configuration file")
	}
	cfg, err := loadQueueConfig(arg)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: cfg.level})).With("prog", "mxq")
	if cfg.procs > 0 {
		runtime.GOMAXPROCS(cfg.procs)
	}
	node := cfg.node
	if node == "" {
		node = c.node
	}
	if node == "" {
		node = defaultNode()
	}

	f := os.NewFile(0, "smtpd")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("fd 0 is not smtpd's socket (run by smtpd -B queue=NAME:ARG): %w", err)
	}
	conn, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return fmt.Errorf("fd 0 is a %T, not smtpd's unix socket", fc)
	}
	defer conn.Close()

	format, err := headerFormat(log, cfg, conn)
	if err != nil {
		return err
	}

	// smtpd keeps talking while it shuts down: a signal starts a grace
	// period instead of cutting the conversation.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
		case <-sctx.Done():
			return
		}
		log.Info("signal received; serving until smtpd hangs up", "grace", shutdownGrace)
		select {
		case <-time.After(shutdownGrace):
			cancel()
		case <-sctx.Done():
		}
	}()

	octx, ocancel := context.WithTimeout(sctx, c.timeout)
	s, err := queue.DefaultURLMux().OpenOptions(octx, cfg.queue, &queue.Options{Node: node, HeartbeatInterval: cfg.heartbeat, SelfScheduled: true})
	ocancel()
	if err != nil {
		return err
	}
	defer s.Close()
	log.Info("serving smtpd's queue", "queue", queue.RedactURL(cfg.queue), "node", node, "timeout", cfg.timeout, "shared", cfg.shared)

	qopts := &opensmtpd.QueueOptions{Logger: log, TempDir: cfg.tmpdir, Shared: cfg.shared}
	if cfg.shared {
		qopts.Discover = smtpctlDiscover(cfg.smtpctl)
	}
	q := opensmtpd.NewQueue(s, qopts)
	sopts := &opensmtpd.ServeOptions{
		OpTimeout:    cfg.timeout,
		Logger:       log,
		HeaderFormat: format,
	}
	if cfg.profile != "" {
		p := opensmtpd.NewProfile()
		sopts.Observe = p.Observe
		stop := writeProfileEvery(log, p, cfg.profile, profileEvery)
		defer stop()
	}
	err = opensmtpd.Serve(sctx, conn, q, sopts)
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.timeout)
	defer dcancel()
	if serr := q.Shutdown(dctx); serr != nil {
		log.Warn("shutdown: open transactions not rolled back; the sweep will remove them", "err", serr)
	}
	if err != nil {
		return err
	}
	log.Info("smtpd closed the queue")
	return nil
}

// profileEvery is how often profile= rewrites its file.
const profileEvery = 10 * time.Second

// writeProfileEvery writes p to path every d, and once more when the
// returned function is called. Each write replaces the file whole, so a
// reader never sees half a table.
func writeProfileEvery(log *slog.Logger, p *opensmtpd.Profile, path string, d time.Duration) (stop func()) {
	write := func() {
		tmp := path + ".tmp"
		f, err := os.Create(tmp)
		if err == nil {
			_, err = p.WriteTo(f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err == nil {
			err = os.Rename(tmp, path)
		}
		if err != nil {
			log.Warn("profile: cannot write", "file", path, "err", err)
		}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				write()
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		write()
	}
}

// fdrDoc is where the MESSAGE_FD_R bug and its fix are documented.
const fdrDoc = "docs/opensmtpd.md, \"Versions\""

// headerFormat decides the imsg header layout before the first request:
// the header= setting, or else the layout of the smtpd version at the other
// end of conn. It logs the choice and its reason, and warns once about
// upstream's MESSAGE_FD_R bug when the smtpd has it.
func headerFormat(log *slog.Logger, cfg *queueConfig, conn *net.UnixConn) (opensmtpd.HeaderFormat, error) {
	smtpd, idErr := opensmtpd.IdentifyPeer(conn)
	if smtpd != nil {
		warnFdR(log, smtpd, cfg.patched)
	}
	if cfg.header != opensmtpd.HeaderAuto {
		args := []any{"layout", cfg.header.String(), "reason", "header= setting"}
		if smtpd != nil {
			args = append(args, "smtpd", smtpd.Version)
			if f, err := smtpd.HeaderFormat(); err == nil && f != cfg.header {
				log.Warn("header= differs from the layout of this smtpd's version; the setting wins", "setting", cfg.header.String(), "version_layout", f.String(), "smtpd", smtpd.Version)
			}
		}
		log.Info("imsg header layout", args...)
		return cfg.header, nil
	}
	if idErr != nil {
		return 0, fmt.Errorf("cannot tell which imsg header layout smtpd speaks (%v): set header=6.8 (smtpd 6.4 to 7.6) or header=7.7 (smtpd 7.7 and later) in the queue configuration", idErr)
	}
	f, err := smtpd.HeaderFormat()
	if err != nil {
		return 0, err
	}
	log.Info("imsg header layout", "layout", f.String(), "reason", "version of the smtpd on fd 0", "smtpd", smtpd.Version, "pid", smtpd.PID, "executable", smtpd.Path)
	return f, nil
}

// warnFdR warns, once at start-up, when smtpd has upstream's MESSAGE_FD_R
// bug: it cannot read a message body from any external queue.
func warnFdR(log *slog.Logger, smtpd *opensmtpd.Smtpd, patched bool) {
	if !smtpd.FdRBug() || patched {
		return
	}
	what := "has upstream's MESSAGE_FD_R bug (7.5 to 7.9)"
	if !smtpd.FdRBugChecked() {
		what = "is newer than the releases checked for upstream's MESSAGE_FD_R bug (present in 7.5 to 7.9)"
	}
	log.Warn("OpenSMTPD "+smtpd.Version+" "+what+": unless it was built with the fix, its first delivery from this queue fails and smtpd exits; see "+fdrDoc+", and set smtpd-patched=true once it carries the fix",
		"smtpd", smtpd.Version, "executable", smtpd.Path)
}

// smtpctlDiscover hands an envelope to the running smtpd. The queue process
// runs in smtpd's mount namespace, so smtpctl reaches this smtpd's control
// socket. Only the evpid form is used: "discover <msgid>" crashes smtpd 6.8
// with an external queue.
func smtpctlDiscover(smtpctl string) func(ctx context.Context, id queue.EvpID) error {
	return func(ctx context.Context, id queue.EvpID) error {
		out, err := exec.CommandContext(ctx, smtpctl, "discover", id.String()).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s discover %s: %v: %s", smtpctl, id, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}

var opensmtpdFlags struct {
	name  string
	dir   string
	smtpd string
}

func runOpensmtpd(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 || args[0] != "install" {
		return usagef("want: mxq opensmtpd install [--name mxq] [--dir /usr/libexec/opensmtpd]")
	}
	fs := flag.NewFlagSet("mxq opensmtpd install", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&opensmtpdFlags.name, "name", "mxq", "the `NAME` in smtpd's -B queue=NAME:ARG")
	fs.StringVar(&opensmtpdFlags.dir, "dir", "/usr/libexec/opensmtpd", "smtpd's libexec `directory`")
	fs.StringVar(&opensmtpdFlags.smtpd, "smtpd", "", "the smtpd `binary` to check (default: DIR/../../sbin/smtpd, else /usr/sbin/smtpd)")
	if err := fs.Parse(args[1:]); err != nil {
		return usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	name := opensmtpdFlags.name
	switch {
	case name == "fs" || name == "null" || name == "ram":
		return usagef("--name %s is one of smtpd's built-in queues", name)
	case name == "" || strings.ContainsAny(name, "/: \t\n"):
		return usagef("--name %q: want a plain name without / or :", name)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		return err
	}
	link := filepath.Join(opensmtpdFlags.dir, "queue-"+name)
	if fi, err := os.Lstat(link); err == nil {
		if fi.Mode()&os.ModeSymlink == 0 {
			return fmt.Errorf("%s exists and is not a symbolic link; remove it first", link)
		}
		if err := os.Remove(link); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Symlink(self, link); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s -> %s\nstart smtpd with: smtpd -B queue=%s:%s (or a queue URL)\n", link, self, name, defaultQueueConfig)
	reportSmtpd(c, opensmtpdFlags.smtpd, opensmtpdFlags.dir)
	return nil
}

// reportSmtpd tells what the queue process will find in the smtpd that
// runs it: its version, header layout and the MESSAGE_FD_R bug.
func reportSmtpd(c *cli, bin, libexec string) {
	if bin == "" {
		bin = "/usr/sbin/smtpd"
		if p := filepath.Join(libexec, "..", "..", "sbin", "smtpd"); fileExists(p) {
			bin = filepath.Clean(p)
		}
	}
	smtpd, err := opensmtpd.IdentifyExecutable(bin)
	if err != nil {
		fmt.Fprintf(c.stdout, "smtpd: %v; the queue process identifies the smtpd that runs it at start-up, or set header= in its configuration\n", err)
		return
	}
	f, err := smtpd.HeaderFormat()
	if err != nil {
		fmt.Fprintf(c.stderr, "warning: %s: %v\n", bin, err)
		return
	}
	fmt.Fprintf(c.stdout, "smtpd: %s at %s, imsg header layout %s\n", smtpd, bin, f)
	if smtpd.FdRBug() {
		fmt.Fprintf(c.stderr, "warning: %s has upstream's MESSAGE_FD_R bug (every release from 7.5 to 7.9): unless it was built with the fix, its first delivery from an external queue fails and smtpd exits; see %s\n", smtpd, fdrDoc)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// queueProcArgs returns the arguments to run when the binary was started
// by smtpd as a queue process (argv[0] "queue-proc", or a "queue-NAME"
// link run by hand), and nil otherwise.
func queueProcArgs(argv []string) []string {
	base := filepath.Base(argv[0])
	if base != "queue-proc" && !strings.HasPrefix(base, "queue-") {
		return nil
	}
	return append([]string{"opensmtpd-queue", "--"}, argv[1:]...)
}
