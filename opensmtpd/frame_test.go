package opensmtpd

import (
	"bytes"
	"errors"
	"testing"
)

func TestParseHeader(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want header
		err  bool
	}{
		{name: "INIT", in: reqInit, want: header{typ: TypeInit, len: 20, pid: 0x62c0}},
		{name: "commit 6.8", in: reqCommit68, want: header{typ: TypeMessageCommit, len: 20, hasFD: true, pid: 0x62c0, format: Header68}},
		{name: "commit 7.7", in: reqCommit77, want: header{typ: TypeMessageCommit, len: 20, hasFD: true, pid: 0x62c0, format: Header77}},
		{name: "peerid kept", in: "03 00 00 00 10 00 00 00 07 00 00 00 01 00 00 00", want: header{typ: TypeClose, len: 16, peerID: 7, pid: 1}},
		{name: "max len", in: "0b 00 00 00 00 40 00 00 00 00 00 00 00 00 00 00", want: header{typ: TypeEnvelopeUpdate, len: 16384}},
		{name: "max len 7.7 fd", in: "06 00 00 00 00 40 00 80 00 00 00 00 00 00 00 00", want: header{typ: TypeMessageCommit, len: 16384, hasFD: true, format: Header77}},
		{name: "short", in: "02 00 00 00 14 00 00 00", err: true},
		{name: "len 15", in: "02 00 00 00 0f 00 00 00 00 00 00 00 00 00 00 00", err: true},
		{name: "len 16385", in: "02 00 00 00 01 40 00 00 00 00 00 00 00 00 00 00", err: true},
		{name: "len 65535 no flags", in: "02 00 00 00 ff ff 00 00 00 00 00 00 00 00 00 00", err: true},
		{name: "flags 2", in: "02 00 00 00 10 00 02 00 00 00 00 00 00 00 00 00", err: true},
		{name: "flags 0x8001", in: "02 00 00 00 10 00 01 80 00 00 00 00 00 00 00 00", err: true},
		{name: "7.7 len 0", in: "02 00 00 00 00 00 00 80 00 00 00 00 00 00 00 00", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseHeader(hx(t, tc.in))
			if tc.err {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("got %+v, %v; want ErrMalformed", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestDecodeRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want request
		err  bool
	}{
		{name: "INIT", in: reqInit, want: request{typ: TypeInit, version: 2}},
		{name: "CLOSE", in: reqClose, want: request{typ: TypeClose}},
		{name: "MESSAGE_CREATE", in: reqMessageCreate, want: request{typ: TypeMessageCreate}},
		{name: "MESSAGE_DELETE", in: "05 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83", want: request{typ: TypeMessageDelete, msgid: traceMsgID}},
		{name: "MESSAGE_COMMIT", in: reqCommit68, want: request{typ: TypeMessageCommit, msgid: traceMsgID}},
		{name: "MESSAGE_FD_R", in: reqFdR, want: request{typ: TypeMessageFdR, msgid: traceMsgID}},
		{name: "ENVELOPE_CREATE", in: "08 00 00 00 16 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83 00 01", want: request{typ: TypeEnvelopeCreate, msgid: traceMsgID, data: []byte{0, 1}}},
		{name: "ENVELOPE_CREATE empty blob", in: "08 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83", want: request{typ: TypeEnvelopeCreate, msgid: traceMsgID, data: []byte{}}},
		{name: "ENVELOPE_DELETE", in: reqEnvelopeDelete, want: request{typ: TypeEnvelopeDelete, evpid: traceEvpID}},
		{name: "ENVELOPE_LOAD", in: reqEnvelopeLoad, want: request{typ: TypeEnvelopeLoad, evpid: traceEvpID}},
		{name: "ENVELOPE_UPDATE", in: "0b 00 00 00 19 00 00 00 00 00 00 00 c0 62 00 00 3d 6d 0e dc 5b 22 f1 83 0a", want: request{typ: TypeEnvelopeUpdate, evpid: traceEvpID, data: []byte{'\n'}}},
		{name: "ENVELOPE_WALK", in: reqWalk, want: request{typ: TypeEnvelopeWalk}},
		{name: "INIT short", in: "02 00 00 00 12 00 00 00 00 00 00 00 c0 62 00 00 02 00", err: true},
		{name: "CLOSE long", in: "03 00 00 00 11 00 00 00 00 00 00 00 c0 62 00 00 00", err: true},
		{name: "MESSAGE_CREATE long", in: "04 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 00 00 00 00", err: true},
		{name: "MESSAGE_DELETE long", in: "05 00 00 00 18 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83 00 00 00 00", err: true},
		{name: "MESSAGE_COMMIT no fd", in: "06 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83", err: true},
		{name: "MESSAGE_FD_R with fd", in: "07 00 00 00 14 00 01 00 00 00 00 00 c0 62 00 00 5b 22 f1 83", err: true},
		{name: "ENVELOPE_CREATE short", in: "08 00 00 00 12 00 00 00 00 00 00 00 c0 62 00 00 5b 22", err: true},
		{name: "ENVELOPE_DELETE short", in: "09 00 00 00 14 00 00 00 00 00 00 00 c0 62 00 00 5b 22 f1 83", err: true},
		{name: "ENVELOPE_LOAD long", in: "0a 00 00 00 19 00 00 00 00 00 00 00 c0 62 00 00 3d 6d 0e dc 5b 22 f1 83 00", err: true},
		{name: "ENVELOPE_UPDATE short", in: "0b 00 00 00 17 00 00 00 00 00 00 00 c0 62 00 00 3d 6d 0e dc 5b 22 f1", err: true},
		{name: "ENVELOPE_WALK long", in: "0c 00 00 00 11 00 00 00 00 00 00 00 c0 62 00 00 00", err: true},
		{name: "OK as request", in: "00 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00", err: true},
		{name: "type 13", in: "0d 00 00 00 10 00 00 00 00 00 00 00 c0 62 00 00", err: true},
		{name: "type 2^32-1", in: "ff ff ff ff 10 00 00 00 00 00 00 00 c0 62 00 00", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := hx(t, tc.in)
			h, err := parseHeader(b)
			if err == nil {
				if int(h.len) != len(b) {
					t.Fatalf("test frame length %d, header says %d", len(b), h.len)
				}
				var got request
				got, err = decodeRequest(h, b[HeaderSize:])
				if err == nil {
					if tc.err {
						t.Fatalf("got %+v, want error", got)
					}
					if got.typ != tc.want.typ || got.version != tc.want.version || got.msgid != tc.want.msgid ||
						got.evpid != tc.want.evpid || !bytes.Equal(got.data, tc.want.data) || (got.data == nil) != (tc.want.data == nil) {
						t.Fatalf("got %+v, want %+v", got, tc.want)
					}
					return
				}
			}
			if !tc.err || !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed: %v", err, tc.err)
			}
		})
	}
}

