package main

import (
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/queue"
)

// lsJSON runs mxq ls --json with args and returns the envelopes.
func lsJSON(t *testing.T, u string, args ...string) []envelopeJSON {
	t.Helper()
	code, out, errs := runMxq(t, "", append([]string{"--queue", u, "--json", "ls"}, args...)...)
	if code != 0 {
		t.Fatalf("ls %v: exit %d: %s", args, code, errs)
	}
	var es []envelopeJSON
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var e envelopeJSON
		if err := dec.Decode(&e); errors.Is(err, io.EOF) {
			return es
		} else if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
}

// TestOperatorVerbs holds, releases and schedules envelopes with a node
// running beside, and checks each with the filters of ls, on every kind
// of store.
func TestOperatorVerbs(t *testing.T) {
	for _, kind := range []string{"file", "minio", "gcs", "datastore"} {
		t.Run(kind, func(t *testing.T) {
			u := storeURL(t, kind)
			c := fillQueue(t, u, 6)
			total := len(c.envs) + 2
			code, out, errs := runMxq(t, "hi\r\n", "--queue", u, "put", "-f", "boss@example.org", "-r", "VIP@example.org", "-r", "other@example.org")
			if code != 0 {
				t.Fatalf("put: %s", errs)
			}
			vip, err := queue.ParseEvpID(strings.Fields(strings.Split(out, "\n")[1])[0])
			if err != nil {
				t.Fatal(err)
			}
			// fillQueue deferred one envelope of two messages by an hour.
			if es := lsJSON(t, u, "--due"); len(es) != total-2 {
				t.Errorf("ls --due: %d envelopes, want %d", len(es), total-2)
			}

			code, out, errs = runMxq(t, "", "--queue", u, "hold", "--rcpt", "vip@")
			if code != 0 || !strings.Contains(out, vip.String()+" held") {
				t.Fatalf("hold --rcpt: exit %d: %s %s", code, out, errs)
			}
			if es := lsJSON(t, u, "--held"); len(es) != 1 || es[0].ID != vip || !es[0].Held {
				t.Errorf("ls --held: %+v, want %s", es, vip)
			}
			if es := lsJSON(t, u, "--rcpt", "vip"); len(es) != 1 || es[0].ID != vip {
				t.Errorf("ls --rcpt: %+v, want %s", es, vip)
			}
			if es := lsJSON(t, u, "--due"); len(es) != total-3 {
				t.Errorf("ls --due with one held: %d envelopes, want %d", len(es), total-3)
			}

			// A node delivering an envelope keeps hold and schedule out.
			mx := openTest(t, u, "mx")
			var busy queue.EvpID
			for id := range c.envs {
				busy = id
				break
			}
			cl, err := mx.Claim(t.Context(), busy, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, verb := range []string{"hold", "schedule"} {
				code, out, _ = runMxq(t, "", "--queue", u, verb, busy.String())
				if code != 1 || !strings.Contains(out, "busy") {
					t.Errorf("%s of an envelope in delivery: exit %d: %s", verb, code, out)
				}
			}
			if es := lsJSON(t, u, "--node", "mx"); len(es) != 1 || es[0].ID != busy {
				t.Errorf("ls --node mx: %+v, want %s", es, busy)
			}
			if err := cl.Release(t.Context()); err != nil {
				t.Fatal(err)
			}

			// schedule makes the deferred envelopes due.
			var deferred []string
			for id, e := range c.envs {
				if e.due != 0 {
					deferred = append(deferred, id.MsgID().String())
				}
			}
			code, out, errs = runMxq(t, "", append([]string{"--queue", u, "schedule"}, deferred...)...)
			if code != 0 {
				t.Fatalf("schedule: exit %d: %s %s", code, out, errs)
			}
			if es := lsJSON(t, u, "--due"); len(es) != total-1 {
				t.Errorf("ls --due after schedule: %d envelopes, want %d", len(es), total-1)
			}

			code, out, errs = runMxq(t, "", "--queue", u, "--json", "release", "--all")
			var rs []opResult
			if code != 0 || json.Unmarshal([]byte(out), &rs) != nil || len(rs) != total {
				t.Fatalf("release --all: exit %d: %s %s", code, out, errs)
			}
			if es := lsJSON(t, u, "--held"); len(es) != 0 {
				t.Errorf("ls --held after release: %d envelopes", len(es))
			}
			if es := lsJSON(t, u, "--due"); len(es) != total {
				t.Errorf("ls --due after release: %d envelopes, want %d", len(es), total)
			}
			if es := lsJSON(t, u, "--older-than", "1h"); len(es) != 0 {
				t.Errorf("ls --older-than 1h: %d envelopes of a new queue", len(es))
			}
			code, out, _ = runMxq(t, "", "--queue", u, "ls")
			if code != 0 || !strings.Contains(out, "AGE") || !strings.Contains(out, strconv.Itoa(total)+" envelope(s)") {
				t.Errorf("ls: exit %d:\n%s", code, out)
			}
		})
	}
}
