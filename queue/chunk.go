package queue

import "io"

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
		m, err := io.ReadFull(r, buf[n:])
		n += m
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return buf[:n], true, nil
		case err != nil:
			return nil, false, err
		case want >= max:
			return buf, false, nil
		}
		want = min(2*want, max)
	}
}
