package rest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mxqueue/mxq/adapters/restclient"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/rest"
)

func TestBadKeys(t *testing.T) {
	e := newEnv(t, nil, nil)
	cases := []struct{ name, path string }{
		{"dotdot", "/v1/objects/../inc/00000001"},
		{"inner dotdot", "/v1/objects/inc/../msg/00/00000001"},
		{"escaped dotdot", "/v1/objects/inc/%2e%2e/x"},
		{"dot", "/v1/objects/inc/./00000001"},
		{"uppercase", "/v1/objects/INC/00000001"},
		{"empty key", "/v1/objects/"},
		{"empty segment", "/v1/objects/inc//00000001"},
		{"trailing slash", "/v1/objects/inc/"},
		{"space", "/v1/objects/inc/a%20b"},
		{"escaped slash", "/v1/objects/inc%2F00000001"},
		{"unicode", "/v1/objects/inc/%C3%A9"},
		{"control byte", "/v1/objects/inc/%00"},
		{"too long", "/v1/objects/a/" + strings.Repeat("a", rest.MaxKeyLength-1)},
		{"one segment", "/v1/objects/foo"},
		{"leading dot", "/v1/objects/.tmp/x"},
		{"hidden", "/v1/objects/.hidden/x"},
		{"inner leading dot", "/v1/objects/inc/.x"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.do("PUT", c.path, strings.NewReader("x")).fails(t, 400, "invalid")
			e.do("GET", c.path, nil).fails(t, 400, "invalid")
			e.do("DELETE", c.path, nil).fails(t, 400, "invalid")
		})
	}
	if keys := e.rawKeys(""); len(keys) != 0 {
		t.Fatalf("bad keys wrote %v", keys)
	}
	for _, q := range []string{"prefix=../", "prefix=INC/", "start_after=inc//x", "limit=0", "limit=1001", "limit=x", "other=1", "prefix=a&prefix=b"} {
		t.Run("list "+q, func(t *testing.T) {
			e.do("GET", "/v1/objects?"+q, nil).fails(t, 400, "invalid")
		})
	}
	// A valid key longest allowed works.
	long := "a/" + strings.Repeat("a", rest.MaxKeyLength-2)
	e.do("PUT", "/v1/objects/"+long, strings.NewReader("x")).ok(t, 204, nil)
}

func TestBadIDs(t *testing.T) {
	e := newEnv(t, nil, nil)
	for _, path := range []string{
		"/v1/envelopes/xyz",
		"/v1/envelopes/0000000000000000",
		"/v1/envelopes/00000000000000001",
		"/v1/envelopes/ABCDEF0100000001",
		"/v1/envelopes/abcdef0100000000",
		"/v1/messages/ABCDEF01/content",
		"/v1/messages/00000000/content",
		"/v1/messages/1234567/content",
		"/v1/messages/../content",
		"/v1/messages//content",
		"/v1/quarantine/zzzzzzzz/content",
	} {
		t.Run(path, func(t *testing.T) {
			e.do("GET", path, nil).fails(t, 400, "invalid")
		})
	}
	e.do("GET", "/v1/walk?cursor=nope", nil).fails(t, 400, "invalid")
	e.do("GET", "/v1/walk?limit=5000", nil).fails(t, 400, "invalid")
	e.do("POST", "/v1/messages/abcdef01/commit", nil).fails(t, 404, "not_found")
	e.do("GET", "/v1/envelopes/abcdef0100000001", nil).fails(t, 404, "not_found")
}

func TestMethodsAndRoutes(t *testing.T) {
	e := newEnv(t, nil, nil)
	cases := []struct{ method, path, allow string }{
		{"DELETE", "/v1/walk", "GET, HEAD"},
		{"PATCH", "/v1/objects/inc/00000001", "GET, HEAD, PUT, DELETE"},
		{"POST", "/v1/envelopes/abcdef0100000001", "GET, PUT, DELETE, HEAD"},
		{"GET", "/v1/messages", "POST"},
		{"GET", "/v1/sweep", "POST"},
		{"PUT", "/healthz", "GET, HEAD"},
	}
	for _, c := range cases {
		r := e.do(c.method, c.path, nil)
		r.fails(t, 405, "method_not_allowed")
		if got := r.header.Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
		}
	}
	e.do("GET", "/v2/objects", nil).fails(t, 404, "not_found")
	e.do("GET", "/", nil).fails(t, 404, "not_found")
}

