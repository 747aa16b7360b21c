package driver

import (
	"context"
	"io"
)

// ContextReader returns a reader that reads from r until ctx is done, and
// then fails with ctx's error. It lets a copy that has no context of its
// own, such as io.Copy into a file, stop when the request is cancelled.
func ContextReader(ctx context.Context, r io.Reader) io.Reader {
	return &ctxReader{ctx: ctx, r: r}
}

// ctxReader is the reader ContextReader returns.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
