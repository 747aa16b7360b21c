package rest_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
)

// testClock is a clock that moves only when told.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *testClock {
	return &testClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// committed commits a message with one envelope per data and returns the
// envelope IDs.
func (e *env) committed(envs ...string) []string {
	e.t.Helper()
	m, ids := e.begin(envs...)
	e.do("PUT", "/v1/messages/"+m+"/content", strings.NewReader("the content")).ok(e.t, 200, nil)
	e.do("POST", "/v1/messages/"+m+"/commit", nil).ok(e.t, 200, nil)
	return ids
}

// lease is what a claim answered.
type lease struct {
	etag, token string
	expires     time.Time
}

func (e *env) claim(id, query string) lease {
	e.t.Helper()
	r := e.do("POST", "/v1/envelopes/"+id+"/claim"+query, nil)
	r.ok(e.t, 200, nil)
	l := lease{etag: r.header.Get("ETag"), token: r.header.Get("Mxq-Lease-Token")}
	var err error
	if l.expires, err = time.Parse(time.RFC3339, r.header.Get("Mxq-Lease-Expires")); err != nil {
		e.t.Fatalf("Mxq-Lease-Expires: %v", err)
	}
	if l.etag == "" || l.token == "" {
		e.t.Fatalf("claim without ETag or token: %v", r.header)
	}
	if h := r.header.Get("Mxq-Lease-Holder"); h != e.st.Node() {
		e.t.Fatalf("Mxq-Lease-Holder %q, want the server's node %q", h, e.st.Node())
	}
	return l
}

// as sends the headers of a write by the holder of l.
func (l lease) as() []string { return []string{"If-Match", l.etag, "Mxq-Lease-Token", l.token} }

func (e *env) data(id string) string {
	e.t.Helper()
	r := e.do("GET", "/v1/envelopes/"+id, nil)
	r.ok(e.t, 200, nil)
	return string(r.body)
}

type dueList struct {
	Envelopes []struct {
		Evpid   string
		Version string
		Data    []byte
		Due     string
	}
}

func (e *env) due() dueList {
	e.t.Helper()
	var d dueList
	e.do("GET", "/v1/due?limit=10", nil).ok(e.t, 200, &d)
	return d
}

// TestClaimRace: of concurrent claims through one server, exactly one
// wins; a later one, and a plain update, are conflicts while it holds.
func TestClaimRace(t *testing.T) {
	e := newEnv(t, nil, nil)
	id := e.committed("rcpt: alice")[0]
	const n = 8
	statuses := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(t.Context(), "POST", e.url+"/v1/envelopes/"+id+"/claim?lease=5m", nil)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		})
	}
	wg.Wait()
	close(statuses)
	won := 0
	for s := range statuses {
		switch s {
		case 200:
			won++
		case 409:
		default:
			t.Fatalf("claim answered %d", s)
		}
	}
	if won != 1 {
		t.Fatalf("%d claims won, want exactly 1", won)
	}
	e.do("POST", "/v1/envelopes/"+id+"/claim", nil).fails(t, 409, "conflict")
	r := e.do("GET", "/v1/envelopes/"+id, nil)
	e.do("PUT", "/v1/envelopes/"+id, strings.NewReader("x"), "If-Match", r.header.Get("ETag")).fails(t, 412, "conflict")
	if d := e.due(); len(d.Envelopes) != 0 {
		t.Fatalf("a held envelope is due: %+v", d)
	}
	if got := e.data(id); got != "rcpt: alice" {
		t.Fatalf("data %q", got)
	}
}