func TestAuth(t *testing.T) {
	e := newEnv(t, nil, nil)
	for _, auth := range []string{"", "Bearer", "Bearer wrong", "Basic " + testToken, "Bearer " + testToken + "x", "bearer" + testToken} {
		r := e.do("GET", "/v1/walk", nil, "Authorization", auth)
		r.fails(t, 401, "unauthorized")
		if r.header.Get("WWW-Authenticate") == "" {
			t.Fatalf("401 without WWW-Authenticate")
		}
		e.do("PUT", "/v1/objects/inc/00000001", strings.NewReader("x"), "Authorization", auth).fails(t, 401, "unauthorized")
	}
	if keys := e.rawKeys(""); len(keys) != 0 {
		t.Fatalf("unauthorized requests wrote %v", keys)
	}
	e.do("GET", "/v1/walk", nil).ok(t, 200, nil)
	var hz map[string]string
	e.do("GET", "/healthz", nil, "Authorization", "").ok(t, 200, &hz)
	if hz["status"] != "ok" {
		t.Fatalf("healthz = %v", hz)
	}

	// The client with a wrong token gets a clear, non-retryable error.
	st, err := restclient.Open(t.Context(), e.url, &restclient.Options{Token: "wrong"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	err = st.Ping(t.Context())
	if err == nil || !strings.Contains(err.Error(), "MXQ_TOKEN") || errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Ping with a wrong token: %v; want a clear error that names MXQ_TOKEN and is not retried", err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("Ping with a wrong token took %v: retried", time.Since(start))
	}
}

// TestEnvelopeLimitFromStore: without MaxEnvelopeSize, and with a larger
// one, the handler refuses at the Store's own limit, with 413.
func TestEnvelopeLimitFromStore(t *testing.T) {
	for _, max := range []int64{0, 1 << 20} {
		e := newEnvStore(t, &rest.Options{Token: testToken, MaxEnvelopeSize: max}, nil, &queue.Options{MaxEnvelopeSize: 100})
		m, _ := e.begin("ok")
		e.do("POST", "/v1/messages/"+m+"/envelopes", strings.NewReader(strings.Repeat("x", 100))).ok(t, 201, nil)
		e.do("POST", "/v1/messages/"+m+"/envelopes", strings.NewReader(strings.Repeat("x", 101))).fails(t, 413, "too_large")
	}
}

func TestOversized(t *testing.T) {
	e := newEnv(t, &rest.Options{Token: testToken, MaxBodySize: 1000, MaxEnvelopeSize: 100}, nil)
	m, _ := e.begin("ok")
	big := strings.Repeat("x", 101)
	// Known length: refused before reading; unknown length (chunked):
	// refused while reading.
	e.do("POST", "/v1/messages/"+m+"/envelopes", strings.NewReader(big)).fails(t, 413, "too_large")
	e.do("POST", "/v1/messages/"+m+"/envelopes", io.MultiReader(strings.NewReader(big))).fails(t, 413, "too_large")
	content := strings.Repeat("c", 1001)
	e.do("PUT", "/v1/messages/"+m+"/content", strings.NewReader(content)).fails(t, 413, "too_large")
	e.do("PUT", "/v1/messages/"+m+"/content", io.MultiReader(strings.NewReader(content))).fails(t, 413, "too_large")
	e.do("PUT", "/v1/objects/msg/00/00000001", strings.NewReader(content)).fails(t, 413, "too_large")
	e.do("PUT", "/v1/objects/msg/00/00000001", io.MultiReader(strings.NewReader(content))).fails(t, 413, "too_large")
	e.do("PUT", "/v1/envelopes/abcdef0100000001", strings.NewReader(big), "If-Match", `"1"`).fails(t, 413, "too_large")
	if keys := e.rawKeys("msg/"); len(keys) != 0 {
		t.Fatalf("oversized bodies wrote %v", keys)
	}
	// The transaction is intact: content at the limit commits.
	e.do("PUT", "/v1/messages/"+m+"/content", strings.NewReader(content[:1000])).ok(t, 200, nil)
	e.do("POST", "/v1/messages/"+m+"/commit", nil).ok(t, 200, nil)
	r := e.do("GET", "/v1/messages/"+m+"/content", nil)
	r.ok(t, 200, nil)
	if string(r.body) != content[:1000] {
		t.Fatalf("content of %d bytes, want 1000", len(r.body))
	}
}

func TestTruncatedUpload(t *testing.T) {
	e := newEnv(t, nil, nil)
	auth := "Authorization: Bearer " + testToken + "\r\n"
	// Object layer: 10 of 1000 announced bytes, then the client is gone.
	e.rawRequest("PUT /v1/objects/msg/ab/ab000001 HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 1000\r\n\r\n0123456789")
	e.rawRequest("PUT /v1/objects/msg/ab/ab000002 HTTP/1.1\r\nHost: x\r\n" + auth + "Transfer-Encoding: chunked\r\n\r\n3e8\r\n0123456789")
	if keys := e.rawKeys(""); len(keys) != 0 {
		t.Fatalf("truncated uploads left %v", keys)
	}
	// Queue layer: the content upload breaks; the transaction survives,
	// nothing of the broken upload is stored, and a full upload commits.
	m, ids := e.begin("rcpt")
	e.rawRequest("PUT /v1/messages/" + m + "/content HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 1000\r\n\r\n0123456789")
	if keys := e.rawKeys("msg/"); len(keys) != 0 {
		t.Fatalf("a truncated content upload left %v", keys)
	}
	e.do("GET", "/v1/envelopes/"+ids[0], nil).fails(t, 404, "not_found")
	e.do("PUT", "/v1/messages/"+m+"/content", strings.NewReader("full content")).ok(t, 200, nil)
	e.do("POST", "/v1/messages/"+m+"/commit", nil).ok(t, 200, nil)
	if r := e.do("GET", "/v1/messages/"+m+"/content", nil); string(r.body) != "full content" {
		t.Fatalf("content %q after a truncated and a full upload", r.body)
	}
}

// TestDisconnectMidCommit: the client goes away while the commit point is
// being written. The commit finishes as a whole, so every envelope and the
// content are there; nothing is half-written.
func TestDisconnectMidCommit(t *testing.T) {
	g := &gate{entered: make(chan struct{}), release: make(chan struct{})}
	e := newEnv(t, nil, func(b driver.Backend) driver.Backend { g.Backend = b; return g })
	m, ids := e.begin("one", "two", "three")
	e.do("PUT", "/v1/messages/"+m+"/content", strings.NewReader("the content")).ok(t, 200, nil)
	g.mu.Lock()
	g.armed = true
	g.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.rawRequest("POST /v1/messages/" + m + "/commit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testToken + "\r\nContent-Length: 0\r\n\r\n")
	}()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the commit did not reach its commit point")
	}
	// Let the server notice that the client is gone before the write.
	time.Sleep(200 * time.Millisecond)
	close(g.release)
	<-done
	for _, id := range ids {
		e.do("GET", "/v1/envelopes/"+id, nil).ok(t, 200, nil)
	}
	if r := e.do("GET", "/v1/messages/"+m+"/content", nil); r.status != 200 || string(r.body) != "the content" {
		t.Fatalf("content after a commit whose client left: %d %q", r.status, r.body)
	}
	e.do("POST", "/v1/messages/"+m+"/commit", nil).fails(t, 404, "not_found")
}

