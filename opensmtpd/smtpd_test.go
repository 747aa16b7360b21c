package opensmtpd

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vm is versionMark built at run time, so that this test binary holds no
// smtpd version string of its own.
var vm = string(versionMark)

// fakeBinary writes a file shaped like an executable: filler, then
// content at offset at, then more filler.
func fakeBinary(t *testing.T, at int, content string) string {
	t.Helper()
	b := bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 0, 1, 2, 3}, (at+7)/8)[:at]
	b = append(b, content...)
	b = append(b, bytes.Repeat([]byte{0, 0xff}, 40000)...)
	p := filepath.Join(t.TempDir(), "smtpd")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestIdentifyExecutable reads versions as the real binaries store them,
// at every offset relative to the scanner's pieces, and maps them to a
// header layout and the FD_R bug.
func TestIdentifyExecutable(t *testing.T) {
	for _, tc := range []struct {
		version string
		format  HeaderFormat
		bug     bool
	}{
		{"6.8.0p2", Header68, false},
		{"6.4.0", Header68, false},
		{"7.4.0-portable", Header68, false},
		{"7.5.0-portable", Header68, true},
		{"7.6.0-portable", Header68, true},
		{"7.7.0-portable", Header77, true},
		{"7.9.0-portable", Header77, true},
		{"8.0.0", Header77, true},
	} {
		for _, at := range []int{0, 1000, 64<<10 - 25, 64<<10 - 19, 64<<10 - 5, 64 << 10, 3*64<<10 + 7} {
			// A decoy first: the mark followed by no version, as in a Go
			// binary that holds the constant itself.
			p := fakeBinary(t, at, vm+"\x00usage: smtpd\x00"+vm+tc.version+"\x00usage: smtpd [-dFhnv]\x00")
			s, err := IdentifyExecutable(p)
			if err != nil {
				t.Fatalf("%s at %d: %v", tc.version, at, err)
			}
			if s.Version != tc.version || s.Path != p {
				t.Fatalf("%s at %d: got %+v", tc.version, at, s)
			}
			f, err := s.HeaderFormat()
			if err != nil || f != tc.format {
				t.Fatalf("%s: layout %v, %v; want %v", tc.version, f, err, tc.format)
			}
			if s.FdRBug() != tc.bug {
				t.Fatalf("%s: FdRBug %v, want %v", tc.version, s.FdRBug(), tc.bug)
			}
		}
	}
	old, err := IdentifyExecutable(fakeBinary(t, 10, vm+"6.3.1\x00"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.HeaderFormat(); err == nil || !strings.Contains(err.Error(), "6.4") {
		t.Fatalf("6.3.1: %v, want a refusal", err)
	}
	for name, content := range map[string]string{
		"no mark":     "usage: smtpd [-dFhnv]\x00",
		"no number":   vm + "portable\x00",
		"unprintable": vm + "7.\x01\x00",
		"no end":      vm + "7.9" + strings.Repeat("9", 80),
	} {
		if s, err := IdentifyExecutable(fakeBinary(t, 100, content)); !errors.Is(err, ErrUnidentified) {
			t.Errorf("%s: got %+v, %v; want ErrUnidentified", name, s, err)
		}
	}
	if _, err := IdentifyExecutable(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrUnidentified) {
		t.Errorf("missing file: %v", err)
	}
}

// TestIdentifyPeer: the peer of a socketpair is this test process, whose
// executable is no smtpd; it is found and refused by name.
func TestIdentifyPeer(t *testing.T) {
	sc, pc := socketpair(t)
	defer sc.Close()
	defer pc.Close()
	pid, err := peerPID(sc)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("peer pid %d, %v; want %d", pid, err, os.Getpid())
	}
	_, err = IdentifyPeer(sc)
	if !errors.Is(err, ErrUnidentified) || !strings.Contains(err.Error(), "not an smtpd binary") {
		t.Fatalf("got %v", err)
	}
}

// TestServeAutoUnidentified: with HeaderAuto and a peer that is no smtpd,
// Serve fails at once, before reading or answering anything.
func TestServeAutoUnidentified(t *testing.T) {
	sc, pc := socketpair(t)
	defer sc.Close()
	defer pc.Close()
	done := make(chan error, 1)
	go func() {
		done <- Serve(t.Context(), sc, newMemHandler(), &ServeOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnidentified) || !strings.Contains(err.Error(), "header layout") {
			t.Fatalf("got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve waits for a request although it cannot know the layout")
	}
}

// TestHeaderMismatch: a descriptor in the other layout proves the setting
// wrong; Serve says so and answers in smtpd's layout from then on.
func TestHeaderMismatch(t *testing.T) {
	m := traceHandler()
	s := serve(t, m, &ServeOptions{HeaderFormat: Header68})
	s.expect(hx(t, reqInit), hx(t, repInit))
	s.expect(hx(t, reqMessageCreate), hx(t, repMessageCreate))
	s.expect(append(hx(t, reqEnvelopeCreate), traceEnvelope...), hx(t, repEnvelopeCreate))
	s.expect(hx(t, reqCommit77), hx(t, repOK1), int(tempFile(t, traceBody).Fd()))
	fd := s.expect(hx(t, reqFdR), hx(t, repFdR77))
	if readFD(t, fd) != traceBody {
		t.Fatal("wrong body")
	}
	if !strings.Contains(s.log.String(), "header setting is wrong") {
		t.Fatalf("no error logged:\n%s", s.log.String())
	}
}