// TestLeaseWrites: renew, update, release and delete by the holder, each
// fenced by (version, token).
func TestLeaseWrites(t *testing.T) {
	clk := newClock()
	e := newEnvStore(t, nil, nil, &queue.Options{Clock: clk.Now})
	id := e.committed("v1")[0]
	l := e.claim(id, "?lease=1m")
	if want := clk.Now().Add(time.Minute); !l.expires.Equal(want) {
		t.Fatalf("expires %v, want %v", l.expires, want)
	}
	r := e.do("POST", "/v1/envelopes/"+id+"/renew?lease=10m", nil, l.as()...)
	r.ok(t, 204, nil)
	if exp, _ := time.Parse(time.RFC3339, r.header.Get("Mxq-Lease-Expires")); !exp.Equal(clk.Now().Add(10 * time.Minute)) {
		t.Fatalf("renewed to %v", exp)
	}
	if r.header.Get("Mxq-Lease-Token") != l.token {
		t.Fatalf("renew changed the token")
	}
	// The old version is stale, though the claim is still the client's.
	e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader("v2"), l.as()...).fails(t, 412, "conflict")
	l.etag = r.header.Get("ETag")
	r = e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader("v2"), l.as()...)
	r.ok(t, 204, nil)
	l.etag = r.header.Get("ETag")
	if got := e.data(id); got != "v2" {
		t.Fatalf("data %q after update", got)
	}
	// A wrong token is someone else's claim.
	e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader("v3"), "If-Match", l.etag, "Mxq-Lease-Token", "999").fails(t, 409, "lease_lost")
	e.do("POST", "/v1/envelopes/"+id+"/release", nil, l.as()...).ok(t, 204, nil)
	// Released: the old claim writes nothing, a new one is granted.
	e.do("DELETE", "/v1/envelopes/"+id+"/leased", nil, l.as()...).fails(t, 409, "lease_lost")
	l2 := e.claim(id, "")
	if l2.token == l.token {
		t.Fatalf("a new claim kept token %s", l.token)
	}
	e.do("DELETE", "/v1/envelopes/"+id+"/leased", nil, l2.as()...).ok(t, 204, nil)
	e.do("GET", "/v1/envelopes/"+id, nil).fails(t, 404, "not_found")
	e.do("DELETE", "/v1/envelopes/"+id+"/leased", nil, l2.as()...).fails(t, 409, "lease_lost")
}

// TestLeaseFencingExpiry: a holder whose lease expired, and was claimed
// again, can neither write nor delete.
func TestLeaseFencingExpiry(t *testing.T) {
	clk := newClock()
	e := newEnvStore(t, nil, nil, &queue.Options{Clock: clk.Now})
	id := e.committed("original")[0]
	stale := e.claim(id, "?lease=1m")
	clk.Add(2 * time.Minute)
	// Expired: fenced even before anyone claims it again.
	e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader("stale"), stale.as()...).fails(t, 409, "lease_lost")
	e.do("POST", "/v1/envelopes/"+id+"/renew", nil, stale.as()...).fails(t, 409, "lease_lost")
	fresh := e.claim(id, "?lease=1m")
	e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader("stale"), stale.as()...).fails(t, 409, "lease_lost")
	e.do("DELETE", "/v1/envelopes/"+id+"/leased", nil, stale.as()...).fails(t, 409, "lease_lost")
	e.do("POST", "/v1/envelopes/"+id+"/defer?due=2030-01-02T03:04:05Z", nil, stale.as()...).fails(t, 409, "lease_lost")
	// The stale holder, with the new holder's version, still lacks its token.
	e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader("stale"), "If-Match", fresh.etag, "Mxq-Lease-Token", stale.token).fails(t, 409, "lease_lost")
	if got := e.data(id); got != "original" {
		t.Fatalf("data %q after fenced writes", got)
	}
	e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader("fresh"), fresh.as()...).ok(t, 204, nil)
	if got := e.data(id); got != "fresh" {
		t.Fatalf("data %q", got)
	}
}