func TestQueueLayer(t *testing.T) {
	e := newEnv(t, nil, nil)
	// Begin, two envelopes, content, commit: the curl session of docs/rest.md.
	var begun struct{ Msgid string }
	r := e.do("POST", "/v1/messages", nil)
	r.ok(t, 201, &begun)
	m := begun.Msgid
	if r.header.Get("Location") != "/v1/messages/"+m {
		t.Fatalf("Location %q", r.header.Get("Location"))
	}
	var ev1, ev2 struct{ Evpid string }
	e.do("POST", "/v1/messages/"+m+"/envelopes", strings.NewReader("rcpt: alice@example.org")).ok(t, 201, &ev1)
	e.do("POST", "/v1/messages/"+m+"/envelopes", strings.NewReader("rcpt: bob@example.org")).ok(t, 201, &ev2)
	var wrote struct {
		Msgid string
		Size  int64
	}
	msg := "Subject: hi\r\n\r\nhello\r\n"
	e.do("PUT", "/v1/messages/"+m+"/content", strings.NewReader(msg)).ok(t, 200, &wrote)
	if wrote.Size != int64(len(msg)) || wrote.Msgid != m {
		t.Fatalf("write content = %+v", wrote)
	}
	// Invisible before the commit.
	e.do("GET", "/v1/envelopes/"+ev1.Evpid, nil).fails(t, 404, "not_found")
	var committed struct {
		Msgid     string
		Envelopes []string
	}
	e.do("POST", "/v1/messages/"+m+"/commit", nil).ok(t, 200, &committed)
	if want := []string{ev1.Evpid, ev2.Evpid}; !slices.Equal(committed.Envelopes, want) {
		t.Fatalf("commit envelopes %v, want %v", committed.Envelopes, want)
	}
	var list struct{ Envelopes []string }
	e.do("GET", "/v1/messages/"+m+"/envelopes", nil).ok(t, 200, &list)
	if len(list.Envelopes) != 2 {
		t.Fatalf("envelopes %v", list.Envelopes)
	}
	if r := e.do("GET", "/v1/messages/"+m+"/content", nil); r.status != 200 || string(r.body) != msg {
		t.Fatalf("content %d %q", r.status, r.body)
	}

	// Load, then compare-and-swap with the ETag.
	r = e.do("GET", "/v1/envelopes/"+ev1.Evpid, nil)
	r.ok(t, 200, nil)
	tag := r.header.Get("ETag")
	if string(r.body) != "rcpt: alice@example.org" || tag == "" {
		t.Fatalf("load: %q ETag %q", r.body, tag)
	}
	e.do("PUT", "/v1/envelopes/"+ev1.Evpid, strings.NewReader("retry: 1"), "If-Match", "").fails(t, 428, "invalid")
	r = e.do("PUT", "/v1/envelopes/"+ev1.Evpid, strings.NewReader("retry: 1"), "If-Match", tag)
	r.ok(t, 204, nil)
	newTag := r.header.Get("ETag")
	if newTag == "" || newTag == tag {
		t.Fatalf("update ETag %q after %q", newTag, tag)
	}
	e.do("PUT", "/v1/envelopes/"+ev1.Evpid, strings.NewReader("retry: 2"), "If-Match", tag).fails(t, 412, "conflict")
	e.do("PUT", "/v1/envelopes/"+ev1.Evpid, strings.NewReader("retry: 2"), "If-Match", "W/"+newTag).fails(t, 400, "invalid")
	if r := e.do("GET", "/v1/envelopes/"+ev1.Evpid, nil); string(r.body) != "retry: 1" || r.header.Get("ETag") != newTag {
		t.Fatalf("after a stale update: %q %s", r.body, r.header.Get("ETag"))
	}

	// Walk, in pages of one.
	var seen []string
	cursor := ""
	for range 10 {
		var p struct {
			Envelopes []string
			Cursor    string
		}
		e.do("GET", "/v1/walk?limit=1&cursor="+cursor, nil).ok(t, 200, &p)
		seen = append(seen, p.Envelopes...)
		if cursor = p.Cursor; cursor == "" {
			break
		}
	}
	if !slices.Equal(seen, slices.Sorted(slices.Values(committed.Envelopes))) {
		t.Fatalf("walk %v, want %v", seen, committed.Envelopes)
	}

	// A bounce: an envelope added to the committed message.
	var bounce struct{ Evpid string }
	e.do("POST", "/v1/messages/"+m+"/envelopes", strings.NewReader("bounce")).ok(t, 201, &bounce)
	e.do("GET", "/v1/envelopes/"+bounce.Evpid, nil).ok(t, 200, nil)

	// Delete one envelope, then the message.
	e.do("DELETE", "/v1/envelopes/"+ev2.Evpid, nil).ok(t, 204, nil)
	e.do("GET", "/v1/envelopes/"+ev2.Evpid, nil).fails(t, 404, "not_found")
	e.do("DELETE", "/v1/messages/"+m, nil).ok(t, 204, nil)
	e.do("GET", "/v1/messages/"+m+"/content", nil).fails(t, 404, "not_found")
	e.do("GET", "/v1/envelopes/"+ev1.Evpid, nil).fails(t, 404, "not_found")

	// Rollback.
	m2, ids2 := e.begin("x")
	e.do("POST", "/v1/messages/"+m2+"/rollback", nil).ok(t, 204, nil)
	e.do("POST", "/v1/messages/"+m2+"/commit", nil).fails(t, 404, "not_found")
	e.do("GET", "/v1/envelopes/"+ids2[0], nil).fails(t, 404, "not_found")
	// A commit without an envelope is refused, and can be retried.
	m3, _ := e.begin()
	e.do("POST", "/v1/messages/"+m3+"/commit", nil).fails(t, 400, "invalid")
	e.do("POST", "/v1/messages/"+m3+"/envelopes", strings.NewReader("late")).ok(t, 201, nil)
	e.do("POST", "/v1/messages/"+m3+"/commit", nil).ok(t, 200, nil)

	// Quarantine.
	e.do("POST", "/v1/messages/"+m3+"/quarantine", strings.NewReader(`{"reason":"checksum"}`)).ok(t, 204, nil)
	var q struct {
		Messages []struct {
			ID     string
			Reason string
		}
	}
	e.do("GET", "/v1/quarantine", nil).ok(t, 200, &q)
	if len(q.Messages) != 1 || q.Messages[0].ID != m3 || q.Messages[0].Reason != "checksum" {
		t.Fatalf("quarantine %+v", q)
	}
	e.do("GET", "/v1/quarantine/"+m3+"/content", nil).ok(t, 200, nil)
	e.do("POST", "/v1/messages/"+m3+"/quarantine", strings.NewReader(`not json`)).fails(t, 400, "invalid")

	// Sweep.
	var sw map[string]int
	e.do("POST", "/v1/sweep", nil).ok(t, 200, &sw)
	if _, ok := sw["aborted"]; !ok {
		t.Fatalf("sweep %v", sw)
	}
}

