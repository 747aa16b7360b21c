package driver

// Code classifies a backend's raw error. Adapters map their service's
// errors onto codes in Backend.ErrorCode; the Store turns codes into
// the sentinel errors of package queue.
type Code int

// The codes a Backend's ErrorCode may return.
const (
	// CodeUnknown is for errors the adapter does not recognise. They are
	// reported as they are, wrapped without a sentinel.
	CodeUnknown Code = iota
	// CodeNotFound: the key does not exist.
	CodeNotFound
	// CodePrecondition: a conditional write (PutOptions.IfNoneMatch or
	// IfMatch) was refused. The Store maps it to queue.ErrExists or
	// queue.ErrConflict.
	CodePrecondition
	// CodeInvalid: the service rejected the request as malformed.
	CodeInvalid
	// CodeUnsupported: the service does not implement the request.
	CodeUnsupported
	// CodeUnavailable: a transient failure (network, throttling, 5xx).
	CodeUnavailable
	// CodeCorrupt: the service returned data that does not parse.
	CodeCorrupt
)
