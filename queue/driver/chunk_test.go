package driver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"testing/iotest"
)

func TestReadChunk(t *testing.T) {
	for _, c := range []struct {
		name       string
		size, max  int64
		hint       int64
		wantLen    int
		wantLast   bool
		wantCapMax int
	}{
		{"small, no hint", 4096, 8 << 20, -1, 4096, true, 64 << 10},
		{"small, hint", 4096, 8 << 20, 4096, 4096, true, 4097},
		{"empty", 0, 8 << 20, -1, 0, true, 64 << 10},
		{"exactly max", 1 << 20, 1 << 20, -1, 1 << 20, false, 1 << 20},
		{"over max", 3 << 20, 1 << 20, -1, 1 << 20, false, 1 << 20},
		{"short hint", 300 << 10, 8 << 20, 10, 300 << 10, true, 8 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := bytes.Repeat([]byte("z"), int(c.size))
			chunk, last, err := ReadChunk(iotest.HalfReader(bytes.NewReader(data)), nil, c.max, c.hint)
			if err != nil || len(chunk) != c.wantLen || last != c.wantLast || cap(chunk) > c.wantCapMax {
				t.Fatalf("ReadChunk = %d bytes (cap %d), last %v, %v; want %d bytes, last %v, cap <= %d", len(chunk), cap(chunk), last, err, c.wantLen, c.wantLast, c.wantCapMax)
			}
		})
	}
	if _, _, err := ReadChunk(iotest.ErrReader(io.ErrClosedPipe), nil, 10, -1); err != io.ErrClosedPipe {
		t.Fatalf("a failing reader: %v", err)
	}
}

// countingReader counts the bytes read from r, and fails with err once r
// is exhausted when err is set.
type countingReader struct {
	r   io.Reader
	n   atomic.Int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if err == io.EOF && c.err != nil {
		err = c.err
	}
	return n, err
}

func TestUploadParts(t *testing.T) {
	const ps = 10
	errRead := errors.New("read failed")
	errUpload := errors.New("upload failed")
	for _, c := range []struct {
		name     string
		size     int   // bytes after the first part, which is full
		readErr  error // the error r ends with instead of EOF
		failPart int   // the part whose upload fails, if any
		// block makes upload of part 1 wait for its ctx to be cancelled.
		block     bool
		wantParts []int // lengths of the parts uploaded successfully
		wantErr   error
		maxRead   int // the most bytes r may have given, when not all of it
	}{
		{name: "first part only, empty tail", size: 0, wantParts: []int{ps}},
		{name: "last part full, then EOF", size: 2 * ps, wantParts: []int{ps, ps, ps}},
		{name: "short last part", size: ps + 3, wantParts: []int{ps, ps, 3}},
		{name: "one byte over", size: 1, wantParts: []int{ps, 1}},
		{name: "many parts", size: 7*ps + 5, wantParts: []int{ps, ps, ps, ps, ps, ps, ps, ps, 5}},
		{name: "reader error mid-way", size: ps + 4, readErr: errRead, wantParts: []int{ps, ps}, wantErr: errRead},
		{name: "reader error cancels the upload in flight", size: 4, readErr: errRead, block: true, wantErr: errRead},
		{name: "upload error stops reading", size: 9 * ps, failPart: 2, wantParts: []int{ps}, wantErr: errUpload, maxRead: 2 * ps},
		{name: "first upload fails", size: 9 * ps, failPart: 1, wantErr: errUpload, maxRead: ps},
	} {
		t.Run(c.name, func(t *testing.T) {
			total := ps + c.size
			data := make([]byte, total)
			for i := range data {
				data[i] = byte(i)
			}
			first := bytes.Clone(data[:ps])
			r := &countingReader{r: iotest.HalfReader(bytes.NewReader(data[ps:])), err: c.readErr}
			var (
				inFlight atomic.Int32
				got      []int // lengths; no lock: calls do not overlap
				off      int
				nextN    = 1
			)
			err := UploadParts(t.Context(), r, first, ps, func(ctx context.Context, n int, p []byte) error {
				if k := inFlight.Add(1); k > 1 {
					t.Errorf("part %d: %d uploads in flight at once, want at most 1", n, k)
				}
				defer inFlight.Add(-1)
				if n != nextN {
					t.Errorf("part %d, want %d", n, nextN)
				}
				nextN++
				if c.block && n == 1 {
					<-ctx.Done()
					return ctx.Err()
				}
				// Let the reader run, then check the part was not overwritten.
				runtime.Gosched()
				if !bytes.Equal(p, data[off:off+len(p)]) {
					t.Errorf("part %d: wrong content", n)
				}
				if n == c.failPart {
					return errUpload
				}
				off += len(p)
				got = append(got, len(p))
				return nil
			})
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("UploadParts = %v, want %v", err, c.wantErr)
			}
			if !slices.Equal(got, c.wantParts) {
				t.Errorf("parts uploaded %v, want %v", got, c.wantParts)
			}
			if c.maxRead > 0 && r.n.Load() > int64(c.maxRead) {
				t.Errorf("read %d bytes after the failure, want at most %d", r.n.Load(), c.maxRead)
			}
		})
	}
}