func TestObjectLayer(t *testing.T) {
	e := newEnv(t, nil, nil)
	const key = "/v1/objects/own/n1/0000000100000001"
	r := e.do("PUT", key, strings.NewReader("v1"), "If-None-Match", "*")
	r.ok(t, 204, nil)
	v1 := r.header.Get("ETag")
	e.do("PUT", key, strings.NewReader("again"), "If-None-Match", "*").fails(t, 412, "exists")
	e.do("PUT", key, strings.NewReader("x"), "If-None-Match", `"1"`).fails(t, 400, "invalid")
	r = e.do("PUT", key, strings.NewReader("v2"), "If-Match", v1)
	r.ok(t, 204, nil)
	v2 := r.header.Get("ETag")
	e.do("PUT", key, strings.NewReader("v3"), "If-Match", v1).fails(t, 412, "conflict")
	r = e.do("GET", key, nil)
	if r.status != 200 || string(r.body) != "v2" || r.header.Get("ETag") != v2 || r.header.Get("Content-Length") != "2" {
		t.Fatalf("GET: %d %q %v", r.status, r.body, r.header)
	}
	r = e.do("HEAD", key, nil)
	if r.status != 200 || r.header.Get("ETag") != v2 || len(r.body) != 0 {
		t.Fatalf("HEAD: %d %v", r.status, r.header)
	}
	var page rest.ListPage
	e.do("GET", "/v1/objects?prefix=own/&limit=1", nil).ok(t, 200, &page)
	if !slices.Equal(page.Keys, []string{"own/n1/0000000100000001"}) || page.More {
		t.Fatalf("list %+v", page)
	}
	e.do("DELETE", key, nil).ok(t, 204, nil)
	e.do("DELETE", key, nil).ok(t, 204, nil)
	e.do("GET", key, nil).fails(t, 404, "not_found")
	if r := e.do("HEAD", key, nil); r.status != 404 {
		t.Fatalf("HEAD missing: %d", r.status)
	}
	e.do("GET", "/v1/objects?prefix=own/", nil).ok(t, 200, &page)
	if page.Keys == nil || len(page.Keys) != 0 {
		t.Fatalf("empty list %+v: want keys []", page)
	}
}

