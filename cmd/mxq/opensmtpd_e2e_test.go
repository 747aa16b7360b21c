package main

// End-to-end tests of the queue process with real OpenSMTPD builds:
// Debian's 6.8 and the 7.x builds of scripts/build-smtpd (listed in
// MXQ_TEST_OPENSMTPD). smtpd runs as root in a private mount namespace (its
// spool and control socket are paths compiled in, bound over there),
// listens only on 127.0.0.1, and delivers with a small mda script into
// files; mail comes in over SMTP with net/smtp.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/opensmtpd"
	"github.com/mxqueue/mxq/queue"
)

// smtpdBuild is one OpenSMTPD the end-to-end tests run on.
type smtpdBuild struct {
	name    string // for subtests: "6.8.0p2", "7.9.0-portable"
	smtpd   string // the binary
	smtpctl string
	libexec string // where smtpd looks for queue-NAME
	spool   string // its compiled-in queue directory, bound over per test
	run     string // its compiled-in control socket directory, likewise
	version *opensmtpd.Smtpd
}

// debianSmtpd is Debian's package, 6.8 on bookworm.
var debianSmtpd = smtpdBuild{
	smtpd:   "/usr/sbin/smtpd",
	smtpctl: "/usr/sbin/smtpctl",
	libexec: "/usr/libexec/opensmtpd",
	spool:   "/var/spool/smtpd",
	run:     "/run",
}

// prefixBuild is a build of scripts/build-smtpd under prefix.
func prefixBuild(prefix string) smtpdBuild {
	return smtpdBuild{
		smtpd:   filepath.Join(prefix, "sbin", "smtpd"),
		smtpctl: filepath.Join(prefix, "sbin", "smtpctl"),
		libexec: filepath.Join(prefix, "libexec", "opensmtpd"),
		spool:   filepath.Join(prefix, "spool"),
		run:     filepath.Join(prefix, "run"),
	}
}

