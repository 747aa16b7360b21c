package rest_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/driver/drivertest"
)

// TestOutage: while the store is out, queue requests are answered 503
// unavailable with Retry-After, promptly; once it is back, the same
// Handler serves them again and nothing committed before is lost.
func TestOutage(t *testing.T) {
	var f *drivertest.Faults
	e := newEnvStore(t, nil, func(b driver.Backend) driver.Backend {
		f = drivertest.New(b, 1)
		return f
	}, &queue.Options{Retries: 1})

	msgid, evps := e.begin("a", "b")
	e.do("PUT", "/v1/messages/"+msgid+"/content", strings.NewReader("before")).ok(t, 200, nil)
	e.do("POST", "/v1/messages/"+msgid+"/commit", nil).ok(t, 200, nil)
	open, _ := e.begin("c")

	f.Outage(false)
	for _, rq := range []struct{ method, path, body string }{
		// POST /v1/messages makes no request while the server's Store
		// has a block of IDs; the content and the commit fail.
		{"PUT", "/v1/messages/" + open + "/content", "during"},
		{"GET", "/v1/messages/" + msgid + "/content", ""},
		{"GET", "/v1/messages/" + msgid + "/envelopes", ""},
		{"GET", "/v1/envelopes/" + evps[0], ""},
		{"POST", "/v1/envelopes/" + evps[0] + "/claim", ""},
		{"DELETE", "/v1/envelopes/" + evps[1], ""},
		{"GET", "/v1/due", ""},
		{"GET", "/v1/walk", ""},
		{"POST", "/v1/sweep", ""},
		{"GET", "/v1/objects", ""},
		{"PUT", "/v1/objects/own/x", "x"},
	} {
		start := time.Now()
		r := e.do(rq.method, rq.path, strings.NewReader(rq.body))
		r.fails(t, 503, "unavailable")
		if r.header.Get("Retry-After") == "" {
			t.Fatalf("%s %s: 503 without Retry-After in the outage", rq.method, rq.path)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("%s %s took %v in the outage", rq.method, rq.path, d)
		}
	}
	e.do("GET", "/healthz", nil).fails(t, 503, "unavailable")

	f.Lift()
	e.do("GET", "/healthz", nil).ok(t, 200, nil)
	for _, id := range evps {
		e.do("GET", "/v1/envelopes/"+id, nil).ok(t, 200, nil)
	}
	if r := e.do("GET", "/v1/messages/"+msgid+"/content", nil); r.status != 200 || string(r.body) != "before" {
		t.Fatalf("content after the outage: %d %q", r.status, r.body)
	}
	e.do("PUT", "/v1/messages/"+open+"/content", strings.NewReader("after")).ok(t, 200, nil)
	e.do("POST", "/v1/messages/"+open+"/commit", nil).ok(t, 200, nil)
	e.do("POST", "/v1/envelopes/"+evps[0]+"/claim", nil).ok(t, 200, nil)
}
