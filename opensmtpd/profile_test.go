package opensmtpd

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestObserve checks that Serve reports every request once, in order, with
// a busy time that covers the Handler's work and an idle time that covers
// the peer's pause before the request.
func TestObserve(t *testing.T) {
	const work, pause = 30 * time.Millisecond, 40 * time.Millisecond
	type obs struct {
		op         Type
		idle, busy time.Duration
	}
	var mu sync.Mutex
	var got []obs
	h := &funcHandler{memHandler: newMemHandler(), create: func(ctx context.Context) (uint32, error) {
		time.Sleep(work)
		return 0xaabbccdd, nil
	}}
	s := serve(t, h, &ServeOptions{Observe: func(op Type, idle, busy time.Duration) {
		mu.Lock()
		got = append(got, obs{op, idle, busy})
		mu.Unlock()
	}})
	s.expect(hx(t, reqInit), hx(t, repInit))
	time.Sleep(pause)
	s.expect(hx(t, reqMessageCreate), hx(t, "00 00 00 00 18 00 00 00 00 00 00 00 c2 62 00 00 01 00 00 00 dd cc bb aa"))
	s.expect(hx(t, reqClose), hx(t, repOK1))
	if err := s.wait(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || got[0].op != TypeInit || got[1].op != TypeMessageCreate || got[2].op != TypeClose {
		t.Fatalf("observed %v, want INIT, MESSAGE_CREATE, CLOSE", got)
	}
	if got[1].busy < work {
		t.Errorf("MESSAGE_CREATE busy %v, below the handler's %v", got[1].busy, work)
	}
	if got[1].idle < pause {
		t.Errorf("MESSAGE_CREATE idle %v, below the peer's pause of %v", got[1].idle, pause)
	}
}

// TestProfileTable checks the counts, means and percentiles a Profile
// writes.
func TestProfileTable(t *testing.T) {
	p := NewProfile()
	for range 90 {
		p.Observe(TypeMessageCommit, 2*time.Millisecond, time.Millisecond)
	}
	for range 10 {
		p.Observe(TypeMessageCommit, 2*time.Millisecond, time.Second)
	}
	p.Observe(TypeMessageCreate, time.Millisecond, 10*time.Microsecond)
	var b bytes.Buffer
	n, err := p.WriteTo(&b)
	if err != nil || n != int64(b.Len()) {
		t.Fatalf("WriteTo = %d, %v; wrote %d bytes", n, err, b.Len())
	}
	out := b.String()
	t.Log("\n" + out)
	var commit, create []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) > 0 && f[0] == "MESSAGE_COMMIT":
			commit = f
		case len(f) > 0 && f[0] == "MESSAGE_CREATE":
			create = f
		}
	}
	// request count busy busy/req p50 p99 idle
	if len(commit) != 7 || len(create) != 7 {
		t.Fatalf("rows %q and %q, want 7 columns each", commit, create)
	}
	if commit[1] != "100" || commit[2] != "10.09s" || commit[3] != "101ms" || commit[6] != "2ms" {
		t.Errorf("MESSAGE_COMMIT row %q: want 100 requests, 10.09s busy, 101ms each, 2ms idle", commit)
	}
	within := func(col string, want time.Duration) {
		t.Helper()
		d, err := time.ParseDuration(col)
		if err != nil || d < want || float64(d) > 1.06*float64(want) {
			t.Errorf("percentile %q, want %v to 6%% above", col, want)
		}
	}
	within(commit[4], time.Millisecond)
	within(commit[5], time.Second)
	within(create[4], 10*time.Microsecond)
	if !strings.Contains(out, "101 requests") {
		t.Errorf("no total of 101 requests in\n%s", out)
	}
	// MESSAGE_CREATE comes before MESSAGE_COMMIT, in protocol order.
	if strings.Index(out, "MESSAGE_CREATE") > strings.Index(out, "MESSAGE_COMMIT") {
		t.Errorf("rows not in protocol order:\n%s", out)
	}
}
