// Package driver is the contract between package queue and the stores it
// runs on. Most code should use package queue: an MTA opens a *queue.Store
// and never sees this package. It is for authors of adapters, the packages
// under adapters/ that put the queue into one kind of storage.
//
// # Writing an adapter
//
// An adapter implements Backend: Get, Put (with the create-only and
// compare-and-swap conditions of PutOptions), Delete, List in byte order,
// ErrorCode and Close. The Store above it validates every argument, builds
// every key (see package queue/layout) and wraps every error exactly once, so an
// adapter returns its service's raw errors and only classifies them in
// ErrorCode, mapping them onto a Code. It neither logs nor retries.
//
// Stater and Pinger are optional: a Backend that can read an object's
// attributes or check its connection cheaply implements them, and the
// Store falls back to Get when a Backend is not a Stater. So are
// MultiDeleter, for a store that removes many objects with one request
// (the Store sends the clean-up after deliveries through it, in
// batches), and ConditionalDeleter, for a store that honours a
// version condition on a delete (a lease holder's fenced delete is then
// one request). A wrapper of a Backend implements both with the helpers
// DeleteMulti and DeleteIfMatch, which fall back or report
// errors.ErrUnsupported.
//
// The helpers are for adapters too: ReadChunk, ReadFull and UploadParts
// stream content in bounded memory, ContextReader stops a copy that has no
// context of its own, and Prefixed places every key under the path of a
// URL, so that many queues share one bucket. URL openers register with
// queue.URLMux and parse their query with URLParams and ParseBool. ValidKey
// is the one rule for keys; an adapter that takes keys from elsewhere than
// the Store (the REST server) checks them with it. Errors of these helpers
// wrap ErrInvalid, which is queue.ErrInvalid. HTTPCode maps the status of
// an HTTP answer onto a Code, for ErrorCode.
//
// # Conformance
//
// An adapter is correct when it passes the suite in package conformance,
// run from its _test.go with a small Harness. adapters/mem is the reference
// adapter: the shortest complete example of this contract.
package driver
