package queue

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/mxqueue/mxq/queue/driver"
)

// The sentinel errors. Every error returned by a *Store that is not a
// context error or io.EOF wraps exactly one of them; check with errors.Is.
// Their meanings never change.
var (
	// ErrNotFound: the message, envelope or object does not exist, or is not
	// visible because its message was never committed.
	ErrNotFound = errors.New("not found")
	// ErrExists: a create-only write lost because the key already exists.
	ErrExists = errors.New("already exists")
	// ErrConflict: a compare-and-swap found another version than expected.
	ErrConflict = errors.New("version conflict")
	// ErrCorrupt: stored data does not parse or fails its checksum.
	ErrCorrupt = errors.New("corrupt")
	// ErrInvalid: the caller passed a bad argument (ID, URL, size). It is
	// driver.ErrInvalid, which the adapters' helpers return.
	ErrInvalid = driver.ErrInvalid
	// ErrClosed: the Store, or the transaction, was already closed.
	ErrClosed = errors.New("closed")
	// ErrUnsupported: the backend cannot do what was asked.
	ErrUnsupported = errors.New("unsupported")
	// ErrUnavailable: the store could not be reached or answered with a
	// transient failure. Retrying later may succeed.
	ErrUnavailable = errors.New("store unavailable")
	// ErrLeaseLost: the caller's lease on an envelope expired and another
	// node took it over; the caller must stop working on the envelope.
	ErrLeaseLost = errors.New("lease lost")
)

// sentinel returns the sentinel that the Store reports for c, or nil.
func sentinel(c driver.Code) error {
	switch c {
	case driver.CodeNotFound:
		return ErrNotFound
	case driver.CodePrecondition:
		return ErrConflict
	case driver.CodeInvalid:
		return ErrInvalid
	case driver.CodeUnsupported:
		return ErrUnsupported
	case driver.CodeUnavailable:
		return ErrUnavailable
	case driver.CodeCorrupt:
		return ErrCorrupt
	}
	return nil
}

// Error is the error type the Store returns. It carries the operation and
// the ID or key it failed on, and unwraps to both the sentinel and the
// store's own error, so errors.Is and errors.As both work.
type Error struct {
	Op   string // the Store operation, such as "load" or "commit"
	ID   string // the message or envelope ID, or the key, if any
	Kind error  // the sentinel, or nil when the error is not classified
	Err  error  // the underlying error, if any
}

// Error implements error.
func (e *Error) Error() string {
	s := "mxq: " + e.Op
	if e.ID != "" {
		s += " " + e.ID
	}
	if e.Kind != nil {
		s += ": " + e.Kind.Error()
	}
	if e.Err != nil && e.Err != e.Kind {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the sentinel and the underlying error.
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil && e.Err != e.Kind {
		errs = append(errs, e.Err)
	}
	return errs
}

// wrap classifies err once. Context errors and io.EOF pass through
// unwrapped; errors already wrapped by the Store are returned as they are.
// A CodePrecondition is reported as pre (ErrExists or ErrConflict).
func (s *Store) wrap(op, id string, err error, pre error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || err == io.EOF {
		return err
	}
	var qe *Error
	if errors.As(err, &qe) {
		return err
	}
	for _, k := range []error{ErrNotFound, ErrExists, ErrConflict, ErrCorrupt, ErrInvalid, ErrClosed, ErrUnsupported, ErrUnavailable, ErrLeaseLost} {
		if errors.Is(err, k) {
			return &Error{Op: op, ID: id, Kind: k, Err: err}
		}
	}
	code := s.b.ErrorCode(err)
	kind := sentinel(code)
	if code == driver.CodePrecondition && pre != nil {
		kind = pre
	}
	return &Error{Op: op, ID: id, Kind: kind, Err: err}
}

func errorf(op, id string, kind error, format string, args ...any) error {
	return &Error{Op: op, ID: id, Kind: kind, Err: fmt.Errorf(format, args...)}
}
