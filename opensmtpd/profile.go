package opensmtpd

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"sync"
	"text/tabwriter"
	"time"
)

// Profile adds up where a queue process's time goes, request by request:
// how long each request type took to answer (busy), and how long smtpd
// took to send it after the previous reply (idle: smtpd's own work, and
// its clients'). Because smtpd waits for each answer before it sends the
// next request, busy plus idle is the whole wall time of the session, and
// the busy share of one message is what the queue process costs smtpd.
//
// Its Observe method is the ServeOptions.Observe hook. Memory is fixed:
// durations are kept in buckets of about 5% width from 1 µs to 100 s, so
// the percentiles are exact to that width. A Profile is safe for
// concurrent use.
type Profile struct {
	mu        sync.Mutex
	start     time.Time
	user, sys time.Duration // CPU time used before the start
	ops       map[Type]*opProfile
}

type opProfile struct {
	n          int64
	busy, idle time.Duration
	hist       [profileBuckets]int64
}

const (
	profileBuckets = 400
	profileMin     = float64(time.Microsecond)
)

// profileGrowth is the ratio between neighbouring bucket bounds.
var profileGrowth = math.Log(1.05)

func profileBucket(d time.Duration) int {
	if float64(d) <= profileMin {
		return 0
	}
	i := int(math.Log(float64(d)/profileMin)/profileGrowth) + 1
	return min(i, profileBuckets-1)
}

// profileBound is the upper bound of bucket i.
func profileBound(i int) time.Duration {
	return time.Duration(profileMin * math.Exp(float64(i)*profileGrowth))
}

// NewProfile returns an empty Profile whose wall time starts now.
func NewProfile() *Profile {
	p := &Profile{start: time.Now(), ops: make(map[Type]*opProfile)}
	p.user, p.sys, _ = cpuTime()
	return p
}

// Observe records one request of type op: idle is the time from the
// previous reply to this request, busy the time from this request to its
// reply.
func (p *Profile) Observe(op Type, idle, busy time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.ops[op]
	if o == nil {
		o = &opProfile{}
		p.ops[op] = o
	}
	o.n++
	o.busy += busy
	o.idle += idle
	o.hist[profileBucket(busy)]++
}

// quantile returns the upper bound of the bucket holding quantile q of
// the busy times of o.
func (o *opProfile) quantile(q float64) time.Duration {
	want := int64(math.Ceil(q * float64(o.n)))
	var seen int64
	for i, c := range o.hist {
		seen += c
		if seen >= want && c > 0 {
			return profileBound(i)
		}
	}
	return 0
}

// WriteTo writes the profile as a table: for each request type its count,
// its busy time in all, per request and at the 50th and 99th percentiles,
// and the idle time before it; then the totals, the busy share of the
// wall time, and the CPU time the process used (where the system tells).
func (p *Profile) WriteTo(w io.Writer) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "request\tcount\tbusy\tbusy/req\tp50\tp99\tidle before/req\t\n")
	var n int64
	var busy, idle time.Duration
	for op := range Type(len(typeNames)) {
		o := p.ops[op]
		if o == nil {
			continue
		}
		n += o.n
		busy += o.busy
		idle += o.idle
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n", op, o.n, round(o.busy), round(o.busy/time.Duration(o.n)),
			round(o.quantile(0.5)), round(o.quantile(0.99)), round(o.idle/time.Duration(o.n)))
	}
	tw.Flush() // into b, which does not fail
	wall := time.Since(p.start)
	share := 0.0
	if wall > 0 {
		share = float64(busy) / float64(wall)
	}
	fmt.Fprintf(&b, "%d requests; busy %s, idle %s, wall %s: the queue process was busy %.0f%% of the time\n",
		n, round(busy), round(idle), round(wall), 100*share)
	if user, sys, ok := cpuTime(); ok && n > 0 {
		user, sys = user-p.user, sys-p.sys
		fmt.Fprintf(&b, "CPU: user %s, system %s; %s per request\n", round(user), round(sys), round((user+sys)/time.Duration(n)))
	}
	return b.WriteTo(w)
}

// round shortens d for the table: µs below 10 ms, ms above.
func round(d time.Duration) time.Duration {
	if d < 10*time.Millisecond {
		return d.Round(time.Microsecond)
	}
	return d.Round(time.Millisecond)
}