func TestAppendReply(t *testing.T) {
	for _, tc := range []struct {
		name   string
		format HeaderFormat
		rp     reply
		want   string
		err    bool
	}{
		{name: "INIT", rp: reply{op: TypeInit}, want: repInit},
		{name: "CLOSE", rp: reply{op: TypeClose, r: 1}, want: repOK1},
		{name: "MESSAGE_CREATE", rp: reply{op: TypeMessageCreate, r: 1, msgid: traceMsgID}, want: repMessageCreate},
		{name: "MESSAGE_CREATE fail", rp: reply{op: TypeMessageCreate, r: 0, msgid: traceMsgID}, want: repOK0},
		{name: "MESSAGE_COMMIT", rp: reply{op: TypeMessageCommit, r: 1}, want: repOK1},
		{name: "MESSAGE_FD_R 6.8", format: Header68, rp: reply{op: TypeMessageFdR, hasFD: true}, want: repFdR68},
		{name: "MESSAGE_FD_R auto", rp: reply{op: TypeMessageFdR, hasFD: true}, want: repFdR68},
		{name: "MESSAGE_FD_R 7.7", format: Header77, rp: reply{op: TypeMessageFdR, hasFD: true}, want: repFdR77},
		{name: "MESSAGE_FD_R fail", format: Header77, rp: reply{op: TypeMessageFdR}, want: repFdRFail},
		{name: "ENVELOPE_CREATE", rp: reply{op: TypeEnvelopeCreate, r: 1, evpid: traceEvpID}, want: repEnvelopeCreate},
		{name: "ENVELOPE_CREATE fail", rp: reply{op: TypeEnvelopeCreate, evpid: traceEvpID}, want: repOK0},
		{name: "ENVELOPE_LOAD", rp: reply{op: TypeEnvelopeLoad, data: []byte("ab")}, want: "00 00 00 00 12 00 00 00 00 00 00 00 c2 62 00 00 61 62"},
		{name: "ENVELOPE_WALK", rp: reply{op: TypeEnvelopeWalk, r: 1, evpid: 1, data: []byte("a")}, want: "00 00 00 00 1d 00 00 00 00 00 00 00 c2 62 00 00 01 00 00 00 01 00 00 00 00 00 00 00 61"},
		{name: "ENVELOPE_WALK end", rp: reply{op: TypeEnvelopeWalk, r: -1}, want: repWalkEnd},
		{name: "ENVELOPE_WALK len mismatch", rp: reply{op: TypeEnvelopeWalk, r: 2, data: []byte("a")}, err: true},
		{name: "ENVELOPE_WALK r=-2", rp: reply{op: TypeEnvelopeWalk, r: -2}, err: true},
		{name: "ENVELOPE_LOAD too big", rp: reply{op: TypeEnvelopeLoad, data: make([]byte, MaxLoadSize+1)}, err: true},
		{name: "fd on CLOSE", rp: reply{op: TypeClose, r: 1, hasFD: true}, err: true},
		{name: "reply to FAIL", rp: reply{op: TypeFail}, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := appendReply(nil, tc.format, 0x62c2, tc.rp)
			if tc.err {
				if err == nil {
					t.Fatalf("got % x, want error", got)
				}
				return
			}
			if err != nil || !bytes.Equal(got, hx(t, tc.want)) {
				t.Fatalf("got % x, %v\nwant %s", got, err, tc.want)
			}
		})
	}
}

func TestTypeString(t *testing.T) {
	if s := TypeEnvelopeWalk.String(); s != "ENVELOPE_WALK" {
		t.Fatal(s)
	}
	if s := Type(99).String(); s != "Type(99)" {
		t.Fatal(s)
	}
}
