package rest_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/rest"
)

// TestEarlyRefusal: a request refused before its body is read (401, 400,
// 405, 413) is answered at once, while the client still owes most of the
// body, and the server closes the connection instead of waiting for the
// rest. A client without the token cannot hold a connection by trickling
// a body.
func TestEarlyRefusal(t *testing.T) {
	e := newEnv(t, nil, nil)
	addr := strings.TrimPrefix(e.url, "http://")
	for _, c := range []struct {
		name, head string
		status     int
	}{
		{"no token", "PUT /v1/objects/a/b HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n", 401},
		{"no token, unclean path", "PUT /v1/objects/a/../b HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n", 401},
		{"no token, unknown path", "PUT /v2/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n", 401},
		{"bad key", "PUT /v1/objects/foo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testToken + "\r\nContent-Length: 1000\r\n", 400},
		{"wrong method", "POST /v1/objects/a/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testToken + "\r\nContent-Length: 1000\r\n", 405},
		{"chunked, no token", "PUT /v1/objects/a/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", 401},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// The headers and 3 bytes of the body; the rest never comes.
			body := "abc"
			if strings.Contains(c.head, "chunked") {
				body = "3e8\r\nabc"
			}
			if _, err := io.WriteString(conn, c.head+"\r\n"+body); err != nil {
				t.Fatal(err)
			}
			// Bounded so that the test ends; the server's own timeouts
			// are minutes.
			conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer while the body is owed: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.status)
			}
			if c.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("401 without WWW-Authenticate")
			}
			if !resp.Close {
				t.Errorf("the response does not announce Connection: close")
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("the connection stays open after the refusal: %v", err)
			}
		})
	}
}

// TestBodyIdleTimeout: an authorized client that stops sending its body
// has the request failed and the connection closed after
// Options.BodyIdleTimeout, not after the server's whole-request timeout;
// a body that keeps coming is not cut.
func TestBodyIdleTimeout(t *testing.T) {
	e := newEnv(t, &rest.Options{Token: testToken, BodyIdleTimeout: 300 * time.Millisecond}, nil)
	addr := strings.TrimPrefix(e.url, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "PUT /v1/objects/a/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+testToken+"\r\nContent-Length: 1000\r\n\r\nabc")
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("the server kept the stalled connection: %v (read %q)", err, b)
	}
	if keys := e.rawKeys(""); len(keys) != 0 {
		t.Fatalf("a stalled body stored %v", keys)
	}

	// Slow but steady: pieces 100ms apart, under the idle bound, in all
	// longer than it.
	conn2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	io.WriteString(conn2, "PUT /v1/objects/a/c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+testToken+"\r\nContent-Length: 10\r\n\r\n")
	for range 10 {
		time.Sleep(100 * time.Millisecond)
		io.WriteString(conn2, "x")
	}
	conn2.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn2), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 {
		t.Fatalf("steady body: status %d, want 204", resp.StatusCode)
	}
}
