package driver

import "context"

// MaxMultiDelete is the most keys the Store passes to one
// MultiDeleter.DeleteMulti: the limit of S3's DeleteObjects.
const MaxMultiDelete = 1000

// MultiDeleter is an optional Backend capability: the removal of many
// objects with one request, such as S3's DeleteObjects. The Store uses it
// for the clean-up that follows deliveries (pointers, and the content of
// messages whose last envelope went), which it gathers and sends in
// batches. Without it, the Store deletes each key on its own.
type MultiDeleter interface {
	// DeleteMulti removes the objects at keys, between 1 and
	// MaxMultiDelete of them; missing keys are not an error. It is not
	// atomic: on failure, any of the objects may be gone. Like Delete,
	// it is unconditional.
	DeleteMulti(ctx context.Context, keys []string) error
}

// DeleteMulti removes the objects at keys from b: with one request per
// MaxMultiDelete keys if b is a MultiDeleter, otherwise one Delete per
// key, in order. It stops at the first error.
func DeleteMulti(ctx context.Context, b Backend, keys []string) error {
	md, ok := b.(MultiDeleter)
	for len(keys) > 0 {
		if !ok {
			if err := b.Delete(ctx, keys[0]); err != nil {
				return err
			}
			keys = keys[1:]
			continue
		}
		n := min(len(keys), MaxMultiDelete)
		if err := md.DeleteMulti(ctx, keys[:n]); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}
