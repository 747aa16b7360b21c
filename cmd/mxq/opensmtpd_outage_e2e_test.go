package main

import (
	"errors"
	"fmt"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/internal/miniotest"
)

// TestOpenSMTPDOutage runs a real smtpd over a MinIO that is killed
// mid-run and started again: a message sent before the outage is
// delivered; one sent during it gets a temporary failure (4xx) from smtpd,
// which stays up; once MinIO is back, the same smtpd accepts and delivers
// again, with no restart. It needs root, the OpenSMTPD builds of
// requireSmtpd (the newest is used) and MXQ_MINIO_BIN.
func TestOpenSMTPDOutage(t *testing.T) {
	builds := requireSmtpd(t)
	b := builds[len(builds)-1]
	srv := miniotest.New(t)
	srv.Start(t)
	// smtpd's queue process inherits these.
	t.Setenv("AWS_ACCESS_KEY_ID", srv.User)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.Pass)
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("MINIO_ROOT_USER", srv.User)
	t.Setenv("MINIO_ROOT_PASSWORD", srv.Pass)
	u := fmt.Sprintf("minio://%s/outage/e2e/?secure=false&region=us-east-1", srv.Addr)
	pu, _ := url.Parse(u)
	must(t, makeBucket(t.Context(), pu))

	conf := filepath.Join(t.TempDir(), "queue.conf")
	must(t, os.WriteFile(conf, fmt.Appendf(nil, "queue=%s\nnode=e2e-outage\ntimeout=5s\nsmtpd-patched=true\n", u), 0o600))
	m := newMTA(t, b, conf)
	m.start()

	m.send("s@test.local", []string{"a@test.local"}, "before the outage")
	m.waitFor("delivery before the outage", 30*time.Second, func() bool { return len(m.mailbox("a@test.local")) == 1 })

	srv.Kill()
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

	srv.Start(t)
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
