// Command mxq inspects and repairs an mxq queue, serves it over HTTP, and
// runs it for OpenSMTPD. Run "mxq help" for the commands.
//
// # Commands
//
// put, ls, show, cat, rm, sweep, quarantine, stats, hold, release and
// schedule inspect and repair a queue; migrate copies or moves it to
// another store; serve runs the REST frontend (package rest) over it; opensmtpd
// and opensmtpd-queue run it as OpenSMTPD's queue process (package
// opensmtpd); bench measures it (package bench). completion and man
// print shell completion scripts and the manual page, made from the same
// command table as help.
//
// # Queues
//
// The queue is named by URL with --queue or $MXQ_QUEUE (default: a file://
// queue under ./spool); every adapter is linked in, and the scheme picks
// it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	_ "github.com/mxqueue/mxq/adapters/all"
	"github.com/mxqueue/mxq/queue"
)

// command is one subcommand.
type command struct {
	name  string
	args  string // the synopsis after the name
	short string
	long  string
	flags func(fs *flag.FlagSet)
	run   func(ctx context.Context, c *cli, args []string) error
}

var commands []*command

func register(c *command) { commands = append(commands, c) }

// cli is the state shared by commands: the global flags and the streams.
type cli struct {
	queueURL string
	json     bool
	timeout  time.Duration
	node     string
	stdin    io.Reader
	stdout   io.Writer
	stderr   io.Writer
}

// usageError is bad input: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func defaultQueue() string {
	if u := os.Getenv("MXQ_QUEUE"); u != "" {
		return u
	}
	abs, err := filepath.Abs("spool")
	if err != nil {
		abs = "/var/spool/mxq"
	}
	return "file://" + filepath.ToSlash(abs)
}

func (c *cli) globalFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.queueURL, "queue", c.queueURL, "queue `URL` (default $MXQ_QUEUE, else file:// under ./spool)")
	fs.BoolVar(&c.json, "json", c.json, "print JSON for scripts instead of text for people")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "give up on the store after this long")
	fs.StringVar(&c.node, "node", c.node, "this node's `name` in leases (default: the host name; migrate, hold, release and schedule prefix their own name); for ls, the node whose claims to list")
}

func main() {
	args := os.Args[1:]
	if qa := queueProcArgs(os.Args); qa != nil {
		args = qa // run by smtpd -B queue=NAME:ARG
	}
	os.Exit(run(args, os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) (status int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "mxq: internal error: %v\n", r)
			status = 1
		}
	}()
	c := &cli{timeout: time.Minute, stdin: stdin, stdout: stdout, stderr: stderr}
	global := flag.NewFlagSet("mxq", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	c.globalFlags(global)
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return 0
		}
		fmt.Fprintf(stderr, "mxq: %v\nRun 'mxq help' for usage.\n", err)
		return 2
	}
	args = global.Args()
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		if len(args) > 1 {
			if cmd := find(args[1]); cmd != nil {
				cmdUsage(stdout, c, cmd)
				return 0
			}
		}
		usage(stdout)
		return 0
	}
	cmd := find(name)
	if cmd == nil {
		fmt.Fprintf(stderr, "mxq: unknown command %q\nRun 'mxq help' for usage.\n", name)
		return 2
	}
	fs := flag.NewFlagSet("mxq "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.globalFlags(fs)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			cmdUsage(stdout, c, cmd)
			return 0
		}
		fmt.Fprintf(stderr, "mxq %s: %v\nRun 'mxq help %s' for usage.\n", cmd.name, err, cmd.name)
		return 2
	}
	if c.queueURL == "" {
		c.queueURL = defaultQueue()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cmd.run(ctx, c, fs.Args()); err != nil {
		fmt.Fprintf(stderr, "mxq %s: %s\n", cmd.name, oneLine(err))
		var ue usageError
		if errors.As(err, &ue) || errors.Is(err, queue.ErrInvalid) {
			return 2
		}
		return 1
	}
	return 0
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func find(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func usage(w io.Writer) {
	fmt.Fprint(w, `mxq: one shared mail queue for every MX, in a cloud store.

Usage: mxq [--queue URL] [--json] <command> [arguments]

Commands:
`)
	cs := slices.Clone(commands)
	slices.SortFunc(cs, func(a, b *command) int { return strings.Compare(a.name, b.name) })
	for _, cmd := range cs {
		fmt.Fprintf(w, "  %-16s %s\n", cmd.name, cmd.short)
	}
	fmt.Fprintf(w, `
%s
Registered schemes: %s
Run 'mxq help <command>' for a command's flags.
`, queueURLHelp, strings.Join(queue.DefaultURLMux().Schemes(), ", "))
}

// queueURLHelp is the help on queue URLs, of usage and the manual.
const queueURLHelp = `The queue is chosen by URL with --queue or $MXQ_QUEUE:
  file:///var/spool/mxq                  a local directory (default: ./spool)
  s3://bucket/prefix?region=eu-west-1    Amazon S3 or a compatible server
  minio://host:9000/bucket/prefix        any S3-compatible server, through minio-go
  gs://bucket/prefix                     Google Cloud Storage
  datastore://project/namespace          Google Cloud Datastore
  http://host:8025/                      an mxq serve frontend
  mem://name                             in memory, for tests

Any of them encrypts content and envelopes with ?key_file=FILE (32 random
bytes, mode 600), plus old_key_files=F1,F2 to read older keys,
compress=true and require_encryption=true; see docs/encryption.md.
`

func cmdUsage(w io.Writer, c *cli, cmd *command) {
	fmt.Fprintf(w, "Usage: mxq %s %s\n\n%s\n", cmd.name, cmd.args, cmd.short)
	if cmd.long != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.long))
	}
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	c.globalFlags(fs)
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	fmt.Fprintln(w, "\nFlags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// open opens the queue named by --queue, with a deadline on the opening.
func (c *cli) open(ctx context.Context) (*queue.Store, error) {
	u := c.queueURL
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	node := c.node
	if node == "" {
		node = defaultNode()
	}
	if err := queue.ValidNodeName(node); err != nil {
		return nil, usagef("--node: %v", err)
	}
	s, err := queue.DefaultURLMux().OpenOptions(ctx, u, &queue.Options{Node: node})
	if err != nil {
		return nil, err
	}
	// One cheap request tells a wrong endpoint, bad credentials or a
	// missing bucket apart before any work.
	if err := s.Ping(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("the store does not answer: %w", err)
	}
	return s, nil
}

// defaultNode derives a node name from the host name.
func defaultNode() string {
	h, _ := os.Hostname()
	b := []byte(strings.ToLower(h))
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '-') {
			b[i] = '-'
		}
	}
	n := strings.TrimLeft(string(b), ".")
	if len(n) > 64 {
		n = n[:64]
	}
	if n == "" {
		n = "node"
	}
	return n
}

// session opens the queue and bounds the command's store work by
// --timeout; done releases both.
func (c *cli) session(ctx context.Context) (context.Context, *queue.Store, func(), error) {
	s, err := c.open(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := c.opCtx(ctx)
	return ctx, s, func() { cancel(); s.Close() }, nil
}

// opCtx bounds one command's store work by --timeout.
func (c *cli) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
