// Package miniotest runs a MinIO server of a test's own, on its own port
// and directory, which the test may kill, pause and start again to make a
// real outage. The binary is the one scripts/services builds, named by
// MXQ_MINIO_BIN.
package miniotest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// Server is a MinIO process of one test.
type Server struct {
	Addr       string // host:port of the S3 API
	User, Pass string // root credentials

	bin, dir, console string
	cmd               *exec.Cmd
	out               bytes.Buffer
}

// New returns a Server that is not started yet. Without MXQ_MINIO_BIN it
// skips the test, or fails it when MXQ_REQUIRE_SERVICES=1. The server is
// stopped when the test ends, and its output logged if the test failed.
func New(t testing.TB) *Server {
	t.Helper()
	bin := os.Getenv("MXQ_MINIO_BIN")
	if bin == "" {
		if os.Getenv("MXQ_REQUIRE_SERVICES") == "1" {
			t.Fatal("MXQ_MINIO_BIN is not set and MXQ_REQUIRE_SERVICES=1; run scripts/services start minio")
		}
		t.Skip("MXQ_MINIO_BIN is not set; see scripts/services")
	}
	var b [15]byte
	rand.Read(b[:])
	s := &Server{
		Addr: freeAddr(t), User: "outage-" + hex.EncodeToString(b[:3]), Pass: hex.EncodeToString(b[3:]),
		bin: bin, dir: t.TempDir(), console: freeAddr(t),
	}
	t.Cleanup(func() {
		if s.cmd != nil {
			s.cmd.Process.Signal(syscall.SIGCONT)
		}
		s.Kill()
		if t.Failed() {
			t.Logf("MinIO output:\n%s", s.out.String())
		}
	})
	return s
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Start starts the server and waits up to a minute until it answers.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	s.cmd = exec.Command(s.bin, "server", "--quiet", "--address", s.Addr, "--console-address", s.console, s.dir)
	s.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+s.User, "MINIO_ROOT_PASSWORD="+s.Pass, "MINIO_BROWSER=off", "MINIO_UPDATE=off")
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := http.Get("http://" + s.Addr + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("MinIO does not answer on %s: %v", s.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill kills the server with SIGKILL, if it runs.
func (s *Server) Kill() {
	if s.cmd != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// Signal sends sig to the server, such as SIGSTOP and SIGCONT to pause it.
func (s *Server) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}
