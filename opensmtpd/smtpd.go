package opensmtpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
)

// Smtpd identifies an OpenSMTPD binary: the one at the other end of the
// queue socket (IdentifyPeer) or one on disk (IdentifyExecutable).
//
// What the queue process must know about its smtpd follows from the
// version alone: the imsg header layout (HeaderFormat) and whether the
// release carries upstream's MESSAGE_FD_R bug (FdRBug). The version is read
// from the executable itself, where every smtpd since 6.x keeps the string
// "version: OpenSMTPD <version>" that its -h option prints, so that no
// guess is made from traffic: requests without a descriptor are the same
// bytes in both layouts.
type Smtpd struct {
	// PID is the process at the other end of the socket, 0 for a binary
	// identified on disk.
	PID int
	// Path is the executable that was read.
	Path string
	// Version is the version as the binary states it, such as "6.8.0p2" or
	// "7.9.0-portable".
	Version string
	// Major and Minor are the leading numbers of Version.
	Major, Minor int
}

// String returns "OpenSMTPD <version>".
func (s *Smtpd) String() string { return "OpenSMTPD " + s.Version }

// ErrUnidentified is wrapped by the errors of IdentifyPeer and
// IdentifyExecutable when the smtpd, or its version, cannot be known.
var ErrUnidentified = errors.New("smtpd not identified")

// versionMark precedes the version in every smtpd binary: it is the format
// of the line that "smtpd -h" logs, one string constant in the binary.
var versionMark = []byte("version: OpenSMTPD ")

// IdentifyExecutable reads the version of the smtpd binary at path.
func IdentifyExecutable(path string) (*Smtpd, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnidentified, err)
	}
	defer f.Close()
	v, err := scanVersion(f)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnidentified, path, err)
	}
	s := &Smtpd{Path: path, Version: v}
	if s.Major, s.Minor, err = parseVersion(v); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnidentified, path, err)
	}
	return s, nil
}

// scanVersion finds the version string in r, a binary, reading it in
// bounded pieces: the first occurrence of versionMark followed by
// MAJOR.MINOR and the rest of a C string.
func scanVersion(r io.Reader) (string, error) {
	const chunk, maxVersion = 64 << 10, 64
	overlap := len(versionMark) + maxVersion
	buf := make([]byte, 0, chunk+overlap)
	tmp := make([]byte, chunk)
	for {
		n, err := io.ReadFull(r, tmp)
		buf = append(buf, tmp[:n]...)
		eof := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !eof {
			return "", err
		}
		for off := 0; ; {
			i := bytes.Index(buf[off:], versionMark)
			if i < 0 {
				break
			}
			start := off + i + len(versionMark)
			rest := buf[start:min(len(buf), start+maxVersion+1)]
			if end := bytes.IndexByte(rest, 0); end > 0 {
				if v := string(rest[:end]); versionLike(v) {
					return v, nil
				}
			} else if end < 0 && len(rest) <= maxVersion && !eof {
				break // cut off: seen again with the next piece
			}
			off = start
		}
		if eof {
			return "", errors.New(`no "version: OpenSMTPD" string: not an smtpd binary`)
		}
		if len(buf) > overlap {
			buf = append(buf[:0], buf[len(buf)-overlap:]...)
		}
	}
}

// versionLike reports whether v looks like a version: MAJOR.MINOR and
// printable characters up to the end.
func versionLike(v string) bool {
	if _, _, err := parseVersion(v); err != nil {
		return false
	}
	return !strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r > '~' })
}

// parseVersion returns the leading major and minor numbers of v, as in
// "6.8.0p2" or "7.9.0-portable".
func parseVersion(v string) (major, minor int, err error) {
	a, rest, ok := strings.Cut(v, ".")
	if !ok {
		return 0, 0, fmt.Errorf("version %q: want MAJOR.MINOR", v)
	}
	b := rest
	if i := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		b = rest[:i]
	}
	if major, err = strconv.Atoi(a); err != nil || major < 0 {
		return 0, 0, fmt.Errorf("version %q: want MAJOR.MINOR", v)
	}
	if minor, err = strconv.Atoi(b); err != nil || minor < 0 {
		return 0, 0, fmt.Errorf("version %q: want MAJOR.MINOR", v)
	}
	return major, minor, nil
}

// atLeast reports whether s is version major.minor or later.
func (s *Smtpd) atLeast(major, minor int) bool {
	return s.Major > major || s.Major == major && s.Minor >= minor
}

// HeaderFormat returns the imsg header layout this smtpd speaks: Header68
// up to 7.6, Header77 from 7.7, when the portable release bundled the new
// imsg. Releases before 6.4 speak another queue protocol and are refused.
func (s *Smtpd) HeaderFormat() (HeaderFormat, error) {
	switch {
	case !s.atLeast(6, 4):
		return HeaderAuto, fmt.Errorf("%s is older than 6.4, whose queue protocol mxq does not speak", s)
	case s.atLeast(7, 7):
		return Header77, nil
	default:
		return Header68, nil
	}
}

// FdRBug reports whether this release has upstream's MESSAGE_FD_R bug:
// from 7.5.0, queue_proc_message_fd_r frees the reply (closing its
// descriptor) before it takes the descriptor, so smtpd cannot read a
// message body from any external queue and exits at the first delivery.
// Every release from 7.5.0 to 7.9 has it; a build that carries the fix
// (opensmtpd/patches/queue_proc-fd_r.patch) reports the same version, so
// true means "affected unless patched". Later releases were not checked
// and are reported as affected.
func (s *Smtpd) FdRBug() bool { return s.atLeast(7, 5) }

// FdRBugChecked reports whether FdRBug was checked against this release's
// sources, rather than assumed for a release newer than those checked.
func (s *Smtpd) FdRBugChecked() bool { return !s.atLeast(7, 10) }

// IdentifyPeer identifies the smtpd at the other end of conn, the queue
// socket on fd 0: the process that made the socketpair, as the kernel
// records it (SO_PEERCRED), and its executable under /proc. It fails with
// ErrUnidentified where there is no such record, no /proc, or the peer is
// not an smtpd binary.
func IdentifyPeer(conn *net.UnixConn) (*Smtpd, error) {
	pid, err := peerPID(conn)
	if err != nil {
		return nil, fmt.Errorf("%w: the peer of the queue socket: %v", ErrUnidentified, err)
	}
	return identifyPID(pid)
}

func identifyPID(pid int) (*Smtpd, error) {
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	s, err := IdentifyExecutable(exe)
	if err != nil {
		return nil, err
	}
	s.PID = pid
	if real, err := os.Readlink(exe); err == nil {
		s.Path = real
	}
	return s, nil
}

// peerPID returns the process ID the kernel recorded for the other end of
// conn.
func peerPID(conn *net.UnixConn) (int, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	pid := 0
	var serr error
	err = rc.Control(func(fd uintptr) {
		pid, serr = peerCredPID(int(fd))
	})
	if err == nil {
		err = serr
	}
	if err == nil && pid <= 0 {
		err = errors.New("the kernel recorded no peer process")
	}
	return pid, err
}
