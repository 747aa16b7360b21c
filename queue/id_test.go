package queue

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestParseID(t *testing.T) {
	for _, c := range []struct {
		in   string
		msg  MsgID
		evp  EvpID
		fail bool
	}{
		{in: "deadbeef", msg: 0xdeadbeef},
		{in: "DEADBEEF", msg: 0xdeadbeef},
		{in: "deadbeef00000001", msg: 0xdeadbeef, evp: 0xdeadbeef00000001},
		{in: "", fail: true},
		{in: "00000000", fail: true},
		{in: "deadbee", fail: true},
		{in: "deadbeef0", fail: true},
		{in: "deadbeef00000000", fail: true},
		{in: "-eadbeef", fail: true},
		{in: "0x123456", fail: true},
	} {
		m, e, err := ParseID(c.in)
		if c.fail {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseID(%q) = %v, %v, %v; want ErrInvalid", c.in, m, e, err)
			}
			continue
		}
		if err != nil || m != c.msg || e != c.evp {
			t.Errorf("ParseID(%q) = %v, %v, %v; want %v, %v", c.in, m, e, err, c.msg, c.evp)
		}
	}
}

func TestIDText(t *testing.T) {
	type rec struct {
		M MsgID `json:"m"`
		E EvpID `json:"e"`
	}
	b, err := json.Marshal(rec{M: 1, E: 0x0000000100000002})
	if err != nil || string(b) != `{"m":"00000001","e":"0000000100000002"}` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	var r rec
	if err := json.Unmarshal([]byte(`{"m":"00000000","e":"0000000100000002"}`), &r); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Unmarshal of a zero ID: %v", err)
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"deadbeef", "deadbeef00000001", "", "zz", "../../etc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, e, err := ParseID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseID(%q): error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if m == 0 || (len(s) == 16 && (e.Valid() != nil || e.MsgID() != m)) {
			t.Fatalf("ParseID(%q) = %v, %v", s, m, e)
		}
	})
}
