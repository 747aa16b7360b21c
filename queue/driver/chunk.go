package driver

import (
	"context"
	"io"
)

// ReadFull reads from r until buf is full, returning nil, or until r
// ends, returning io.EOF with the bytes read so far. Unlike io.ReadFull it
// tells the two apart from a reader that fails with io.ErrUnexpectedEOF
// itself, as broken network bodies do: that error is returned as it is,
// so a stream cut short is never taken for a whole one.
func ReadFull(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, io.EOF
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ReadChunk reads r into buf, reusing its memory, until the chunk holds
// max bytes or r ends; last reports that r ended. The buffer grows as data
// arrives, from 64 KiB or sizeHint+1 (when sizeHint is not negative), so a
// small object costs a small buffer however large max is. Adapters use it
// to choose between a single-request upload and a multipart one, and to
// cut the parts of the latter.
func ReadChunk(r io.Reader, buf []byte, max, sizeHint int64) (chunk []byte, last bool, err error) {
	want := min(max, 64<<10)
	if sizeHint >= 0 && sizeHint < max {
		want = sizeHint + 1
	}
	want = min(want, max)
	n := 0
	for {
		if int64(cap(buf)) < want {
			nb := make([]byte, want)
			copy(nb, buf[:n])
			buf = nb
		}
		buf = buf[:want]
		m, err := ReadFull(r, buf[n:])
		n += m
		switch {
		case err == io.EOF:
			return buf[:n], true, nil
		case err != nil:
			return nil, false, err
		case want >= max:
			return buf, false, nil
		}
		want = min(2*want, max)
	}
}

// UploadParts reads the rest of r in parts of up to partSize bytes with
// ReadChunk and calls upload for each part, numbered from 1: first, the
// part already read, then the parts of r, until r ends. An empty tail
// makes no part, so a first part that held all of r is the only one.
//
// Each upload runs in its own goroutine while the next part is read, and
// at most one is in flight: the calls do not overlap, and each returns
// before the next starts and before UploadParts returns, so upload may
// append to a slice without a lock. UploadParts thus holds two buffers at
// most, the part in flight and the one being read; upload must not keep
// data after it returns.
//
// UploadParts returns the first error: of reading r, or of upload. It then
// cancels the ctx passed to upload, waits for the upload in flight and
// reads and uploads no more. A read error is reported before an upload
// error met meanwhile. r is not interrupted when ctx is done.
func UploadParts(ctx context.Context, r io.Reader, first []byte, partSize int64, upload func(ctx context.Context, n int, data []byte) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	bufs := [2][]byte{first, nil}
	cur, data, last := 0, first, false
	for n := 1; ; n++ {
		done := make(chan error, 1)
		go func(data []byte) { done <- upload(ctx, n, data) }(data)
		var next []byte
		var err error
		if !last {
			// Read into the buffer that is not in flight.
			next, last, err = ReadChunk(r, bufs[1-cur], partSize, -1)
			if err != nil {
				cancel()
			}
		}
		if uerr := <-done; err == nil {
			err = uerr
		}
		if err != nil || len(next) == 0 {
			return err
		}
		cur = 1 - cur
		bufs[cur], data = next, next
	}
}
