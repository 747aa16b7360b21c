// Package queue puts a mail transfer agent's queue into a cloud store: a
// *Store holds messages (content plus envelopes) in any storage that an
// adapter reaches through the small driver.Backend interface, and any
// number of Stores in any number of processes may share one storage.
//
// An MTA opens a Store by URL and uses only this package:
//
//	st, err := queue.Open(ctx, "s3://spool?prefix=mx1/") // with adapters/all imported
//
// # Lifecycle of a message
//
// A message is received in a transaction: Store.Begin hands out a MsgID and
// returns a *Tx; Tx.AddEnvelope adds one envelope per recipient (opaque
// data, at most Options.MaxEnvelopeSize bytes), and Tx.CommitContent
// streams the content and makes all of it visible at once, or Tx.Rollback
// abandons it. (Tx.WriteContent then Tx.Commit do the same in two calls,
// for a caller that adds envelopes after the content.) A transaction that is never ended is aborted by Store.Sweep
// after Options.Grace.
//
// Once committed, envelopes are read with Store.Load and Store.Walk, the
// content with Store.Content, and envelopes are scheduled, delivered and
// removed through a lease (see below): Store.Due lists envelopes due now,
// Store.ClaimEnvelope takes one, and Claim.Defer (temporary failure),
// Claim.Update, Claim.Release and Claim.Delete (delivered or bounced) end
// the work. When the last envelope of a message goes, its content goes
// too. A message that cannot be read is moved aside with Store.Quarantine.
//
// # The commit point
//
// A Store takes message IDs in blocks of 4,096 with one create-only write
// of a block record, and Begin hands them out from memory. Content and
// envelopes are written first; each envelope carries the block record's
// nonce. Commit is one compare-and-swap of the block record that sets the
// message's committed bit: that write is the commit point, and commits
// waiting at the same time share it. Before it, no reader sees the
// message; after it, every reader does. Sweep aborts a stale transaction
// with a compare-and-swap that sets its aborted bit, so a commit that
// races with an abort either wins or fails; it never half-succeeds. A
// transaction open longer than Options.Grace fails at its next write. An
// error from Commit is ambiguous only when the final write timed out;
// Store.Load then tells whether the message exists.
//
// A message of one envelope committed by Tx.CommitContent needs no swap
// before it is visible: its content, its envelope and its pointer are
// written in one round, and its envelope's header says so. It is committed
// once both the content and the envelope are stored, if they were stored
// within half of Options.Grace of Begin. Its committed bit follows in the
// background, in one swap with the others of the moment; a reader that
// finds the two objects before the bit sets it itself, and Sweep sets it
// rather than abort such a transaction. Clocks of the nodes must agree to
// within half of Options.Grace, as they must for leases. Tx.Prepare writes
// such an envelope ahead, while the content is still arriving, so that the
// commit writes the content alone, with the pointer beside it; an envelope added
// after it turns the first into one of several, by a rewrite that the
// content's write waits for. Messages stored by
// Store.Import, and those of queues written by earlier versions, have a
// reservation record instead, whose change from "open" to "committed" was
// their commit point; they are read by those rules.
//
// # Leases and fencing
//
// Each Store is a node (Options.Node) in one process incarnation, its
// session. Store.Heartbeat (or Store.RunNode, which also takes over from
// dead nodes) keeps a node record alive for Options.NodeTTL. The sessions
// of one node name are ordered: a process picks a session above the one
// recorded for its name, so a later process supersedes an earlier one, and
// a claim of an earlier session is no longer held.
//
// A lease lives in the envelope's own record: holder, session, a fencing
// token that grows with every claim, and an expiry. Store.Claim and
// Store.ClaimEnvelope take it with one conditional write; of concurrent
// claimers exactly one wins and the others get ErrConflict. A lease is held
// while it has not expired and its holder's session is alive. Every write
// through a *Claim is fenced by the envelope's version: once another node
// has taken the envelope over, it fails with ErrLeaseLost and changes
// nothing. Store.Takeover releases the envelopes of dead nodes, and
// Store.Owned gives a restarted node back what its earlier session held.
// The protocol, and what a takeover may assume, is described in
// docs/shared-queue.md.
//
// # Operating a queue
//
// Store.Hold and Store.ReleaseHold put an envelope on hold and take it
// off, and Store.Schedule makes one due; all three go through a claim, so
// they are safe while nodes run. Store.Stats describes a queue from
// listings of its key layout, and Store.Import commits a message under the
// IDs it has in another queue, which is how mxq migrate moves a queue
// between stores. docs/operations.md gives what each costs in requests.
//
// # Errors
//
// The Store returns *Error, which carries the operation and the ID and
// unwraps to one of a fixed set of sentinels (ErrNotFound, ErrExists,
// ErrConflict, ErrCorrupt, ErrInvalid, ErrClosed, ErrUnsupported,
// ErrUnavailable, ErrLeaseLost) and to the store's own error, so callers
// test with errors.Is and errors.As. context.Canceled and
// context.DeadlineExceeded pass through unclassified. ErrUnavailable is
// the one sentinel worth retrying as is; ErrConflict means another node
// changed the object first, and ErrLeaseLost means the caller must stop
// working on the envelope.
//
// # Encryption
//
// Options.Encryption (or the key_file, key_env, old_key_files, compress
// and require_encryption parameters of any queue URL) encrypts message
// content and envelopes before they reach the store, in 64 KiB
// authenticated segments, and may compress content with zstd first. The
// Store puts the Sealed decorator over its Backend, so every adapter gets
// it; objects name the key that sealed them, so keys rotate without a
// rewrite, and Reseal rewrites a queue under its current key. Format and
// guarantees: docs/encryption.md and package queue/seal.
//
// # Keys
//
// The Store computes every storage key itself; an MTA never sees one.
// Package queue/layout holds the key layout, in both directions, for tests
// and tools that look at a store directly. Keys consist of [a-z0-9._-] and
// "/" only, so no store needs escaping. A URL's ?prefix= is applied once, by
// driver.Prefixed.
//
// # For adapter authors
//
// The contract a store implements, driver.Backend, and the helpers for
// adapters are in package queue/driver, whose doc explains how to write an
// adapter. An adapter registers a URLOpener under its scheme with
// URLMux.Register, parses its query with driver.URLParams and
// driver.ParseBool, and runs the conformance suite (package conformance)
// from its tests.
// adapters/mem is the reference adapter.
package queue
