package main

import (
	"bytes"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/mxqueue/mxq/opensmtpd"
)

func TestLoadQueueConfig(t *testing.T) {
	write := func(body string) string {
		p := filepath.Join(t.TempDir(), "queue.conf")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg, err := loadQueueConfig(write("# c\nqueue=file:///q\nheader=7.7\nsmtpd-patched=true\nshared=yes\nprocs=1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.queue != "file:///q" || cfg.header != opensmtpd.Header77 || !cfg.patched || !cfg.shared || cfg.procs != 1 {
		t.Fatalf("got %+v", cfg)
	}
	if cfg, err = loadQueueConfig("file:///q"); err != nil || cfg.header != opensmtpd.HeaderAuto || cfg.patched {
		t.Fatalf("URL form: %+v, %v", cfg, err)
	}
	for body, want := range map[string]string{
		"queue=file:///q\nheader=7.8\n":          "header: want auto, 6.8 or 7.7",
		"queue=file:///q\nsmtpd-patched=maybe\n": "smtpd-patched: want true or false",
		"queue=file:///q\nheaders=auto\n":        `unknown key "headers"`,
		"header=auto\n":                          "no queue=URL line",
		"queue=file:///q\nheader\n":              "want key=value",
		"queue=file:///q\nprocs=-1\n":            "procs: want a number of CPUs",
	} {
		_, err := loadQueueConfig(write(body))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", body, err, want)
		}
	}
}

// TestHeaderFormatChoice: the queue process's peer here is this test,
// which is no smtpd. With header=auto it refuses to start, naming the
// setting; an explicit layout is used and logged as such.
func TestHeaderFormatChoice(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "a")
	defer f.Close()
	syscall.Close(fds[1])
	fc, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	conn := fc.(*net.UnixConn)
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))

	_, err = headerFormat(log, &queueConfig{}, conn)
	if err == nil || !strings.Contains(err.Error(), "set header=6.8") || !strings.Contains(err.Error(), "not an smtpd binary") {
		t.Fatalf("auto with no smtpd: %v", err)
	}
	got, err := headerFormat(log, &queueConfig{header: opensmtpd.Header77}, conn)
	if err != nil || got != opensmtpd.Header77 {
		t.Fatalf("header=7.7: %v, %v", got, err)
	}
	if !strings.Contains(buf.String(), `layout=7.7 reason="header= setting"`) {
		t.Fatalf("log: %s", buf.String())
	}
}
