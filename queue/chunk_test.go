package queue

import (
	"bytes"
	"io"
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
