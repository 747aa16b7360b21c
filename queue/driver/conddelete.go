package driver

import (
	"context"
	"errors"
)

// ConditionalDeleter is an optional Backend capability: a delete that
// removes an object only if it is still the version that was read. The
// Store uses it for the fenced delete of a lease holder, which otherwise
// takes two requests: a compare-and-swap that marks the envelope gone,
// then the delete. A Backend implements it only if its store honours the
// condition: several S3 implementations ignore a conditional DELETE, and
// a capability that deletes anyway would let a holder that lost its
// lease delete an envelope that another node holds.
type ConditionalDeleter interface {
	// DeleteIfMatch removes the object at key if its version is v. If
	// the object has another version, it returns an error that ErrorCode
	// maps to CodePrecondition; if there is none, one that it maps to
	// CodeNotFound; either way it removes nothing. Of concurrent writes
	// and deletes conditioned on v, at most one succeeds.
	DeleteIfMatch(ctx context.Context, key string, v Version) error
}

// DeleteIfMatch calls b's DeleteIfMatch if b is a ConditionalDeleter. If
// it is not, it makes no request and returns an error for which
// errors.Is(err, errors.ErrUnsupported) holds. Wrappers of a Backend
// implement ConditionalDeleter with it, so that the capability shows
// through them exactly when the wrapped Backend has it.
func DeleteIfMatch(ctx context.Context, b Backend, key string, v Version) error {
	if cd, ok := b.(ConditionalDeleter); ok {
		return cd.DeleteIfMatch(ctx, key, v)
	}
	return errors.ErrUnsupported
}
