package queue

import (
	"errors"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/queue/driver"
)

const (
	testMsg = MsgID(0xab12cd34)
	testEvp = EvpID(0xab12cd3400c0ffee)
)

// keyCases is the table of the key layout: each Handle and its key, and
// whether the key is a prefix (which ParseKey rejects) or an object's.
var keyCases = []struct {
	name   string
	h      Handle
	want   string
	prefix bool
}{
	{"reservation", Handle{Kind: KindReservation, Msg: testMsg}, "inc/ab12cd34", false},
	{"reservation prefix", Handle{Kind: KindReservation}, "inc/", true},
	{"content", Handle{Kind: KindContent, Msg: testMsg}, "msg/ab/ab12cd34", false},
	{"content of a low ID", Handle{Kind: KindContent, Msg: 1}, "msg/00/00000001", false},
	{"content prefix", Handle{Kind: KindContent}, "msg/", true},
	{"envelope", Handle{Kind: KindEnvelope, Evp: testEvp}, "evp/ab/ab12cd34/ab12cd3400c0ffee", false},
	{"envelopes of a message", Handle{Kind: KindEnvelope, Msg: testMsg}, "evp/ab/ab12cd34/", true},
	{"envelope prefix", Handle{Kind: KindEnvelope}, "evp/", true},
	{"quarantine", Handle{Kind: KindQuarantine, Msg: testMsg}, "bad/ab12cd34/info", false},
	{"quarantine prefix", Handle{Kind: KindQuarantine}, "bad/", true},
	{"quarantined content", Handle{Kind: KindQuarantineContent, Msg: testMsg}, "bad/ab12cd34/msg", false},
	{"quarantined envelope", Handle{Kind: KindQuarantineEnvelope, Evp: testEvp}, "bad/ab12cd34/evp/ab12cd3400c0ffee", false},
	{"node", Handle{Kind: KindNode, Node: "mx1.example"}, "node/mx1.example", false},
	{"claim", Handle{Kind: KindClaim, Node: "mx1", Evp: testEvp}, "own/mx1/ab12cd3400c0ffee", false},
	{"claim of a message", Handle{Kind: KindClaim, Node: "mx1", Msg: testMsg}, "own/mx1/ab12cd34", false},
	{"claims of a node", Handle{Kind: KindClaim, Node: "mx1"}, "own/mx1/", true},
	{"claim prefix", Handle{Kind: KindClaim}, "own/", true},
	{"due", Handle{Kind: KindDue, Due: 29511234, Evp: testEvp}, "due/000029511234/ab12cd3400c0ffee", false},
	{"due message", Handle{Kind: KindDue, Due: 29511234, Msg: testMsg}, "due/000029511234/ab12cd34", false},
	{"due bucket", Handle{Kind: KindDue, Due: 29511234}, "due/000029511234/", true},
	{"due prefix", Handle{Kind: KindDue}, "due/", true},
}

func TestKey(t *testing.T) {
	for _, c := range keyCases {
		t.Run(c.name, func(t *testing.T) {
			got := Key(c.h)
			if got != c.want {
				t.Fatalf("Key(%+v) = %q, want %q", c.h, got, c.want)
			}
			// Every key, and every prefix without its final "/", passes
			// the rule that adapters and the REST server apply.
			k, prefix := strings.CutSuffix(got, "/")
			if err := driver.ValidKey(k); err != nil && (!prefix || strings.Contains(k, "/")) {
				t.Fatalf("ValidKey(%q): %v", got, err)
			}
		})
	}
}

// TestParseKey checks that ParseKey is the inverse of Key: every object
// key parses back to its Handle, and prefixes and keys that Key never
// computes are rejected.
func TestParseKey(t *testing.T) {
	for _, c := range keyCases {
		t.Run(c.name, func(t *testing.T) {
			h, err := ParseKey(c.want)
			if c.prefix {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("ParseKey(%q) = %+v, %v; want ErrInvalid for a prefix", c.want, h, err)
				}
				return
			}
			if err != nil || h != c.h {
				t.Fatalf("ParseKey(%q) = %+v, %v; want %+v", c.want, h, err, c.h)
			}
		})
	}
	for _, k := range []string{
		"",
		"inc",
		"inc/AB12CD34",                       // not canonical
		"inc/00000000",                       // zero ID
		"inc/ab12cd34/x",                     // too long
		"msg/00/ab12cd34",                    // wrong shard
		"evp/ab/ab12cd35/ab12cd3400c0ffee",   // wrong message
		"bad/ab12cd34/other",                 // no such object
		"bad/ab12cd35/evp/ab12cd3400c0ffee",  // wrong message
		"node/.hidden",                       // invalid node name
		"node/MX1",                           // invalid node name
		"own/mx1/ab12cd3",                    // neither ID
		"own/mx1/x/ab12cd34",                 // too long
		"due/29511234/ab12cd34",              // bucket not padded
		"due/000000000000/ab12cd34",          // bucket zero
		"due/-00000000001/ab12cd34",          // negative bucket
		"due/+00029511234/ab12cd34",          // sign
		"due/000029511234/ab12cd3400c0ffee/", // trailing slash
		"other/ab12cd34",                     // unknown family
	} {
		if h, err := ParseKey(k); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseKey(%q) = %+v, %v; want ErrInvalid", k, h, err)
		}
	}
}

// FuzzParseKey checks the inverse in both directions on arbitrary input:
// a key that parses is the key of its Handle, and parses again to it.
func FuzzParseKey(f *testing.F) {
	for _, c := range keyCases {
		f.Add(c.want)
	}
	f.Add("due/-00000000001/ab12cd34")
	f.Fuzz(func(t *testing.T, k string) {
		h, err := ParseKey(k)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseKey(%q): %v, want ErrInvalid", k, err)
			}
			return
		}
		if got := Key(h); got != k {
			t.Fatalf("Key(ParseKey(%q)) = %q", k, got)
		}
		if h2, err := ParseKey(Key(h)); err != nil || h2 != h {
			t.Fatalf("ParseKey(Key(%+v)) = %+v, %v", h, h2, err)
		}
	})
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
