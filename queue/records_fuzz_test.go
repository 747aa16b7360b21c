package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// FuzzDecodeReservation checks the parser of transaction records on
// arbitrary bytes: a record that parses has a known state and encodes to
// a record that parses to the same; any other input is ErrCorrupt.
func FuzzDecodeReservation(f *testing.F) {
	f.Add([]byte(`{"state":"open","created":"2026-01-02T03:04:05Z","changed":"2026-01-02T03:04:05Z","node":"mx1","nonce":7}`))
	f.Add([]byte(`{"state":"aborted"}`))
	f.Add([]byte(`{"state":"committed","nonce":18446744073709551615}`))
	f.Add([]byte(`{"state":"lost"}`))
	f.Add([]byte(`{"created":"not a time"}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeReservation("inc/00000001", b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		switch r.State {
		case stateOpen, stateCommitted, stateAborted:
		default:
			t.Fatalf("parsed a record with state %q", r.State)
		}
		enc := r.encode()
		r2, err := decodeReservation("inc/00000001", enc)
		if err != nil {
			t.Fatalf("the record %s, encoded again as %s, does not parse: %v", b, enc, err)
		}
		if r2.State != r.State || r2.Node != r.Node || r2.Nonce != r.Nonce || !r2.Created.Equal(r.Created) || !r2.Changed.Equal(r.Changed) {
			t.Fatalf("re-encoding changed the record: %+v, then %+v", r, r2)
		}
	})
}

// FuzzNodeRecord checks heartbeat records the way readNode parses them:
// a record that parses encodes to one that parses to the same.
func FuzzNodeRecord(f *testing.F) {
	f.Add([]byte(`{"name":"mx1","session":12,"expires":"2026-01-02T03:04:35Z","beat":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"session":-1}`))
	f.Add([]byte(`{"expires":"9999-12-31T23:59:59.999999999+14:00"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var rec nodeRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			return // readNode reports it as ErrCorrupt; FuzzStoredRecord checks that
		}
		enc, err := json.Marshal(&rec)
		if err != nil {
			// A time outside years 0 to 9999 parses but does not
			// encode; the heartbeat that replaces it is written anew.
			return
		}
		var rec2 nodeRecord
		if err := json.Unmarshal(enc, &rec2); err != nil {
			t.Fatalf("the record %s, encoded again as %s, does not parse: %v", b, enc, err)
		}
		if rec2.Name != rec.Name || rec2.Session != rec.Session || !rec2.Expires.Equal(rec.Expires) || !rec2.Beat.Equal(rec.Beat) {
			t.Fatalf("re-encoding changed the record: %+v, then %+v", rec, rec2)
		}
	})
}

// FuzzDecodeBlock checks the parser of block records on arbitrary bytes:
// a record that parses encodes to a record that parses to the same; any
// other input is ErrCorrupt.
func FuzzDecodeBlock(f *testing.F) {
	f.Add([]byte(`{"node":"mx1","nonce":7,"created":"2026-01-02T03:04:05Z","committed":"AQI=","aborted":"BA==","foreign":"gA=="}`))
	f.Add([]byte(`{"nonce":18446744073709551615}`))
	f.Add([]byte(`{"nonce":0}`))
	f.Add([]byte(`{"nonce":1,"committed":"not base64"}`))
	f.Add([]byte(`{"nonce":1,"created":"not a time"}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeBlock("blk/00001", b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if r.Nonce == 0 || len(r.Committed) > maxBitmap || len(r.Aborted) > maxBitmap || len(r.Foreign) > maxBitmap {
			t.Fatalf("parsed a record that is not valid: %+v", r)
		}
		if _, err := json.Marshal(r); err != nil {
			// A time outside years 0 to 9999 parses but does not
			// encode; no node writes one.
			return
		}
		enc := r.encode()
		r2, err := decodeBlock("blk/00001", enc)
		if err != nil {
			t.Fatalf("the record %s, encoded again as %s, does not parse: %v", b, enc, err)
		}
		if r2.Node != r.Node || r2.Nonce != r.Nonce || !r2.Created.Equal(r.Created) ||
			!bytes.Equal(r2.Committed, r.Committed) || !bytes.Equal(r2.Aborted, r.Aborted) || !bytes.Equal(r2.Foreign, r.Foreign) {
			t.Fatalf("re-encoding changed the record: %+v, then %+v", r, r2)
		}
	})
}

// FuzzDecodeGroup checks the parser of due groups on arbitrary bytes: a
// group that parses has valid entries of one block, the first the one it
// is named after, and encodes to the same bytes; any other input is
// ErrCorrupt.
func FuzzDecodeGroup(f *testing.F) {
	const first = EvpID(0xab12c00000c0ffee)
	f.Add(encodeGroup([]EvpID{first}))
	f.Add(encodeGroup([]EvpID{first, 0xab12c0010000beef, 0xab12cfff00000001}))
	f.Add(encodeGroup([]EvpID{first, 0xab12d00000000001})) // another block
	f.Add([]byte("mxq-due/1 2\nab12c00000c0ffee\n"))
	f.Add([]byte("mxq-due/1 01\nab12c00000c0ffee\n"))
	f.Add([]byte("mxq-due/1 1\nAB12C00000C0FFEE\n"))
	f.Add([]byte("mxq-due/1 0\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, err := decodeGroup("due/000000000001/gab12c00000c0ffee", first, b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if len(ids) == 0 || ids[0] != first {
			t.Fatalf("entries %v do not start with %v", ids, first)
		}
		for _, id := range ids {
			if id.Valid() != nil || id>>44 != first>>44 {
				t.Fatalf("entry %v is not a valid envelope of the block", id)
			}
		}
		if !bytes.Equal(encodeGroup(ids), b) {
			t.Fatalf("%q parses to %v, which encodes to %q", b, ids, encodeGroup(ids))
		}
	})
}