// TestLeaseFencingTakeover: another node takes the server's claims over
// when the server's heartbeat expires; the client that held one through
// the server is fenced.
func TestLeaseFencingTakeover(t *testing.T) {
	clk := newClock()
	e := newEnvStore(t, nil, nil, &queue.Options{Node: "server", Clock: clk.Now})
	other, err := mem.Open(t.Context(), e.name, &mem.Options{Queue: queue.Options{Node: "survivor", Clock: clk.Now}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Heartbeat(t.Context()); err != nil {
		t.Fatal(err)
	}
	id := e.committed("original")[0]
	l := e.claim(id, "?lease=1h")
	// The server stops heartbeating (a test Store runs no RunNode).
	clk.Add(time.Minute)
	taken, err := other.Takeover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(taken) != 1 || taken[0].String() != id {
		t.Fatalf("taken over %v, want [%s]", taken, id)
	}
	e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader("stale"), l.as()...).fails(t, 409, "lease_lost")
	e.do("DELETE", "/v1/envelopes/"+id+"/leased", nil, l.as()...).fails(t, 409, "lease_lost")
	e.do("POST", "/v1/envelopes/"+id+"/release", nil, l.as()...).fails(t, 409, "lease_lost")
	// Held by a live node: a claim through the server is a conflict.
	e.do("POST", "/v1/envelopes/"+id+"/claim", nil).fails(t, 409, "conflict")
	r := e.do("GET", "/v1/envelopes/"+id, nil)
	if string(r.body) != "original" || r.header.Get("Mxq-Lease-Holder") != "survivor" {
		t.Fatalf("after takeover: data %q, holder %q", r.body, r.header.Get("Mxq-Lease-Holder"))
	}
}

// TestDeferThenDue: due lists committed envelopes; a claimed one leaves
// the list; a deferred one comes back, with its new data, when it is due.
func TestDeferThenDue(t *testing.T) {
	clk := newClock()
	e := newEnvStore(t, nil, nil, &queue.Options{Clock: clk.Now})
	id := e.committed("try: 0")[0]
	d := e.due()
	if len(d.Envelopes) != 1 || d.Envelopes[0].Evpid != id || string(d.Envelopes[0].Data) != "try: 0" {
		t.Fatalf("due %+v, want %s", d, id)
	}
	v := d.Envelopes[0].Version
	if got := e.do("GET", "/v1/envelopes/"+id, nil).header.Get("ETag"); got != v {
		t.Fatalf("due version %q, ETag %q", v, got)
	}
	l := e.claim(id, "")
	if d := e.due(); len(d.Envelopes) != 0 {
		t.Fatalf("due while held: %+v", d)
	}
	due := clk.Now().Add(10 * time.Minute).Format(time.RFC3339)
	r := e.do("POST", "/v1/envelopes/"+id+"/defer?due="+due, strings.NewReader("try: 1"), l.as()...)
	r.ok(t, 204, nil)
	if r.header.Get("Mxq-Due") != due {
		t.Fatalf("Mxq-Due %q, want %q", r.header.Get("Mxq-Due"), due)
	}
	if d := e.due(); len(d.Envelopes) != 0 {
		t.Fatalf("due before its time: %+v", d)
	}
	// Deferred means released: the old claim is gone.
	e.do("POST", "/v1/envelopes/"+id+"/renew", nil, "If-Match", r.header.Get("ETag"), "Mxq-Lease-Token", l.token).fails(t, 409, "lease_lost")
	clk.Add(11 * time.Minute)
	d = e.due()
	if len(d.Envelopes) != 1 || d.Envelopes[0].Evpid != id || string(d.Envelopes[0].Data) != "try: 1" || d.Envelopes[0].Due != due {
		t.Fatalf("due %+v, want %s with try: 1 at %s", d, id, due)
	}
	// A claim of the listed version; the stale one from before conflicts.
	e.do("POST", "/v1/envelopes/"+id+"/claim", nil, "If-Match", v).fails(t, 412, "conflict")
	e.do("POST", "/v1/envelopes/"+id+"/claim", nil, "If-Match", d.Envelopes[0].Version).ok(t, 200, nil)
	// The JSON is base64 as documented.
	raw := e.do("GET", "/v1/due", nil)
	raw.ok(t, 200, nil)
	if strings.Contains(string(raw.body), "try: 1") {
		t.Fatalf("due data not base64: %s", raw.body)
	}
}

func TestLeaseBadInput(t *testing.T) {
	e := newEnv(t, nil, nil)
	id := e.committed("x")[0]
	missing := id[:8] + "ffffffff"
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/envelopes/xyz/claim"},
		{"POST", "/v1/envelopes/ABCDEF0100000001/claim"},
		{"POST", "/v1/envelopes/" + id + "/claim?lease=abc"},
		{"POST", "/v1/envelopes/" + id + "/claim?lease=-1m"},
		{"POST", "/v1/envelopes/" + id + "/claim?lease=0s"},
		{"POST", "/v1/envelopes/" + id + "/claim?lease=25h"},
		{"POST", "/v1/envelopes/" + id + "/claim?lease=1m&lease=2m"},
		{"POST", "/v1/envelopes/" + id + "/claim?other=1"},
		{"POST", "/v1/envelopes/xyz/renew"},
		{"PUT", "/v1/envelopes/xyz/leased"},
		{"DELETE", "/v1/envelopes/0000000000000000/leased"},
		{"POST", "/v1/envelopes/" + id + "/defer"},
		{"POST", "/v1/envelopes/" + id + "/defer?due=tomorrow"},
		{"POST", "/v1/envelopes/" + id + "/defer?due=1960-01-01T00:00:00Z"},
		{"GET", "/v1/due?limit=0"},
		{"GET", "/v1/due?limit=1001"},
		{"GET", "/v1/due?limit=x"},
		{"GET", "/v1/due?cursor=x"},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			e.do(c.method, c.path, nil).fails(t, 400, "invalid")
		})
	}
	e.do("POST", "/v1/envelopes/"+missing+"/claim", nil).fails(t, 404, "not_found")
	e.do("POST", "/v1/envelopes/"+id+"/claim", nil, "If-Match", "nope").fails(t, 400, "invalid")
	l := e.claim(id, "")
	// The holder's writes need If-Match (428) and the token (400).
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/envelopes/" + id + "/renew"},
		{"POST", "/v1/envelopes/" + id + "/release"},
		{"POST", "/v1/envelopes/" + id + "/defer?due=2030-01-01T00:00:00Z"},
		{"PUT", "/v1/envelopes/" + id + "/leased"},
		{"DELETE", "/v1/envelopes/" + id + "/leased"},
	} {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			e.do(c.method, c.path, nil, "Mxq-Lease-Token", l.token).fails(t, 428, "invalid")
			e.do(c.method, c.path, nil, "If-Match", l.etag).fails(t, 400, "invalid")
			e.do(c.method, c.path, nil, "If-Match", l.etag, "Mxq-Lease-Token", "x").fails(t, 400, "invalid")
			e.do(c.method, c.path, nil, "If-Match", l.etag, "Mxq-Lease-Token", "0").fails(t, 400, "invalid")
			e.do(c.method, c.path, nil, "If-Match", "W/"+l.etag, "Mxq-Lease-Token", l.token).fails(t, 400, "invalid")
		})
	}
	e.do("PUT", "/v1/envelopes/"+missing+"/leased", strings.NewReader("x"), l.as()...).fails(t, 409, "lease_lost")
	big := strings.Repeat("x", 64<<10+1)
	e.do("PUT", "/v1/envelopes/"+id+"/leased", strings.NewReader(big), l.as()...).fails(t, 413, "too_large")
	if got := e.data(id); got != "x" {
		t.Fatalf("data %q after bad requests", got)
	}
	r := e.do("GET", "/v1/envelopes/"+id+"/claim", nil)
	r.fails(t, 405, "method_not_allowed")
	if r.header.Get("Allow") != "POST" {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}
	r = e.do("POST", "/v1/envelopes/"+id+"/leased", nil)
	r.fails(t, 405, "method_not_allowed")
	if r.header.Get("Allow") != "PUT, DELETE" {
		t.Fatalf("Allow %q", r.header.Get("Allow"))
	}
	e.do("POST", "/v1/envelopes/"+id+"/claim", nil, "Authorization", "Bearer wrong").fails(t, 401, "unauthorized")
}
