package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/mxqueue/mxq/queue"
)

// bounce settles envelopes that failed for good: one DSN for all of them
// is queued to their sender, like any other message, then they are
// deleted. A bounce has the null sender and is never bounced itself: when
// one fails, it is dropped and logged. If the DSN cannot be queued, the
// envelopes are deferred, and a later attempt tries again.
func (mx *MX) bounce(ctx context.Context, m queue.MsgID, failed []*rcpt) {
	result := "dropped"
	if from := failed[0].e.From; from != "" {
		report := mx.dsn(ctx, m, failed)
		_, err := mx.enqueue(ctx, "", []string{from}, func(queue.MsgID) io.Reader { return bytes.NewReader(report) })
		if err != nil {
			mx.log.Error("bounce not queued", "msg", m, "err", err)
			for _, r := range failed {
				mx.deferRcpt(ctx, r)
			}
			return
		}
		result = "bounced"
	}
	for _, r := range failed {
		mx.settle(r, result, r.c.Delete(ctx))
	}
}

// dsn returns the delivery status notification (RFC 3464) for the failed
// recipients of message m: a multipart/report of a note for people, the
// message/delivery-status for programs, and the original header section.
func (mx *MX) dsn(ctx context.Context, m queue.MsgID, failed []*rcpt) []byte {
	host, now := mx.cfg.Hostname, time.Now().Format(time.RFC1123Z)
	relay, _, _ := net.SplitHostPort(mx.cfg.Relay)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)

	p, _ := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/plain; charset=utf-8"}})
	fmt.Fprintf(p, "This is the mail system at %s.\r\n\r\nYour message could not be delivered to these recipients:\r\n\r\n", host)
	for _, r := range failed {
		fmt.Fprintf(p, "<%s>: %s\r\n", r.e.To, oneLine(r.err.Error()))
	}

	p, _ = mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"message/delivery-status"}})
	fmt.Fprintf(p, "Reporting-MTA: dns; %s\r\nX-Mxq-Queue-ID: %s\r\nArrival-Date: %s\r\n",
		host, m, failed[0].e.Received.Format(time.RFC1123Z))
	for _, r := range failed {
		// Out of time after temporary failures is 4.4.7 (RFC 3463);
		// a 5xx gives its own enhanced code.
		status, diag := "4.4.7", ""
		var se *smtp.SMTPError
		if errors.As(r.err, &se) {
			ec := se.EnhancedCode
			if permanent(se) {
				status = "5.0.0"
				if ec[0] == 5 {
					status = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
				}
			}
			diag = fmt.Sprintf("%d %d.%d.%d %s", se.Code, ec[0], ec[1], ec[2], oneLine(se.Message))
		}
		fmt.Fprintf(p, "\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: %s\r\n", r.e.To, status)
		if diag != "" {
			fmt.Fprintf(p, "Remote-MTA: dns; %s\r\nDiagnostic-Code: smtp; %s\r\n", relay, diag)
		}
		fmt.Fprintf(p, "Last-Attempt-Date: %s\r\n", now)
	}

	p, _ = mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"text/rfc822-headers"}})
	if err := mx.copyHeader(ctx, m, p); err != nil {
		mx.log.Warn("bounce without the original header", "msg", m, "err", err)
	}
	mw.Close()

	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n", host)
	fmt.Fprintf(&b, "To: <%s>\r\n", failed[0].e.From)
	fmt.Fprintf(&b, "Subject: Undelivered Mail Returned to Sender\r\n")
	fmt.Fprintf(&b, "Date: %s\r\nMessage-ID: <%s.%x@%s>\r\n", now, m, rand.Uint64(), host)
	fmt.Fprintf(&b, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n") // RFC 3834
	fmt.Fprintf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"%s\"\r\n\r\n", mw.Boundary())
	b.Write(body.Bytes())
	return b.Bytes()
}

// copyHeader copies the header section of message m to w, up to 64 KiB.
func (mx *MX) copyHeader(ctx context.Context, m queue.MsgID, w io.Writer) error {
	rc, err := mx.q.OpenContent(ctx, m)
	if err != nil {
		return err
	}
	defer rc.Close()
	br := bufio.NewReader(io.LimitReader(rc, 64<<10))
	for {
		line, err := br.ReadString('\n')
		if strings.TrimRight(line, "\r\n") == "" {
			return nil // the blank line that ends the header, or the end
		}
		io.WriteString(w, line)
		if err != nil {
			return nil
		}
	}
}

// oneLine folds a multi-line reply into one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
