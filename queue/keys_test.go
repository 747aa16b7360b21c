package queue

import (
	"errors"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
)

func TestParseEnvelopeKey(t *testing.T) {
	const e = EvpID(0xab12cd3400c0ffee)
	if got, err := parseEnvelopeKey(layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(e)})); err != nil || got != e {
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

// TestLayoutKeysValid checks that every key of the layout, and every
// prefix of more than one segment without its final "/", passes the key
// rule that adapters and the REST server apply.
func TestLayoutKeysValid(t *testing.T) {
	const m, e = uint32(0xab12cd34), uint64(0xab12cd3400c0ffee)
	for _, h := range []layout.Handle{
		{Kind: layout.Reservation, Msg: m}, {Kind: layout.Content, Msg: m}, {Kind: layout.Envelope, Evp: e},
		{Kind: layout.Envelope, Msg: m}, {Kind: layout.Quarantine, Msg: m}, {Kind: layout.QuarantineContent, Msg: m},
		{Kind: layout.QuarantineEnvelope, Evp: e}, {Kind: layout.Node, Node: "mx1.example"},
		{Kind: layout.Claim, Node: "mx1", Evp: e}, {Kind: layout.Claim, Node: "mx1", Msg: m}, {Kind: layout.Claim, Node: "mx1"},
		{Kind: layout.Due, Due: 29511234, Evp: e}, {Kind: layout.Due, Due: 29511234, Msg: m}, {Kind: layout.Due, Due: 29511234},
	} {
		k, _ := strings.CutSuffix(layout.Key(h), "/")
		if err := driver.ValidKey(k); err != nil {
			t.Errorf("ValidKey(%q) of %+v: %v", k, h, err)
		}
	}
}