func TestETag(t *testing.T) {
	for _, v := range []queue.Version{"1", "abc-DEF_0.9~:+/=", `"s3-etag"`, "a b", "!x", "\x00\xff"} {
		tag := rest.ETag(v)
		got, err := rest.ParseETag(tag)
		if err != nil || got != v {
			t.Errorf("ParseETag(ETag(%q) = %s) = %q, %v", v, tag, got, err)
		}
	}
	for _, bad := range []string{"", `""`, "1", `W/"1"`, `"1", "2"`, "*", `"!!!"`, `"a b"`} {
		if _, err := rest.ParseETag(bad); err == nil {
			t.Errorf("ParseETag(%q) succeeded", bad)
		}
	}
}

func TestCorruptContent(t *testing.T) {
	e := newEnv(t, nil, nil)
	for _, size := range []int{10, 200 << 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			m, _ := e.begin("r")
			content := bytes.Repeat([]byte("m"), size)
			e.do("PUT", "/v1/messages/"+m+"/content", bytes.NewReader(content)).ok(t, 200, nil)
			e.do("POST", "/v1/messages/"+m+"/commit", nil).ok(t, 200, nil)
			key := e.rawKeys("msg/")[0]
			rc, _, err := e.raw.Get(t.Context(), key)
			if err != nil {
				t.Fatal(err)
			}
			stored, _ := io.ReadAll(rc)
			stored[0] ^= 1
			if _, err := e.raw.Put(t.Context(), key, bytes.NewReader(stored), &driver.PutOptions{Size: -1}); err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(authed(t, "GET", e.url+"/v1/messages/"+m+"/content"))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			data, err := io.ReadAll(resp.Body)
			if resp.StatusCode == 200 && err == nil {
				t.Fatalf("corrupt content of %d bytes served as a complete 200 response", len(data))
			}
			if resp.StatusCode != 200 && resp.StatusCode != 502 {
				t.Fatalf("status %d for corrupt content", resp.StatusCode)
			}
			e.raw.Delete(t.Context(), key)
		})
	}
}

