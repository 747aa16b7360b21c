package main

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runMxq runs the command in this process.
func runMxq(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// TestServe runs "mxq serve" on a file queue as a process of its own, and
// a second mxq that puts and lists through http:// sees the same queue as
// the file store itself.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	const token = "serve-test-token"
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(),
		"MXQ_SERVE_HELPER_ARGS="+strings.Join([]string{"--queue", "file://" + dir, "serve", "--listen", "127.0.0.1:0"}, "\n"),
		"MXQ_TOKEN="+token)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
		if t.Failed() {
			t.Logf("server log:\n%s", stderr.String())

		}
	})
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		waitErr = cmd.Wait()
		close(exited)
	}()
	var url string
	select {
	case l := <-lines:
		m := regexp.MustCompile(`listening on (http://127\.0\.0\.1:\d+)$`).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("first line %q does not give the address", l)
		}
		url = m[1]
	case <-time.After(30 * time.Second):
		t.Fatal("mxq serve did not start")
	}

	t.Setenv("MXQ_TOKEN", token)
	code, out, errs := runMxq(t, "Subject: hi\r\n\r\nthrough REST\r\n", "--queue", url, "put", "-f", "a@example.org", "-r", "b@example.org", "-r", "c@example.org")
	if code != 0 {
		t.Fatalf("put through %s: exit %d: %s", url, code, errs)
	}
	msgid := strings.Fields(out)[0]
	for _, queueURL := range []string{url, "file://" + dir} {
		code, out, errs = runMxq(t, "", "--queue", queueURL, "ls")
		if code != 0 {
			t.Fatalf("ls on %s: exit %d: %s", queueURL, code, errs)
		}
		if !strings.Contains(out, "2 envelope(s)") || !strings.Contains(out, msgid) || !strings.Contains(out, "rcpt: c@example.org") {
			t.Fatalf("ls on %s does not show the message put through REST:\n%s", queueURL, out)
		}
	}
	code, out, _ = runMxq(t, "", "--queue", url, "cat", msgid)
	if code != 0 || !strings.Contains(out, "through REST") {
		t.Fatalf("cat: exit %d: %q", code, out)
	}
	// A wrong token is refused with a clear message.
	t.Setenv("MXQ_TOKEN", "wrong")
	code, _, errs = runMxq(t, "", "--queue", url, "ls")
	if code == 0 || !strings.Contains(errs, "MXQ_TOKEN") {
		t.Fatalf("ls with a wrong token: exit %d: %s", code, errs)
	}

	resp, err := http.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"ok"`) {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
	// /metrics has the figures of mxq stats: the one message with its two
	// envelopes, both due now.
	req, _ := http.NewRequest("GET", url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"\nmxq_queue_messages 1\n", "\nmxq_queue_envelopes 2\n", `mxq_queue_due_envelopes{when="now"} 2`, "\nmxq_queue_stats_up 1\n"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// A transaction a client leaves open is rolled back at shutdown.
	req, _ = http.NewRequest("POST", url+"/v1/messages", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("begin: %v %v", resp, err)
	}
	resp.Body.Close()

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("mxq serve after SIGTERM: %v", waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("mxq serve did not stop on SIGTERM")
	}
	log := stderr.String()
	for _, want := range []string{"shutting down", "rolled back open transaction", "stopped"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, token) {
		t.Errorf("the log shows the token:\n%s", log)
	}
}

func TestServeRefuses(t *testing.T) {
	t.Setenv("MXQ_TOKEN", "")
	tokenFile := t.TempDir() + "/empty"
	os.WriteFile(tokenFile, []byte("\n"), 0o600)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no token off loopback", []string{"--listen", "0.0.0.0:0"}, "token is required"},
		{"no token on all interfaces", []string{"--listen", ":0"}, "token is required"},
		{"no token on a host name", []string{"--listen", "mx.example.org:0"}, "token is required"},
		{"empty token file", []string{"--listen", "0.0.0.0:0", "--token-file", tokenFile}, "is empty"},
		{"cert without key", []string{"--tls-cert", "c.pem"}, "go together"},
		{"bad address", []string{"--listen", "8025"}, "host:port"},
		{"bad size", []string{"--max-body", "lots"}, "size"},
		{"no connections", []string{"--max-conns", "0"}, "--max-conns must be positive"},
		{"no body time", []string{"--body-timeout", "0s"}, "--body-timeout must be positive"},
		{"argument", []string{"extra"}, "unexpected argument"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, errs := runMxq(t, "", append([]string{"--queue", "mem://serve-refuses", "serve"}, c.args...)...)
			if code != 2 || !strings.Contains(errs, c.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, errs, c.want)
			}
		})
	}
}

func TestSizeFlag(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "64K": 64 << 10, "1G": 1 << 30, "1GiB": 1 << 30, "100MB": 100 << 20, "5m": 5 << 20} {
		var s sizeFlag
		if err := s.Set(in); err != nil || int64(s) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, s, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "1T", "G", "1.5G", "99999999999G"} {
		var s sizeFlag
		if err := s.Set(in); err == nil {
			t.Errorf("Set(%q) succeeded: %d", in, s)
		}
	}
}
