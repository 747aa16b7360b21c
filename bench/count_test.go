package bench_test

import (
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue/driver"
)

// TestCountThroughPrefix: a Counter over a driver.Prefixed backend counts
// the requests the store underneath makes: a batch of deletes is one
// request over a store with multi-object deletes and one per key over a
// store without, and a conditional delete is a request only where the
// store has one.
func TestCountThroughPrefix(t *testing.T) {
	ctx := t.Context()
	raw := mem.OpenBackend("")
	for _, tc := range []struct {
		name       string
		b          driver.Backend
		dels, cond int64
	}{
		{"with the capabilities", raw, 1, 1},
		{"without them", struct{ driver.Backend }{raw}, 3, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := bench.Count(driver.Prefixed(tc.b, "p"))
			b := c.Backend()
			if err := driver.DeleteMulti(ctx, b, []string{"a", "b", "c"}); err != nil {
				t.Fatal(err)
			}
			if got := c.Counts().Delete; got != tc.dels {
				t.Errorf("a batch of 3 deletes counted as %d requests, want %d", got, tc.dels)
			}
			base := c.Counts()
			driver.DeleteIfMatch(ctx, b, "a", "1")
			if got := c.Counts().Sub(base).Delete; got != tc.cond {
				t.Errorf("a conditional delete counted as %d requests, want %d", got, tc.cond)
			}
		})
	}
}