func authed(t *testing.T, method, url string) *http.Request {
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	return req
}

func TestInFlightLimit(t *testing.T) {
	e := newEnv(t, &rest.Options{Token: testToken, MaxInFlight: 1}, nil)
	pr, pw := io.Pipe()
	done := make(chan *http.Response)
	go func() {
		req := authed(t, "PUT", e.url+"/v1/objects/own/slow")
		req.Body = pr
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	pw.Write([]byte("first bytes")) // the slow upload takes the only slot
	// The bytes leave the pipe before the server has surely taken the
	// slot; ask until it has, for up to 30 s on a loaded machine.
	r := e.do("GET", "/v1/walk", nil)
	for i := 0; i < 3000 && r.status == 200; i++ {
		time.Sleep(10 * time.Millisecond)
		r = e.do("GET", "/v1/walk", nil)
	}
	r.fails(t, 503, "unavailable")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	e.do("GET", "/healthz", nil).ok(t, 200, nil)
	pw.Close()
	if resp := <-done; resp == nil || resp.StatusCode != 204 {
		t.Fatalf("the slow upload failed: %v", resp)
	}
	e.do("GET", "/v1/walk", nil).ok(t, 200, nil)
}

func TestIdleTransactionRolledBack(t *testing.T) {
	e := newEnv(t, &rest.Options{Token: testToken, TxIdleTimeout: 50 * time.Millisecond}, nil)
	m, _ := e.begin("r")
	e.do("PUT", "/v1/messages/"+m+"/content", strings.NewReader("c")).ok(t, 200, nil)
	deadline := time.Now().Add(5 * time.Second)
	for len(e.rawKeys("msg/")) > 0 || len(e.rawKeys("evp/")) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("an idle transaction was not rolled back: %v %v", e.rawKeys("msg/"), e.rawKeys("evp/"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.do("POST", "/v1/messages/"+m+"/commit", nil).fails(t, 404, "not_found")
}

func TestShutdown(t *testing.T) {
	e := newEnv(t, nil, nil)
	m, _ := e.begin("r")
	e.do("PUT", "/v1/messages/"+m+"/content", strings.NewReader("c")).ok(t, 200, nil)
	if err := e.h.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if k := append(e.rawKeys("msg/"), e.rawKeys("evp/")...); len(k) != 0 {
		t.Fatalf("after Shutdown the open transaction left %v", k)
	}
	e.do("POST", "/v1/messages", nil).fails(t, 503, "closed")
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, &rest.Options{Token: testToken, Metrics: reg}, nil)
	e.begin("r")
	e.do("GET", "/v1/envelopes/abcdef0100000001", nil).fails(t, 404, "not_found")
	e.do("GET", "/metrics", nil, "Authorization", "").fails(t, 401, "unauthorized")
	r := e.do("GET", "/metrics", nil)
	r.ok(t, 200, nil)
	for _, want := range []string{
		`mxq_rest_requests_total{code="ok",op="begin"} 1`,
		`mxq_rest_errors_total{code="not_found",op="load"} 1`,
		`mxq_rest_request_duration_seconds_count{op="add_envelope"} 1`,
		`mxq_rest_open_transactions 1`,
	} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestClientPrefix: a server mounted under a path is reached through the
// path of the URL.
func TestClientPrefix(t *testing.T) {
	e := newEnv(t, nil, nil)
	mux := http.NewServeMux()
	mux.Handle("/queue/", http.StripPrefix("/queue", e.h))
	srv := newServer(t, mux)
	st, err := restclient.Open(t.Context(), srv+"/queue/", &restclient.Options{Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	tx, err := st.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	tx.AddEnvelope([]byte("r"))
	if err := tx.Commit(context.WithoutCancel(t.Context())); err != nil {
		t.Fatal(err)
	}
	if k := e.rawKeys("evp/"); len(k) != 1 {
		t.Fatalf("through the prefix: %v", k)
	}
}

// TestObjectDeleteBatch: POST /v1/objects:delete removes every key of the
// batch, missing ones included, and refuses an empty batch, one too large
// and a bad key, deleting nothing.
func TestObjectDeleteBatch(t *testing.T) {
	e := newEnv(t, nil, nil)
	keys := []string{"due/000000000001/00000001", "due/000000000001/00000002", "own/n1/0000000100000001"}
	for _, k := range keys {
		e.do("PUT", "/v1/objects/"+k, strings.NewReader("x")).ok(t, 204, nil)
	}
	batch := func(keys ...string) io.Reader {
		data, err := json.Marshal(rest.DeleteBatch{Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		return bytes.NewReader(data)
	}
	e.do("POST", "/v1/objects:delete", batch()).fails(t, 400, "invalid")
	e.do("POST", "/v1/objects:delete", batch(keys[0], "bad//key")).fails(t, 400, "invalid")
	e.do("POST", "/v1/objects:delete", strings.NewReader("{")).fails(t, 400, "invalid")
	e.do("POST", "/v1/objects:delete", batch(make([]string, driver.MaxMultiDelete+1)...)).fails(t, 400, "invalid")
	if got := e.rawKeys(""); len(got) != len(keys) {
		t.Fatalf("refused batches left %v, want the %d keys", got, len(keys))
	}
	e.do("POST", "/v1/objects:delete", batch(append(keys, "due/000000000001/missing")...)).ok(t, 204, nil)
	if got := e.rawKeys(""); len(got) != 0 {
		t.Fatalf("left after the batch: %v", got)
	}
}