func TestMain(m *testing.M) {
	// As a child process of TestServe, the test binary is mxq itself.
	if args := os.Getenv("MXQ_SERVE_HELPER_ARGS"); args != "" {
		os.Exit(run(strings.Split(args, "\n"), os.Stdin, os.Stdout, os.Stderr))
	}
	// Orphans of smtpd (its queue process's children) are re-parented to
	// the test, which reaps them: nothing is left behind, not even zombies.
	const prSetChildSubreaper = 36
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// requireSmtpd returns the OpenSMTPD builds to test on: Debian's, and
// every prefix in MXQ_TEST_OPENSMTPD (space-separated, as scripts/test
// sets it). It skips the test when smtpd cannot run here, and fails it
// instead when MXQ_REQUIRE_SERVICES=1, which also requires a 7.x build.
func requireSmtpd(t *testing.T) []smtpdBuild {
	t.Helper()
	required := os.Getenv("MXQ_REQUIRE_SERVICES") == "1"
	miss := func(format string, args ...any) {
		t.Helper()
		if required {
			t.Fatalf("MXQ_REQUIRE_SERVICES=1: "+format, args...)
		}
		t.Skipf(format, args...)
	}
	if testing.Short() {
		t.Skip("-short: the OpenSMTPD end-to-end tests take minutes")
	}
	if os.Geteuid() != 0 {
		miss("the OpenSMTPD end-to-end tests need root: smtpd runs as root and in a private mount namespace")
	}
	if _, err := os.Stat("/usr/bin/unshare"); err != nil {
		miss("/usr/bin/unshare missing: install util-linux")
	}
	builds := []smtpdBuild{debianSmtpd}
	for _, prefix := range strings.Fields(os.Getenv("MXQ_TEST_OPENSMTPD")) {
		builds = append(builds, prefixBuild(prefix))
	}
	var out []smtpdBuild
	newest := 0
	for _, b := range builds {
		for _, p := range []string{b.smtpd, b.smtpctl} {
			if _, err := os.Stat(p); err != nil {
				miss("%s missing: install opensmtpd (Debian's package) or build 7.x with scripts/build-smtpd (scripts/test does both)", p)
			}
		}
		if fi, err := os.Stat(b.libexec); err != nil || !fi.IsDir() {
			miss("%s missing: install Debian's opensmtpd", b.libexec)
		}
		v, err := opensmtpd.IdentifyExecutable(b.smtpd)
		if err != nil {
			t.Fatalf("%s: %v", b.smtpd, err)
		}
		b.version, b.name = v, v.Version
		newest = max(newest, v.Major*100+v.Minor)
		out = append(out, b)
	}
	if required && newest < 707 {
		miss("no OpenSMTPD 7.7 or later to test on: build one with scripts/build-smtpd 7.9.0p0 and list its prefix in MXQ_TEST_OPENSMTPD (scripts/test does)")
	}
	return out
}

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// mxqBinary builds the command once per test run.
func mxqBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "mxq-e2e-bin-")
		if buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "mxq")
		out, err := exec.Command("go", "build", "-o", buildBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

var installSeq atomic.Int32

// installQueueProc links <libexec>/queue-<unique name> to the binary, with
// mxq's own install command, and returns the name.
func installQueueProc(t *testing.T, b smtpdBuild) string {
	t.Helper()
	bin := mxqBinary(t)
	name := fmt.Sprintf("mxqe2e%d-%d", os.Getpid(), installSeq.Add(1))
	link := filepath.Join(b.libexec, "queue-"+name)
	t.Cleanup(func() { os.Remove(link) })
	out, err := exec.Command(bin, "opensmtpd", "install", "--name", name, "--dir", b.libexec, "--smtpd", b.smtpd).CombinedOutput()
	if err != nil {
		t.Fatalf("mxq opensmtpd install: %v\n%s", err, out)
	}
	if dst, err := os.Readlink(link); err != nil || dst != bin {
		t.Fatalf("%s -> %q, %v; want %s", link, dst, err, bin)
	}
	if want := "smtpd: OpenSMTPD " + b.version.Version; !strings.Contains(string(out), want) {
		t.Errorf("mxq opensmtpd install does not report %q:\n%s", want, out)
	}
	if b.version.FdRBug() != strings.Contains(string(out), "MESSAGE_FD_R bug") {
		t.Errorf("mxq opensmtpd install on %s: FD_R bug warning is wrong:\n%s", b.name, out)
	}
	return name
}

// deliverScript is the mda: it stores the message as out/RCPT.PID.mail,
// unless out/ctl-RCPT holds "CODE N": then its first N attempts exit CODE.
// out/delay, if present, holds seconds to sleep first.
const deliverScript = `#!/bin/sh
dir=$(dirname "$0")/out
rcpt="$1"
if [ -f "$dir/delay" ]; then sleep "$(cat "$dir/delay")"; fi
if [ -f "$dir/ctl-$rcpt" ]; then
	read code n < "$dir/ctl-$rcpt"
	echo x >> "$dir/attempts-$rcpt"
	if [ "$(wc -l < "$dir/attempts-$rcpt")" -le "$n" ]; then
		echo "deliver.sh: simulated failure $code for $rcpt" >&2
		exit "$code"
	fi
fi
cat > "$dir/$rcpt.$$.tmp" && mv "$dir/$rcpt.$$.tmp" "$dir/$rcpt.$$.mail"
`

// mta is one smtpd instance with its own spool, /run and mailboxes.
type mta struct {
	t     *testing.T
	b     smtpdBuild
	dir   string
	port  int
	queue string // the -B queue= value; "" for smtpd's built-in fs queue

	cmd     *exec.Cmd
	done    chan struct{}
	stopped bool
}

// newMTA prepares an smtpd whose queue is queueArg, a URL or an mxq
// configuration file; "" means smtpd's built-in fs queue.
func newMTA(t *testing.T, b smtpdBuild, queueArg string) *mta {
	t.Helper()
	dir, err := os.MkdirTemp("", "mxq-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The mda runs as nobody: it must reach its script and mailboxes.
	must(t, os.Chmod(dir, 0o755))
	must(t, os.Mkdir(filepath.Join(dir, "spool"), 0o711))
	must(t, os.Mkdir(filepath.Join(dir, "run"), 0o755))
	must(t, os.Mkdir(filepath.Join(dir, "out"), 0o777))
	must(t, os.Chmod(filepath.Join(dir, "out"), 0o777))
	must(t, os.WriteFile(filepath.Join(dir, "deliver.sh"), []byte(deliverScript), 0o755))
	m := &mta{t: t, b: b, dir: dir, port: freePort(t)}
	conf := fmt.Sprintf(`table vusers { "@test.local" = "nobody" }
listen on 127.0.0.1 port %d
action "deliver" mda "%s/deliver.sh %%{rcpt}" virtual <vusers> user nobody
match from local for domain "test.local" action "deliver"
`, m.port, dir)
	must(t, os.WriteFile(filepath.Join(dir, "smtpd.conf"), []byte(conf), 0o644))
	if queueArg != "" {
		m.queue = installQueueProc(t, b) + ":" + queueArg
	}
	return m
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs smtpd in a private mount namespace with the spool and /run
// bound over, and waits until it accepts connections.
func (m *mta) start(extra ...string) {
	t := m.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(m.dir, "smtpd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// The mount points must exist: Debian's package creates its spool
	// only when the service first runs, which on a fresh machine it never
	// did.
	for _, p := range []string{m.b.spool, m.b.run} {
		if err := os.MkdirAll(p, 0o711); err != nil {
			t.Fatalf("create the mount point %s: %v", p, err)
		}
	}
	args := []string{"-m", "--propagation", "private", "/bin/sh", "-c",
		`mount --bind "$1" "$3" && mount --bind "$2" "$4" && shift 4 && exec "$@"`,
		"sh", filepath.Join(m.dir, "spool"), filepath.Join(m.dir, "run"), m.b.spool, m.b.run,
		m.b.smtpd, "-d", "-v", "-f", filepath.Join(m.dir, "smtpd.conf")}
	if m.queue != "" {
		args = append(args, "-B", "queue="+m.queue)
	}
	args = append(args, extra...)
	cmd := exec.Command("/usr/bin/unshare", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	logf.Close()
	m.cmd, m.done, m.stopped = cmd, make(chan struct{}), false
	done := m.done
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(m.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", m.addr(), time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("smtpd exited at start-up:\n%s", m.logTail(40))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("smtpd does not accept connections after 20s:\n%s", m.logTail(40))
		}
	}
}

func (m *mta) addr() string { return fmt.Sprintf("127.0.0.1:%d", m.port) }

// stop stops smtpd by its PID and waits for every process of its group,
// the queue process included, escalating to SIGKILL of the group.
func (m *mta) stop() {
	if m.cmd == nil || m.stopped {
		return
	}
	m.stopped = true
	pid := m.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(20 * time.Second):
		m.t.Errorf("smtpd (pid %d) still running 20s after SIGTERM; killing its process group", pid)
		syscall.Kill(-pid, syscall.SIGKILL)
		<-m.done
	}
	m.reap(pid)
}

// kill9 kills smtpd's whole process group, the queue process included,
// as a crash would, and reaps it.
func (m *mta) kill9() {
	if m.cmd == nil || m.stopped {
		return
	}
	m.stopped = true
	pid := m.cmd.Process.Pid
	syscall.Kill(-pid, syscall.SIGKILL)
	<-m.done
	m.reap(pid)
}

// reap waits for the rest of smtpd's process group (its children, our
// queue process), which exits when the parent does, reaping the orphans
// as their subreaper.
func (m *mta) reap(pid int) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(-pid, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.ECHILD) && syscall.Kill(-pid, 0) != nil {
			return
		}
		if wpid > 0 {
			continue
		}
		if time.Now().After(deadline) {
			m.t.Errorf("processes of smtpd's group %d still running after 15s; killing them", pid)
			syscall.Kill(-pid, syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (m *mta) alive() bool {
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

func (m *mta) log() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "smtpd.log"))
	return string(b)
}

func (m *mta) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(m.log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkLog fails on the lines that mean smtpd or the bridge broke.
func (m *mta) checkLog() {
	m.t.Helper()
	for _, bad := range []string{"tree_xset", "tree_merge", "queue-proc: exiting", "bad response", "bogus data", "len mismatch", "panic"} {
		if strings.Contains(m.log(), bad) {
			m.t.Errorf("smtpd log contains %q:\n%s", bad, m.logTail(60))
		}
	}
}

// control writes out/ctl-RCPT: the first n deliveries to rcpt exit code.
func (m *mta) control(rcpt string, code, n int) {
	must(m.t, os.WriteFile(filepath.Join(m.dir, "out", "ctl-"+rcpt), fmt.Appendf(nil, "%d %d\n", code, n), 0o644))
}

// mailboxes returns the messages delivered to rcpt.
func (m *mta) mailbox(rcpt string) []string {
	files, _ := filepath.Glob(filepath.Join(m.dir, "out", rcpt+".*.mail"))
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil {
			out = append(out, string(b))
		}
	}
	return out
}

func (m *mta) attempts(rcpt string) int {
	b, _ := os.ReadFile(filepath.Join(m.dir, "out", "attempts-"+rcpt))
	return bytes.Count(b, []byte("\n"))
}

// waitFor polls cond until it holds, failing after d.
func (m *mta) waitFor(what string, d time.Duration, cond func() bool) {
	m.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if !m.alive() {
			m.t.Fatalf("smtpd died while waiting for %s:\n%s", what, m.logTail(60))
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("no %s after %v:\n%s", what, d, m.logTail(60))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// smtpSession is one SMTP connection.
type smtpSession struct {
	conn  net.Conn
	c     *smtp.Client
	steps *smtpSteps // if set, where the client's time went
}

// smtpSteps adds up how long a client waited for each step of its
// transactions: MAIL, RCPT, DATA, and the body with its dot.
type smtpSteps [4]atomic.Int64 // nanoseconds

// The steps of a transaction, as indexes of smtpSteps.
const (
	stepMail = iota
	stepRcpt
	stepData
	stepBody
)

// add counts the time since since to step, if st is set, and returns now.
func (st *smtpSteps) add(step int, since time.Time) time.Time {
	now := time.Now()
	if st != nil {
		st[step].Add(int64(now.Sub(since)))
	}
	return now
}

// String gives the mean of each step over n messages.
func (st *smtpSteps) String(n int) string {
	mean := func(step int) time.Duration {
		return (time.Duration(st[step].Load()) / time.Duration(max(n, 1))).Round(time.Microsecond)
	}
	return fmt.Sprintf("MAIL %v, RCPT %v, DATA %v, the body and its dot %v", mean(stepMail), mean(stepRcpt), mean(stepData), mean(stepBody))
}

func dialSMTP(addr string) (*smtpSession, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	c, err := smtp.NewClient(conn, "client.test.local")
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := c.Hello("client.test.local"); err != nil {
		c.Close()
		return nil, err
	}
	return &smtpSession{conn: conn, c: c}, nil
}

func (s *smtpSession) send(from string, to []string, body string) error {
	t := time.Now()
	s.conn.SetDeadline(t.Add(60 * time.Second))
	if err := s.c.Mail(from); err != nil {
		return err
	}
	t = s.steps.add(stepMail, t)
	for _, r := range to {
		if err := s.c.Rcpt(r); err != nil {
			return err
		}
	}
	t = s.steps.add(stepRcpt, t)
	w, err := s.c.Data()
	if err != nil {
		return err
	}
	t = s.steps.add(stepData, t)
	fmt.Fprintf(w, "From: <%s>\nTo: <%s>\nSubject: mxq e2e\n\n%s\n", from, strings.Join(to, ">, <"), body)
	err = w.Close()
	s.steps.add(stepBody, t)
	return err
}

func (s *smtpSession) close() { s.c.Quit(); s.conn.Close() }

func (m *mta) send(from string, to []string, body string) {
	m.t.Helper()
	s, err := dialSMTP(m.addr())
	if err != nil {
		m.t.Fatalf("smtp: %v\n%s", err, m.logTail(30))
	}
	defer s.close()
	if err := s.send(from, to, body); err != nil {
		m.t.Fatalf("smtp: %v\n%s", err, m.logTail(30))
	}
}

// observer opens the queue that smtpd uses, from the test's side.
func observer(t *testing.T, u string) *queue.Store {
	t.Helper()
	s, err := queue.DefaultURLMux().OpenOptions(t.Context(), u, &queue.Options{Node: "e2e-observer"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// envelopes returns the committed envelopes and their blobs.
func envelopes(t *testing.T, s *queue.Store) map[queue.EvpID]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out := make(map[queue.EvpID]string)
	for id, err := range s.Walk(ctx) {
		if err != nil {
			t.Fatalf("walk: %v", err)
		}
		e, err := s.Load(ctx, id)
		if errors.Is(err, queue.ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("load %s: %v", id, err)
		}
		out[id] = string(e.Data)
	}
	return out
}

// rawKeys lists the stored objects under prefix, committed or not.
func rawKeys(t *testing.T, s *queue.Store, prefix string) []string {
	t.Helper()
	keys, _, err := s.Backend().List(t.Context(), prefix, "", 100)
	if err != nil {
		t.Fatalf("list %s: %v", prefix, err)
	}
	return keys
}

// field returns the value of "key: value" in an envelope blob.
func field(blob, key string) string {
	sc := bufio.NewScanner(strings.NewReader(blob))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ": "); ok && k == key {
			return v
		}
	}
	return ""
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// queueURLs returns the queues to test on: a fresh file:// directory, and
// a fresh prefix in MinIO when the test services run and an adapter for
// them is linked in.
func queueURLs(t *testing.T) map[string]string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mxq-e2e-queue-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	urls := map[string]string{"file": "file://" + dir}
	// The same, encrypted and compressed: smtpd's queue process and the
	// test's observer both read the key file that the URL names.
	key := filepath.Join(t.TempDir(), "queue.key")
	if err := os.WriteFile(key, []byte(randHex(32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	urls["file-encrypted"] = "file://" + dir + "/encrypted?key_file=" + key + "&compress=true&require_encryption=true"
	if u, ok := minioURL(t); ok {
		urls["minio"] = u
	}
	return urls
}

// ensureBucket, if set, creates the bucket a MinIO test URL names.
var ensureBucket func(ctx context.Context, u *url.URL) error

// minioURL returns a URL with a unique prefix on the test MinIO, from
// MXQ_TEST_MINIO_URL or MXQ_TEST_S3_URL (scripts/services env).
func minioURL(t *testing.T) (string, bool) {
	t.Helper()
	for _, env := range []string{"MXQ_TEST_MINIO_URL", "MXQ_TEST_S3_URL"} {
		raw := os.Getenv(env)
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", env, err)
		}
		if !queue.DefaultURLMux().ValidScheme(u.Scheme) {
			t.Logf("%s is set but no adapter for %q is linked in", env, u.Scheme)
			continue
		}
		if ensureBucket != nil {
			if err := ensureBucket(t.Context(), u); err != nil {
				t.Fatalf("%s: create the bucket: %v", env, err)
			}
		}
		u.Path = path.Join("/", u.Path, "e2e-"+randHex(6)) + "/"
		return u.String(), true
	}
	if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" && queue.DefaultURLMux().ValidScheme("s3") {
		t.Fatalf("MXQ_REQUIRE_SERVICES=1 but neither MXQ_TEST_MINIO_URL nor MXQ_TEST_S3_URL is set")
	}
	t.Logf("MinIO not configured (scripts/services env); testing file:// only")
	return "", false
}

// subQueue returns a queue URL beside u, under name: a subdirectory or a
// longer prefix.
func subQueue(u, name string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	p.Path = path.Join("/", p.Path, name)
	if p.Scheme != "file" {
		p.Path += "/"
	}
	return p.String()
}

func TestOpenSMTPD(t *testing.T) {
	builds := requireSmtpd(t)
	var names []string
	for _, b := range builds {
		names = append(names, b.version.String()+" ("+b.smtpd+")")
	}
	t.Logf("OpenSMTPD builds under test: %s", strings.Join(names, ", "))
	for _, b := range builds {
		t.Run(b.name, func(t *testing.T) {
			t.Run("Identify", func(t *testing.T) { testIdentify(t, b) })
			for name, u := range queueURLs(t) {
				u = subQueue(u, "v"+b.name)
				t.Run(name, func(t *testing.T) {
					t.Run("Delivery", func(t *testing.T) { testDelivery(t, b, subQueue(u, "delivery")) })
					t.Run("Restart", func(t *testing.T) { testRestart(t, b, subQueue(u, "restart")) })
					t.Run("SharedKill9", func(t *testing.T) { testShared(t, b, subQueue(u, "shared")) })
				})
			}
		})
	}
}

// testIdentify checks that the build's version, read from its binary,
// maps to the header layout its sources have.
func testIdentify(t *testing.T, b smtpdBuild) {
	f, err := b.version.HeaderFormat()
	if err != nil {
		t.Fatal(err)
	}
	want := opensmtpd.Header68
	if b.version.Major > 7 || b.version.Major == 7 && b.version.Minor >= 7 {
		want = opensmtpd.Header77
	}
	if f != want {
		t.Fatalf("%s: layout %s, want %s", b.version, f, want)
	}
	t.Logf("%s at %s: header layout %s, MESSAGE_FD_R bug: %v", b.version, b.smtpd, f, b.version.FdRBug())
}

// checkLayoutLog checks that the queue process logged the header layout
// it chose from smtpd's version, and, on a release with upstream's
// MESSAGE_FD_R bug, warned about it unless told the build is patched.
func (m *mta) checkLayoutLog(patched bool) {
	m.t.Helper()
	f, _ := m.b.version.HeaderFormat()
	want := fmt.Sprintf("layout=%s reason=\"version of the smtpd on fd 0\" smtpd=%s", f, m.b.version.Version)
	// smtpd may listen before its queue process has started: wait.
	m.waitFor(fmt.Sprintf("the queue process's log line %q", want), 20*time.Second, func() bool {
		return strings.Contains(m.log(), want)
	})
	// The warning comes before that line.
	warned := strings.Contains(m.log(), "MESSAGE_FD_R bug")
	if wantWarn := m.b.version.FdRBug() && !patched; warned != wantWarn {
		m.t.Errorf("MESSAGE_FD_R warning: %v, want %v:\n%s", warned, wantWarn, m.logTail(40))
	}
}

// testDelivery covers a multi-recipient message, RSET rollback, temp-fail
// with retry and perm-fail with a bounce, on one smtpd.
func testDelivery(t *testing.T, b smtpdBuild, u string) {
	// The configuration file form, with debug logs to see the rollback;
	// the builds under test carry the MESSAGE_FD_R fix.
	conf := filepath.Join(t.TempDir(), "queue.conf")
	must(t, os.WriteFile(conf, fmt.Appendf(nil, "# mxq e2e\nqueue=%s\nnode=e2e\ntimeout=10s\nlog=debug\nsmtpd-patched=true\n", u), 0o600))
	m := newMTA(t, b, conf)
	obs := observer(t, u)
	m.start()
	m.checkLayoutLog(true)

	// RSET: the transaction is rolled back and nothing reaches the store.
	s, err := dialSMTP(m.addr())
	if err != nil {
		t.Fatal(err)
	}
	must(t, s.c.Mail("s@test.local"))
	must(t, s.c.Rcpt("x@test.local"))
	must(t, s.c.Rcpt("y@test.local"))
	must(t, s.c.Reset())
	s.close()
	m.waitFor("the rollback in the log", 10*time.Second, func() bool {
		return strings.Contains(m.log(), "mxq: rolled back")
	})
	if k := append(rawKeys(t, obs, "evp/"), rawKeys(t, obs, "msg/")...); len(k) > 0 {
		t.Fatalf("after RSET the store holds %v", k)
	}

	// Multi-recipient.
	m.send("s@test.local", []string{"a@test.local", "b@test.local", "c@test.local"}, "three recipients")
	for _, r := range []string{"a", "b", "c"} {
		m.waitFor("delivery to "+r, 30*time.Second, func() bool { return len(m.mailbox(r+"@test.local")) == 1 })
		if mb := m.mailbox(r + "@test.local")[0]; !strings.Contains(mb, "three recipients") {
			t.Fatalf("mailbox of %s: %q", r, mb)
		}
	}

	// Temp-fail then success, and perm-fail with a bounce, together.
	m.control("t@test.local", 75, 1)
	m.control("p@test.local", 69, 1000)
	m.send("s@test.local", []string{"t@test.local"}, "temporary failure first")
	m.send("s@test.local", []string{"p@test.local"}, "permanent failure")
	var tid queue.EvpID
	m.waitFor("an envelope update with retry: 1 in the store", 30*time.Second, func() bool {
		for id, b := range envelopes(t, obs) {
			if field(b, "rcpt") == "t@test.local" && field(b, "retry") == "1" {
				tid = id
				return true
			}
		}
		return false
	})
	e, err := obs.Load(t.Context(), tid)
	must(t, err)
	t.Logf("updated envelope %s:\n%s", tid, e.Data)
	if field(string(e.Data), "esc-class") != "4" || field(string(e.Data), "errorline") == "" {
		t.Errorf("temp-failed envelope lacks errorline/esc-class 4:\n%s", e.Data)
	}
	m.waitFor("delivery after the retry", 60*time.Second, func() bool { return len(m.mailbox("t@test.local")) == 1 })
	if n := m.attempts("t@test.local"); n != 2 {
		t.Errorf("%d attempts for t@test.local, want 2", n)
	}
	m.waitFor("the bounce in the sender's mailbox", 60*time.Second, func() bool {
		for _, mb := range m.mailbox("s@test.local") {
			if strings.Contains(mb, "p@test.local") {
				return true
			}
		}
		return false
	})
	if len(m.mailbox("p@test.local")) != 0 {
		t.Errorf("perm-failed recipient got the mail")
	}
	// Everything delivered: the store is empty.
	m.waitFor("an empty store", 30*time.Second, func() bool {
		return len(envelopes(t, obs)) == 0 && len(rawKeys(t, obs, "msg/")) == 0
	})
	m.checkLog()
	m.stop()
	if !strings.Contains(m.log(), "smtpd closed the queue") {
		t.Errorf("the queue process did not see CLOSE and EOF:\n%s", m.logTail(20))
	}
}

// testRestart queues mail with delivery paused, stops smtpd, and checks
// that a new smtpd finds and delivers it through the walk.
//
// On smtpd 7.7 and later this is the case where a layout learnt from
// traffic was wrong: the first descriptor after the restart is the queue
// process's answer to MESSAGE_FD_R, before smtpd sent any.
func testRestart(t *testing.T, b smtpdBuild, u string) {
	m := newMTA(t, b, u)
	obs := observer(t, u)
	m.start("-P", "mda")
	m.checkLayoutLog(false)
	rcpts := [][]string{{"r1@test.local"}, {"r2@test.local", "r3@test.local"}, {"r4@test.local"}}
	for i, to := range rcpts {
		m.send("s@test.local", to, fmt.Sprintf("restart message %d", i))
	}
	if n := len(envelopes(t, obs)); n != 4 {
		t.Fatalf("%d envelopes in the store after accepting 4", n)
	}
	m.stop()
	if n := len(envelopes(t, obs)); n != 4 {
		t.Fatalf("%d envelopes in the store after stopping, want 4", n)
	}
	m.start()
	for _, r := range []string{"r1", "r2", "r3", "r4"} {
		m.waitFor("delivery to "+r+" after the restart", 60*time.Second, func() bool { return len(m.mailbox(r+"@test.local")) == 1 })
	}
	m.waitFor("an empty store", 30*time.Second, func() bool { return len(envelopes(t, obs)) == 0 })
	m.checkLog()
	if !strings.Contains(m.log(), "done loading queue into scheduler") {
		t.Errorf("no end of the walk in the log")
	}
}

// testShared runs two smtpd instances on one queue, kills one with
// SIGKILL while it delivers, and checks that the survivor takes its mail
// over: every recipient gets every message, and the duplicates (the
// at-least-once window) are counted.
func testShared(t *testing.T, build smtpdBuild, u string) {
	conf := func(node string) string {
		p := filepath.Join(t.TempDir(), node+".conf")
		must(t, os.WriteFile(p, fmt.Appendf(nil, "queue=%s\nnode=%s\nshared=true\nheartbeat=1s\ntimeout=10s\nsmtpctl=%s\nsmtpd-patched=true\n", u, node, build.smtpctl), 0o600))
		return p
	}
	a, b := newMTA(t, build, conf("mx-a")), newMTA(t, build, conf("mx-b"))
	obs := observer(t, u)
	b.start()
	a.start()
	// a delivers slowly, so that it dies with mail queued and in flight.
	must(t, os.WriteFile(filepath.Join(a.dir, "out", "delay"), []byte("3\n"), 0o644))
	const msgs = 20
	rcpts := []string{"k1@test.local", "k2@test.local"}
	for i := range msgs {
		a.send("s@test.local", rcpts, fmt.Sprintf("shared message %d", i))
	}
	a.waitFor("a's first deliveries", 30*time.Second, func() bool {
		return len(a.mailbox("k1@test.local"))+len(a.mailbox("k2@test.local")) >= 2
	})
	a.kill9()
	killedAt := time.Now()
	t.Logf("killed a after %d deliveries; %d envelopes left in the store", len(a.mailbox("k1@test.local"))+len(a.mailbox("k2@test.local")), len(envelopes(t, obs)))

	count := func() (map[string]int, int) {
		seen := make(map[string]int)
		dups := 0
		for _, m := range []*mta{a, b} {
			for _, r := range rcpts {
				for _, mb := range m.mailbox(r) {
					i := strings.Index(mb, "shared message ")
					if i < 0 {
						continue
					}
					key := r + " " + strings.Fields(mb[i+len("shared message "):])[0]
					if seen[key]++; seen[key] > 1 {
						dups++
					}
				}
			}
		}
		return seen, dups
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		seen, _ := count()
		if len(seen) == msgs*len(rcpts) {
			break
		}
		if time.Now().After(deadline) || !b.alive() {
			var missing []string
			for i := range msgs {
				for _, r := range rcpts {
					if k := fmt.Sprintf("%s %d", r, i); seen[k] == 0 {
						missing = append(missing, k)
					}
				}
			}
			left := envelopes(t, obs)
			var holders []string
			for id := range left {
				e, err := obs.Load(t.Context(), id)
				if err == nil {
					holders = append(holders, fmt.Sprintf("%s:%s", id, e.Lease.Holder))
				}
			}
			t.Fatalf("after 90s (b alive: %v), %d deliveries missing: %v\nstore: %v\nb's log:\n%s", b.alive(), len(missing), missing, holders, b.logTail(30))
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(killedAt)
	_, dups := count()
	t.Logf("all %d deliveries done %v after the kill; delivered twice: %d (the at-least-once window)", msgs*len(rcpts), took.Round(100*time.Millisecond), dups)
	if !strings.Contains(b.log(), "took over envelopes of a dead node") {
		t.Errorf("b's log shows no takeover:\n%s", b.logTail(40))
	}
	b.waitFor("an empty store", 30*time.Second, func() bool { return len(envelopes(t, obs)) == 0 })
	b.checkLog()
}

// TestOpenSMTPDThroughput measures messages accepted per second over SMTP
// on loopback by smtpd on its built-in fs queue and on mxq, side by side.
// Delivery is paused, so that only acceptance is measured.
func TestOpenSMTPDThroughput(t *testing.T) {
	builds := requireSmtpd(t)
	n, workers, rounds := 200, 8, 1
	if v, err := strconv.Atoi(os.Getenv("MXQ_E2E_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	// MXQ_E2E_ROUNDS repeats every run in turn, so that a ratio is the
	// median of alternated pairs, not of one moment of a noisy machine.
	if v, err := strconv.Atoi(os.Getenv("MXQ_E2E_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	// MXQ_E2E_CLIENTS sets the SMTP clients sending at once.
	if v, err := strconv.Atoi(os.Getenv("MXQ_E2E_CLIENTS")); err == nil && v > 0 {
		workers = v
	}
	// MXQ_E2E_RTT is the round trip of the MinIO run "a network away"
	// (10ms by default; 0 leaves that run out): MinIO behind a proxy that
	// holds every chunk of bytes, each way, for half of it.
	rtt := 10 * time.Millisecond
	if v := os.Getenv("MXQ_E2E_RTT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			t.Fatalf("MXQ_E2E_RTT=%q: want a duration such as 10ms", v)
		}
		rtt = d
	}
	type run struct {
		name string
		url  string
	}
	for _, b := range builds {
		t.Run(b.name, func(t *testing.T) {
			var runs []run
			rates := make(map[string][]float64)
			for round := range rounds {
				// Empty queues for each round: smtpd walks what it finds.
				runs = []run{{"fs (built-in)", ""}}
				urls := queueURLs(t)
				runs = append(runs, run{"mxq file://", urls["file"]})
				runs = append(runs, run{"mxq file:// zstd+encrypted", urls["file-encrypted"]})
				if u, ok := urls["minio"]; ok {
					runs = append(runs, run{"mxq minio", u})
					if rtt > 0 {
						runs = append(runs, run{fmt.Sprintf("mxq minio, RTT %v", rtt), delayedURL(t, subQueue(u, "rtt"), rtt)})
					}
				}
				for _, r := range runs {
					rate := throughput(t, b, r.name, r.url, n, workers)
					rates[r.name] = append(rates[r.name], rate)
					t.Logf("%s %-14s round %d, %4d messages, %d clients: %7.1f msg/s", b.version, r.name, round+1, n, workers, rate)
					if r.url == "" {
						continue
					}
					// The floor of a serial queue process: one durable
					// write of the store per message, back to back,
					// measured just after smtpd stopped. smtpd's own
					// time per message is at least that of its run on
					// its fs queue, so a queue process whose commit is
					// that one write caps it at 1/(own + write).
					put := serialPut(t, r.url)
					own := 1 / rates["fs (built-in)"][round]
					ceiling := 1 / (own + put.Seconds())
					t.Logf("%s %-14s round %d: one create-only PUT %v back to back, 1/PUT = %.0f msg/s; smtpd reached %.2f of it. smtpd's own %.0fµs a message (its fs run) + one PUT caps it at %.0f msg/s: %.2f of 1/PUT, %.2f of the fs run; it reached %.2f of that cap",
						b.version, r.name, round+1, put.Round(time.Microsecond), 1/put.Seconds(), rate*put.Seconds(),
						own*1e6, ceiling, ceiling*put.Seconds(), ceiling*own, rate/ceiling)
				}
			}
			for _, r := range runs[1:] {
				ratios := make([]float64, rounds)
				for i := range ratios {
					ratios[i] = rates[r.name][i] / rates["fs (built-in)"][i]
				}
				slices.Sort(ratios)
				t.Logf("%s %s / fs = %.2f (median of %d alternated pairs; %.2f to %.2f)", b.version, r.name, ratios[rounds/2], rounds, ratios[0], ratios[rounds-1])
			}
		})
	}
}

// cpuTimes is the first line of /proc/stat: the machine's CPU time,
// in clock ticks, by kind.
type cpuTimes []float64

// machineCPU reads the machine's CPU time so far.
func machineCPU(t *testing.T) cpuTimes {
	t.Helper()
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		t.Fatalf("/proc/stat begins %q", line)
	}
	var c cpuTimes
	for _, v := range f[1:] {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("/proc/stat: %q: %v", line, err)
		}
		c = append(c, x)
	}
	return c
}

// since returns the CPU time spent busy since c0 (all but idle and I/O
// wait) and in all.
func (c cpuTimes) since(c0 cpuTimes) (busy, total float64) {
	for i := range min(len(c), len(c0)) {
		d := c[i] - c0[i]
		total += d
		if i != 3 && i != 4 { // idle, iowait
			busy += d
		}
	}
	return busy, max(total, 1)
}

// delayedURL returns the queue URL u with its server behind a proxy on
// 127.0.0.1 that holds every chunk of bytes, each way, for rtt/2: the
// same store a network away. The proxy and its connections end with the
// test.
func delayedURL(t *testing.T, u string, rtt time.Duration) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := p.Host
	var mu sync.Mutex
	var conns []net.Conn
	done := false
	track := func(c ...net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if done {
			for _, x := range c {
				x.Close()
			}
			return false
		}
		conns = append(conns, c...)
		return true
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		done = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			go func() {
				s, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					c.Close()
					return
				}
				if !track(c, s) {
					return
				}
				go delayCopy(s, c, rtt/2)
				delayCopy(c, s, rtt/2)
			}()
		}
	}()
	p.Host = ln.Addr().String()
	return p.String()
}

// delayCopy copies src to dst, each chunk d after it was read, and closes
// both when either ends.
func delayCopy(dst, src net.Conn, d time.Duration) {
	type chunk struct {
		at time.Time
		b  []byte
	}
	ch := make(chan chunk, 256)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				ch <- chunk{time.Now().Add(d), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		dst.Close()
		src.Close()
		for range ch { // the reader ends on the closed src
		}
	}()
	for c := range ch {
		time.Sleep(time.Until(c.at))
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
}

// serialPut returns the mean time of one create-only PUT of a message
// the size of measure's through the store at url, 200 back to back: the
// floor of a queue process that answers one request at a time.
func serialPut(t *testing.T, url string) time.Duration {
	t.Helper()
	ctx := context.Background()
	s, err := queue.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := s.Backend()
	op := bench.RawCommit(b, []byte(strings.Repeat("throughput test line\n", 50)), 1)
	if _, err := bench.Measure(ctx, op, 20, 1); err != nil { // warm up
		t.Fatal(err)
	}
	const n = 200
	start := time.Now()
	if _, err := bench.Measure(ctx, op, n, 1); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start) / n
	if err := bench.CleanRaw(ctx, b); err != nil {
		t.Fatal(err)
	}
	return d
}

// throughput starts smtpd on the queue at url (its fs queue if ""),
// measures its acceptance rate, logs the queue process's profile, and
// stops it.
func throughput(t *testing.T, b smtpdBuild, name, url string, n, workers int) float64 {
	t.Helper()
	arg, profile := url, ""
	if arg != "" {
		// The queue process writes where its time went (profile=), as
		// the operator's guide shows.
		dir := t.TempDir()
		must(t, os.Chmod(dir, 0o777))
		profile = filepath.Join(dir, "profile")
		conf := filepath.Join(t.TempDir(), "queue.conf")
		// MXQ_E2E_PROCS sets the queue process's procs= (GOMAXPROCS).
		procs := os.Getenv("MXQ_E2E_PROCS")
		if procs == "" {
			procs = "0"
		}
		must(t, os.WriteFile(conf, fmt.Appendf(nil, "queue=%s\nsmtpd-patched=true\nprofile=%s\nprocs=%s\n", url, profile, procs), 0o644))
		arg = conf
	}
	m := newMTA(t, b, arg)
	m.start("-P", "mda")
	measure(t, m, 2*workers, workers) // warm up: connections, ID pool, caches
	cpu0 := machineCPU(t)
	rate, steps := measure(t, m, n, workers)
	busy, total := machineCPU(t).since(cpu0)
	t.Logf("%s %s: the machine's CPUs were busy %.0f%% of the run (%.2f of %d CPUs); a client waited, per message, %s", b.version, name, 100*busy/total, float64(runtime.NumCPU())*busy/total, runtime.NumCPU(), steps.String(n))
	m.checkLog()
	m.stop()
	if profile != "" {
		p, err := os.ReadFile(profile)
		if err != nil {
			t.Fatalf("the queue process wrote no profile: %v", err)
		}
		t.Logf("%s %s: the queue process's profile of %d messages:\n%s", b.version, name, n+2*workers, p)
	}
	return rate
}

// measure sends n one-recipient messages over workers connections and
// returns the acceptance rate and how long the clients waited for each
// step of a transaction.
func measure(t *testing.T, m *mta, n, workers int) (float64, *smtpSteps) {
	t.Helper()
	steps := new(smtpSteps)
	var next atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s *smtpSession
			defer func() {
				if s != nil {
					s.close()
				}
			}()
			sent := 0
			for {
				i := int(next.Add(1))
				if i > n {
					return
				}
				if s == nil || sent == 50 { // below smtpd's per-session limit
					if s != nil {
						s.close()
					}
					var err error
					if s, err = dialSMTP(m.addr()); err != nil {
						errs <- err
						return
					}
					s.steps = steps
					sent = 0
				}
				if err := s.send("s@test.local", []string{fmt.Sprintf("bench%d@test.local", i%10)}, strings.Repeat("throughput test line\n", 50)); err != nil {
					errs <- fmt.Errorf("message %d: %w", i, err)
					return
				}
				sent++
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatalf("%v\n%s", err, m.logTail(30))
	}
	return float64(n) / d.Seconds(), steps
}
