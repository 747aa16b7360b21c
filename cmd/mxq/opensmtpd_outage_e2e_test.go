package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// outageMinIO is a MinIO server of the test's own, on its own port and
// directory, that the test kills and starts again.
type outageMinIO struct {
	bin, dir, addr, console, user, pass string
	cmd                                 *exec.Cmd
	out                                 bytes.Buffer
}

func (s *outageMinIO) start(t *testing.T) {
	t.Helper()
	s.cmd = exec.Command(s.bin, "server", "--quiet", "--address", s.addr, "--console-address", s.console, s.dir)
	s.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+s.user, "MINIO_ROOT_PASSWORD="+s.pass, "MINIO_BROWSER=off", "MINIO_UPDATE=off")
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + s.addr + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("MinIO does not answer on %s: %v\n%s", s.addr, err, s.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *outageMinIO) kill() {
	if s.cmd != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// TestOpenSMTPDOutage runs a real smtpd over a MinIO that is killed
// mid-run and started again: a message sent before the outage is
// delivered; one sent during it gets a temporary failure (4xx) from smtpd,
// which stays up; once MinIO is back, the same smtpd accepts and delivers
// again, with no restart. It needs root, the OpenSMTPD builds of
// requireSmtpd (the newest is used) and MXQ_MINIO_BIN.
func TestOpenSMTPDOutage(t *testing.T) {
	builds := requireSmtpd(t)
	b := builds[len(builds)-1]
	bin := os.Getenv("MXQ_MINIO_BIN")
	if bin == "" {
		if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
			t.Fatal("MXQ_MINIO_BIN is not set and MXQ_REQUIRE_SERVICES=1; run scripts/services start minio")
		}
		t.Skip("MXQ_MINIO_BIN is not set; see scripts/services")
	}
	srv := &outageMinIO{bin: bin, dir: t.TempDir(), user: "outage-" + randHex(3), pass: randHex(12)}
	srv.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv.console = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	t.Cleanup(func() {
		srv.kill()
		if t.Failed() {
			t.Logf("MinIO output:\n%s", srv.out.String())
		}
	})
	srv.start(t)
	// smtpd's queue process inherits these.
	t.Setenv("AWS_ACCESS_KEY_ID", srv.user)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.pass)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("MINIO_ROOT_USER", srv.user)
	t.Setenv("MINIO_ROOT_PASSWORD", srv.pass)
	u := fmt.Sprintf("minio://%s/outage/e2e/?secure=false&region=us-east-1", srv.addr)
	pu, _ := url.Parse(u)
	must(t, makeBucket(t.Context(), pu))

	conf := filepath.Join(t.TempDir(), "queue.conf")
	must(t, os.WriteFile(conf, fmt.Appendf(nil, "queue=%s\nnode=e2e-outage\ntimeout=5s\nsmtpd-patched=true\n", u), 0o600))
	m := newMTA(t, b, conf)
	m.start()

	m.send("s@test.local", []string{"a@test.local"}, "before the outage")
	m.waitFor("delivery before the outage", 30*time.Second, func() bool { return len(m.mailbox("a@test.local")) == 1 })

	srv.kill()
	began := time.Now()
	s, err := dialSMTP(m.addr())
	if err != nil {
		t.Fatalf("smtp during the outage: %v\n%s", err, m.logTail(30))
	}
	err = s.send("s@test.local", []string{"b@test.local"}, "during the outage")
	s.close()
	var te *textproto.Error
	switch {
	case err == nil:
		t.Fatalf("smtpd accepted a message while its store was down")
	case !errors.As(err, &te) || te.Code/100 != 4:
		t.Fatalf("smtp during the outage: %v, want a 4xx temporary failure\n%s", err, m.logTail(30))
	}
	t.Logf("during the outage, smtpd answered %d %s, %v after the kill", te.Code, te.Msg, time.Since(began).Round(time.Millisecond))
	if !m.alive() {
		t.Fatalf("smtpd died in the outage:\n%s", m.logTail(60))
	}

	srv.start(t)
	back := time.Now()
	tries := 0
	for {
		tries++
		s, err := dialSMTP(m.addr())
		if err == nil {
			err = s.send("s@test.local", []string{"c@test.local"}, "after the outage")
			s.close()
		}
		if err == nil {
			break
		}
		if !errors.As(err, &te) || te.Code/100 != 4 || time.Since(back) > 60*time.Second {
			t.Fatalf("smtp after the outage (try %d): %v\n%s", tries, err, m.logTail(30))
		}
		time.Sleep(time.Second)
	}
	t.Logf("after MinIO was back, the same smtpd accepted a message at try %d, %v later", tries, time.Since(back).Round(time.Millisecond))
	m.waitFor("delivery after the outage", 30*time.Second, func() bool { return len(m.mailbox("c@test.local")) == 1 })
	if mb := m.mailbox("c@test.local")[0]; !strings.Contains(mb, "after the outage") {
		t.Fatalf("c@test.local got %q", mb)
	}
	if n := len(m.mailbox("b@test.local")); n != 0 {
		t.Fatalf("the message refused during the outage was delivered %d times", n)
	}
	if !m.alive() {
		t.Fatalf("smtpd died after the outage:\n%s", m.logTail(60))
	}
}
