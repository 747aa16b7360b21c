package queue_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
)

// memNodes returns a function that opens a Store as a node of its own on
// the mem storage named after the test, closed when the test ends.
func memNodes(t *testing.T) func(node string) *queue.Store {
	name := fmt.Sprintf("nodes-%s-%d", t.Name(), time.Now().UnixNano())
	return func(node string) *queue.Store {
		t.Helper()
		s, err := queue.New(mem.OpenBackend(name), &queue.Options{Node: node})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}
