package bench

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Mail is one message of a generated corpus.
type Mail struct {
	// Kind is "text", "html", "attachment", "large attachment" or
	// "binary attachment".
	Kind string
	Data []byte
}

var words = strings.Fields(`the a to of and in that is for on it with as was at by be this have from
or an they which you one we all were her would there their will when who him been has more if no out so
said what up its about into than them can only other new some could time these two may then do first
any my now such like our over man me even most made after also did many before must through back years
where much your way well down should because each just those people how too little state good very make
world still own see men work long get here between both life being under never day same another know
while last might us great old year off come since against go came right used take three meeting invoice
order delivery shipment account password report attached please regards thanks team project deadline
schedule review budget quarter customer support ticket update release server queue message mail`)

// Corpus returns n messages that look like a mail queue's: RFC 5322
// headers with Received lines, plain-text and HTML bodies of a few hundred
// bytes to tens of KiB, about one in eight with a small base64 attachment
// of random bytes, and, first, one message with a large base64 attachment
// of size random bytes, and one with size/4 random bytes sent as binary
// (BINARYMIME), which does not compress at all. The same seed gives the
// same corpus.
func Corpus(seed uint64, n int, large int) []Mail {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]Mail, 0, n)
	for i := range n {
		kind := "text"
		switch {
		case i == 0 && large > 0:
			kind = "large attachment"
		case i == 1 && large > 0:
			kind = "binary attachment"
		case r.IntN(8) == 0:
			kind = "attachment"
		case r.IntN(4) == 0:
			kind = "html"
		}
		out = append(out, Mail{Kind: kind, Data: mail(r, i, kind, large)})
	}
	return out
}

func sentence(r *rand.Rand, b *bytes.Buffer) {
	n := 6 + r.IntN(14)
	for j := range n {
		w := words[r.IntN(len(words))]
		if j == 0 {
			w = strings.ToUpper(w[:1]) + w[1:]
		}
		b.WriteString(w)
		if j < n-1 {
			b.WriteByte(' ')
		}
	}
	b.WriteString(". ")
}

func paragraphs(r *rand.Rand, size int) []byte {
	var b bytes.Buffer
	line := 0
	for b.Len() < size {
		start := b.Len()
		sentence(r, &b)
		line += b.Len() - start
		if line > 70 {
			b.WriteString("\r\n")
			line = 0
		}
		if r.IntN(12) == 0 {
			b.WriteString("\r\n\r\n")
			line = 0
		}
	}
	return b.Bytes()
}

func mail(r *rand.Rand, i int, kind string, large int) []byte {
	var b bytes.Buffer
	t := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC).Add(time.Duration(i) * 37 * time.Second)
	for h := range 2 + r.IntN(3) {
		fmt.Fprintf(&b, "Received: from mx%d.example%d.org (mx%d.example%d.org [192.0.2.%d])\r\n\tby mx.example.net with ESMTPS id %016x\r\n\tfor <user%d@example.net>; %s\r\n",
			h, r.IntN(50), h, r.IntN(50), r.IntN(250), r.Uint64(), r.IntN(500), t.Format(time.RFC1123Z))
	}
	fmt.Fprintf(&b, "From: Sender %d <sender%d@example%d.org>\r\nTo: user%d@example.net\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%016x@example.org>\r\nMIME-Version: 1.0\r\n",
		i, r.IntN(1000), r.IntN(50), r.IntN(500), strings.TrimSpace(string(paragraphs(r, 30))), t.Format(time.RFC1123Z), r.Uint64())
	body := paragraphs(r, 200+r.IntN(8000)*(1+r.IntN(3)))
	switch kind {
	case "text":
		b.WriteString("Content-Type: text/plain; charset=utf-8\r\n\r\n")
		b.Write(body)
	case "html":
		b.WriteString("Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
		b.Write(body)
		b.WriteString("\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>")
		for _, p := range bytes.Split(body, []byte("\r\n\r\n")) {
			b.WriteString("<p style=\"font-family: Arial, sans-serif; color: #333333;\">")
			b.Write(p)
			b.WriteString("</p>\r\n")
		}
		b.WriteString("</body></html>\r\n--b1--\r\n")
	default:
		size := 20<<10 + r.IntN(400<<10)
		switch kind {
		case "large attachment":
			size = large
		case "binary attachment":
			size = large / 4
		}
		att := make([]byte, size)
		for j := 0; j+8 <= len(att); j += 8 {
			v := r.Uint64()
			for k := range 8 {
				att[j+k] = byte(v >> (8 * k))
			}
		}
		b.WriteString("Content-Type: multipart/mixed; boundary=\"b2\"\r\n\r\n--b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
		b.Write(body)
		if kind == "binary attachment" {
			fmt.Fprintf(&b, "\r\n--b2\r\nContent-Type: application/octet-stream; name=\"scan%d.jpg\"\r\nContent-Transfer-Encoding: binary\r\n\r\n", i)
			b.Write(att)
			b.WriteString("\r\n--b2--\r\n")
			break
		}
		fmt.Fprintf(&b, "\r\n--b2\r\nContent-Type: application/octet-stream; name=\"scan%d.jpg\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", i)
		enc := base64.StdEncoding.EncodeToString(att)
		for len(enc) > 76 {
			b.WriteString(enc[:76])
			b.WriteString("\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc)
		b.WriteString("\r\n--b2--\r\n")
	}
	return b.Bytes()
}
