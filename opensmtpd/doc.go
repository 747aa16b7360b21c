// Package opensmtpd speaks the protocol of OpenSMTPD's external queue
// process, so that a Go program can hold smtpd's whole queue.
//
// smtpd started as "smtpd -B queue=NAME[:ARG]" runs
// /usr/libexec/opensmtpd/queue-NAME (on Debian) with argv {"queue-proc", ARG}
// as root, with fd 0 an AF_UNIX SOCK_STREAM socketpair, and blocks on every
// request until it gets the reply. Serve runs that conversation and maps
// each request onto a Handler method.
//
// # Framing
//
// Messages are imsgs: a 16-byte header in host byte order (little endian on
// every supported target) and a payload; the length counts the header and
// is at most MaxMessageSize (16384). Two header layouts exist:
//
//	smtpd <= 7.6 (Header68): u32 type | u16 len | u16 flags | u32 peerid | u32 pid
//	smtpd >= 7.7 (Header77): u32 type | u32 len            | u32 peerid | u32 pid
//
// A descriptor travels with a message as SCM_RIGHTS on the sendmsg that
// carries its first bytes; Header68 marks it with flags bit 0, Header77 with
// bit 31 of len. Without a descriptor the two layouts are the same bytes.
// peerid is always 0, and each side writes its own pid.
//
// Serve reads requests in either layout, but the layout of its own
// replies must be known before the first one that carries a descriptor
// (MESSAGE_FD_R), which after a restart with mail queued comes before
// smtpd sent any: one in the wrong layout makes smtpd >= 7.7 exit. It is
// therefore set (ServeOptions.HeaderFormat) or read from the version of
// the smtpd at the other end of the socket (IdentifyPeer), never guessed
// from traffic.
//
// # smtpd versions
//
// The queue protocol has been version 2 with the same message numbers
// since smtpd 6.4. Releases 7.5.0 to 7.9.0 cannot read a message body from
// any external queue (Smtpd.FdRBug): they close the descriptor of the
// MESSAGE_FD_R reply before they take it. The one-line fix is in this
// repository's opensmtpd/patches directory, and docs/opensmtpd.md says how
// to build a fixed smtpd.
//
// # Requests and replies
//
// smtpd sends one request and waits for one reply, always of type OK (0);
// a FAIL reply, a malformed reply, unread or missing payload bytes are all
// fatal to smtpd. "r" is a C int; 1 means success and 0 temporary failure.
//
//	type                 request payload          reply payload
//	 2 INIT              u32 version (2)          empty
//	 3 CLOSE             empty                    i32 r
//	 4 MESSAGE_CREATE    empty                    i32 r, u32 msgid if r == 1
//	 5 MESSAGE_DELETE    u32 msgid                i32 r
//	 6 MESSAGE_COMMIT    u32 msgid + body fd      i32 r
//	 7 MESSAGE_FD_R      u32 msgid                empty + body fd; no fd = failure
//	 8 ENVELOPE_CREATE   u32 msgid, blob          i32 r, u64 evpid if r == 1
//	 9 ENVELOPE_DELETE   u64 evpid                i32 r
//	10 ENVELOPE_LOAD     u64 evpid                blob; empty = not found
//	11 ENVELOPE_UPDATE   u64 evpid, blob          i32 r
//	12 ENVELOPE_WALK     empty                    i32 r, and if r > 0: u64 evpid, r-byte blob;
//	                                              r = 0 skip, r = -1 end
//
// # Failures
//
// smtpd has no timeout: a queue process that does not answer freezes the
// MTA, and one that exits takes it down. Serve therefore bounds every
// Handler call by ServeOptions.OpTimeout and answers an error, a timeout or
// a panic with the operation's failure value: r = 0, no descriptor for
// MESSAGE_FD_R, an empty blob for ENVELOPE_LOAD and the end (-1) for
// ENVELOPE_WALK. Only INIT has no failure value; its error ends Serve.
// Malformed requests end Serve with an error wrapping ErrMalformed, since
// the stream can no longer be trusted.
package opensmtpd
