package opensmtpd

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
)

// pendingFD is a received descriptor together with the stream offset of the
// first byte that arrived with it.
type pendingFD struct {
	off int64
	fd  int
}

// conn reads imsg frames and descriptors from a stream socket and writes
// replies. It is used by one goroutine.
type conn struct {
	uc     *net.UnixConn
	log    *slog.Logger
	buf    []byte // received, not yet consumed bytes
	off    int64  // stream offset of buf[0]
	fds    []pendingFD
	rbuf   []byte
	oob    []byte
	wbuf   []byte
	format HeaderFormat // the layout of replies; never HeaderAuto
}

func newConn(uc *net.UnixConn, log *slog.Logger, format HeaderFormat) *conn {
	return &conn{
		uc:     uc,
		log:    log,
		rbuf:   make([]byte, MaxMessageSize),
		oob:    make([]byte, syscall.CmsgSpace(4)), // room for exactly one fd
		format: format,
	}
}

// fill reads once from the socket, appending bytes to c.buf and descriptors
// to c.fds. It returns io.EOF when the peer has shut down its side.
func (c *conn) fill() error {
	n, oobn, flags, _, err := c.uc.ReadMsgUnix(c.rbuf, c.oob)
	if oobn > 0 {
		c.takeFDs(c.oob[:oobn])
	}
	if flags&syscall.MSG_CTRUNC != 0 {
		// The kernel dropped (and closed) descriptors that did not fit.
		c.log.Warn("opensmtpd: peer sent more than one descriptor at once; extras dropped")
	}
	if n > 0 {
		c.buf = append(c.buf, c.rbuf[:n]...)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF
		}
		return err
	}
	if n == 0 && oobn == 0 {
		return io.EOF
	}
	return nil
}

func (c *conn) takeFDs(oob []byte) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		c.log.Warn("opensmtpd: bad control message", "err", err)
		return
	}
	at := c.off + int64(len(c.buf))
	for i := range msgs {
		fds, err := syscall.ParseUnixRights(&msgs[i])
		if err != nil {
			continue // not SCM_RIGHTS
		}
		for _, fd := range fds {
			c.fds = append(c.fds, pendingFD{off: at, fd: fd})
		}
	}
}

// closeFDs closes every pending descriptor; used when the connection ends.
func (c *conn) closeFDs() {
	for _, p := range c.fds {
		syscall.Close(p.fd)
	}
	c.fds = nil
}

// readFrame returns the next complete message: its header, its payload
// (valid until the next call) and, when the header says one is attached,
// its descriptor. Descriptors that arrived with the bytes of this message
// but are not claimed by it are closed. A clean EOF between messages
// returns io.EOF; an EOF inside one returns io.ErrUnexpectedEOF.
func (c *conn) readFrame() (header, []byte, *os.File, error) {
	for len(c.buf) < HeaderSize {
		if err := c.fill(); err != nil {
			return header{}, nil, nil, c.eof(err)
		}
	}
	h, err := parseHeader(c.buf)
	if err != nil {
		return header{}, nil, nil, err
	}
	for uint32(len(c.buf)) < h.len {
		if err := c.fill(); err != nil {
			return header{}, nil, nil, c.eof(err)
		}
	}
	start, end := c.off, c.off+int64(h.len)
	payload := c.buf[HeaderSize:h.len:h.len]
	c.consume(int(h.len))

	// Descriptors travel with the first bytes of the sendmsg that carries
	// the message, so the message's descriptor is the oldest one that
	// arrived no later than its last byte.
	var f *os.File
	keep := c.fds[:0]
	for _, p := range c.fds {
		switch {
		case p.off >= end:
			keep = append(keep, p)
		case h.hasFD && f == nil:
			f = os.NewFile(uintptr(p.fd), fmt.Sprintf("%s fd", h.typ))
		default:
			c.log.Warn("opensmtpd: closing unexpected descriptor", "type", h.typ.String(), "offset", start)
			syscall.Close(p.fd)
		}
	}
	c.fds = keep
	if h.hasFD {
		if f == nil {
			return h, payload, nil, malformed("%s: descriptor flag set but no descriptor received", h.typ)
		}
		if h.format != c.format {
			// Only a descriptor tells the layouts apart, and this one
			// proves the configured layout wrong.
			c.log.Error("opensmtpd: smtpd sent a descriptor in the other imsg header layout: the header setting is wrong; answering in smtpd's layout",
				"configured", c.format.String(), "smtpd", h.format.String())
			c.format = h.format
		}
	}
	return h, payload, f, nil
}

// consume drops n bytes from the front of c.buf. The payload slice handed
// out by readFrame stays valid because the backing array is only reused
// once fully consumed.
func (c *conn) consume(n int) {
	c.off += int64(n)
	if n == len(c.buf) {
		c.buf = c.buf[:0:0] // fresh array on the next append
		return
	}
	c.buf = c.buf[n:]
}

func (c *conn) eof(err error) error {
	if err == io.EOF && len(c.buf) > 0 {
		return io.ErrUnexpectedEOF
	}
	return err
}

// writeReply sends rp, attaching f when it is non-nil.
func (c *conn) writeReply(pid uint32, rp reply, f *os.File) error {
	rp.hasFD = f != nil
	b, err := appendReply(c.wbuf[:0], c.format, pid, rp)
	if err != nil {
		return err
	}
	c.wbuf = b
	var oob []byte
	if f != nil {
		oob = syscall.UnixRights(int(f.Fd()))
	}
	n, _, err := c.uc.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return err
	}
	if n < len(b) {
		// The descriptor went with the first part; send the rest plainly.
		_, err = c.uc.Write(b[n:])
	}
	return err
}
