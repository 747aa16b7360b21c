package layout

import (
	"errors"
	"strings"
	"testing"
)

const (
	testMsg = uint32(0xab12cd34)
	testEvp = uint64(0xab12cd3400c0ffee)
)

// keyCases is the table of the key layout: each Handle and its key, and
// whether the key is a prefix (which Parse rejects) or an object's.
var keyCases = []struct {
	name   string
	h      Handle
	want   string
	prefix bool
}{
	{"reservation", Handle{Kind: Reservation, Msg: testMsg}, "inc/ab12cd34", false},
	{"reservation prefix", Handle{Kind: Reservation}, "inc/", true},
	{"content", Handle{Kind: Content, Msg: testMsg}, "msg/ab/ab12cd34", false},
	{"content of a low ID", Handle{Kind: Content, Msg: 1}, "msg/00/00000001", false},
	{"content prefix", Handle{Kind: Content}, "msg/", true},
	{"envelope", Handle{Kind: Envelope, Evp: testEvp}, "evp/ab/ab12cd34/ab12cd3400c0ffee", false},
	{"envelopes of a message", Handle{Kind: Envelope, Msg: testMsg}, "evp/ab/ab12cd34/", true},
	{"envelope prefix", Handle{Kind: Envelope}, "evp/", true},
	{"quarantine", Handle{Kind: Quarantine, Msg: testMsg}, "bad/ab12cd34/info", false},
	{"quarantine prefix", Handle{Kind: Quarantine}, "bad/", true},
	{"quarantined content", Handle{Kind: QuarantineContent, Msg: testMsg}, "bad/ab12cd34/msg", false},
	{"quarantined envelope", Handle{Kind: QuarantineEnvelope, Evp: testEvp}, "bad/ab12cd34/evp/ab12cd3400c0ffee", false},
	{"node", Handle{Kind: Node, Node: "mx1.example"}, "node/mx1.example", false},
	{"claim", Handle{Kind: Claim, Node: "mx1", Evp: testEvp}, "own/mx1/ab12cd3400c0ffee", false},
	{"claim of a message", Handle{Kind: Claim, Node: "mx1", Msg: testMsg}, "own/mx1/ab12cd34", false},
	{"claims of a node", Handle{Kind: Claim, Node: "mx1"}, "own/mx1/", true},
	{"claim prefix", Handle{Kind: Claim}, "own/", true},
	{"due", Handle{Kind: Due, Due: 29511234, Evp: testEvp}, "due/000029511234/ab12cd3400c0ffee", false},
	{"due message", Handle{Kind: Due, Due: 29511234, Msg: testMsg}, "due/000029511234/ab12cd34", false},
	{"due group", Handle{Kind: DueGroup, Due: 29511234, Evp: testEvp}, "due/000029511234/gab12cd3400c0ffee", false},
	{"due bucket", Handle{Kind: Due, Due: 29511234}, "due/000029511234/", true},
	{"block", Handle{Kind: Block, Msg: testMsg &^ 0xfff}, "blk/ab12c", false},
	{"block prefix", Handle{Kind: Block}, "blk/", true},
	{"due prefix", Handle{Kind: Due}, "due/", true},
}

func TestKey(t *testing.T) {
	for _, c := range keyCases {
		t.Run(c.name, func(t *testing.T) {
			got := Key(c.h)
			if got != c.want {
				t.Fatalf("Key(%+v) = %q, want %q", c.h, got, c.want)
			}
		})
	}
}

// TestParse checks that Parse is the inverse of Key: every object
// key parses back to its Handle, and prefixes and keys that Key never
// computes are rejected.
func TestParse(t *testing.T) {
	for _, c := range keyCases {
		t.Run(c.name, func(t *testing.T) {
			h, err := Parse(c.want)
			if c.prefix {
				if !errors.Is(err, ErrNotKey) {
					t.Fatalf("Parse(%q) = %+v, %v; want ErrNotKey for a prefix", c.want, h, err)
				}
				return
			}
			if err != nil || h != c.h {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", c.want, h, err, c.h)
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
		if h, err := Parse(k); !errors.Is(err, ErrNotKey) {
			t.Errorf("Parse(%q) = %+v, %v; want ErrNotKey", k, h, err)
		}
	}
}

// FuzzParse checks the inverse in both directions on arbitrary input:
// a key that parses is the key of its Handle, and parses again to it.
func FuzzParse(f *testing.F) {
	for _, c := range keyCases {
		f.Add(c.want)
	}
	f.Add("due/-00000000001/ab12cd34")
	f.Fuzz(func(t *testing.T, k string) {
		h, err := Parse(k)
		if err != nil {
			if !errors.Is(err, ErrNotKey) {
				t.Fatalf("Parse(%q): %v, want ErrNotKey", k, err)
			}
			return
		}
		if got := Key(h); got != k {
			t.Fatalf("Key(Parse(%q)) = %q", k, got)
		}
		if h2, err := Parse(Key(h)); err != nil || h2 != h {
			t.Fatalf("Parse(Key(%+v)) = %+v, %v", h, h2, err)
		}
	})
}

func TestBlockPrefix(t *testing.T) {
	for _, c := range []struct {
		k    Kind
		want string
	}{
		{Reservation, "inc/ab12c"}, {Content, "msg/ab/ab12c"}, {Envelope, "evp/ab/ab12c"}, {Quarantine, "bad/ab12c"},
	} {
		if got := BlockPrefix(c.k, testMsg); got != c.want {
			t.Errorf("BlockPrefix(%d, %08x) = %q, want %q", c.k, testMsg, got, c.want)
		}
		// Every object of a message of the block is under the prefix.
		for _, m := range []uint32{BlockOf(testMsg), BlockOf(testMsg) + BlockSize - 1} {
			var key string
			switch c.k {
			case Envelope:
				key = Key(Handle{Kind: Envelope, Evp: uint64(m)<<32 | 1})
			case Quarantine:
				key = Key(Handle{Kind: QuarantineContent, Msg: m})
			default:
				key = Key(Handle{Kind: c.k, Msg: m})
			}
			if !strings.HasPrefix(key, c.want) {
				t.Errorf("%q is not under %q", key, c.want)
			}
		}
	}
	if BlockOf(testMsg) != 0xab12c000 {
		t.Errorf("BlockOf = %08x", BlockOf(testMsg))
	}
	if h, err := Parse("blk/ab12c"); err != nil || h.Msg != 0xab12c000 {
		t.Errorf("Parse(blk/ab12c) = %+v, %v", h, err)
	}
	for _, k := range []string{"blk/00000", "blk/ab12", "blk/ab12cd", "blk/AB12C"} {
		if _, err := Parse(k); err == nil {
			t.Errorf("Parse(%q) accepted", k)
		}
	}
}
