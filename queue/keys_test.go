package queue

import (
	"errors"
	"strings"
	"testing"
)

func TestKey(t *testing.T) {
	const m = MsgID(0xab12cd34)
	const e = EvpID(0xab12cd3400c0ffee)
	for _, c := range []struct {
		name string
		h    Handle
		want string
	}{
		{"reservation", Handle{Kind: KindReservation, Msg: m}, "inc/ab12cd34"},
		{"reservation prefix", Handle{Kind: KindReservation}, "inc/"},
		{"content", Handle{Kind: KindContent, Msg: m}, "msg/ab/ab12cd34"},
		{"content of a low ID", Handle{Kind: KindContent, Msg: 1}, "msg/00/00000001"},
		{"content prefix", Handle{Kind: KindContent}, "msg/"},
		{"envelope", Handle{Kind: KindEnvelope, Evp: e}, "evp/ab/ab12cd34/ab12cd3400c0ffee"},
		{"envelopes of a message", Handle{Kind: KindEnvelope, Msg: m}, "evp/ab/ab12cd34/"},
		{"envelope prefix", Handle{Kind: KindEnvelope}, "evp/"},
		{"quarantine", Handle{Kind: KindQuarantine, Msg: m}, "bad/ab12cd34/info"},
		{"quarantine prefix", Handle{Kind: KindQuarantine}, "bad/"},
		{"quarantined content", Handle{Kind: KindQuarantineContent, Msg: m}, "bad/ab12cd34/msg"},
		{"quarantined envelope", Handle{Kind: KindQuarantineEnvelope, Evp: e}, "bad/ab12cd34/evp/ab12cd3400c0ffee"},
		{"node", Handle{Kind: KindNode, Node: "mx1.example"}, "node/mx1.example"},
		{"claim", Handle{Kind: KindClaim, Node: "mx1", Evp: e}, "own/mx1/ab12cd3400c0ffee"},
		{"claim of a message", Handle{Kind: KindClaim, Node: "mx1", Msg: m}, "own/mx1/ab12cd34"},
		{"claims of a node", Handle{Kind: KindClaim, Node: "mx1"}, "own/mx1/"},
		{"claim prefix", Handle{Kind: KindClaim}, "own/"},
		{"due", Handle{Kind: KindDue, Due: 29511234, Evp: e}, "due/000029511234/ab12cd3400c0ffee"},
		{"due message", Handle{Kind: KindDue, Due: 29511234, Msg: m}, "due/000029511234/ab12cd34"},
		{"due bucket", Handle{Kind: KindDue, Due: 29511234}, "due/000029511234/"},
		{"due prefix", Handle{Kind: KindDue}, "due/"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Key(c.h)
			if got != c.want {
				t.Fatalf("Key(%+v) = %q, want %q", c.h, got, c.want)
			}
			// Every key, and every prefix without its final "/", passes
			// the rule that adapters and the REST server apply.
			k, prefix := strings.CutSuffix(got, "/")
			if err := ValidKey(k); err != nil && (!prefix || strings.Contains(k, "/")) {
				t.Fatalf("ValidKey(%q): %v", got, err)
			}
		})
	}
}

func TestParseEnvelopeKey(t *testing.T) {
	const e = EvpID(0xab12cd3400c0ffee)
	if got, err := parseEnvelopeKey(Key(Handle{Kind: KindEnvelope, Evp: e})); err != nil || got != e {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	for _, k := range []string{
		"evp/ab/ab12cd34/ab12cd3400c0ffe",
		"evp/00/ab12cd34/ab12cd3400c0ffee", // wrong shard
		"evp/ab/ab12cd35/ab12cd3400c0ffee", // wrong message
		"evp/ab/ab12cd34/AB12CD3400C0FFEE", // not canonical
		"evp/ab/ab12cd34/ab12cd3400000000", // zero low half
		"evp/zz/stray",
	} {
		if _, err := parseEnvelopeKey(k); !errors.Is(err, ErrCorrupt) {
			t.Errorf("parseEnvelopeKey(%q) = %v, want ErrCorrupt", k, err)
		}
	}
}

func TestValidNodeName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"mx1", true}, {"mx-1.example_a", true}, {"", false}, {".hidden", false},
		{"MX1", false}, {"a/b", false}, {"a b", false}, {string(make([]byte, 65)), false},
	} {
		err := ValidNodeName(c.name)
		if (err == nil) != c.ok || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidNodeName(%q) = %v", c.name, err)
		}
	}
}

func TestValidKey(t *testing.T) {
	for _, k := range []string{"inc/ab12cd34", "node/mx1.example", "a/b", "a/b.c/d_e-f", strings.Repeat("a/", 511) + "ab"} {
		if err := ValidKey(k); err != nil {
			t.Errorf("ValidKey(%q): %v", k, err)
		}
	}
	for _, k := range []string{"", "foo", ".tmp/x", ".hidden/x", "a/.b", "a//b", "a/b/", "/a/b", "a/./b", "a/../b",
		"A/b", "a/b,c", "a/b c", "a/b\x00", "a/é", strings.Repeat("a/", 512) + "ab"} {
		if err := ValidKey(k); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidKey(%q) = %v, want ErrInvalid", k, err)
		}
	}
}
