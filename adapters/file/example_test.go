package file_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/mxqueue/mxq/adapters/file"
	"github.com/mxqueue/mxq/queue"
)

func ExampleOpen() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "mxq-example")
	defer os.RemoveAll(dir)
	st, err := file.Open(ctx, dir, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close()
	tx, _ := st.Begin(ctx)
	tx.AddEnvelope([]byte("rcpt: bob@example.org"))
	tx.WriteContent(ctx, strings.NewReader("hello"))
	fmt.Println(tx.Commit(ctx))
	n := 0
	for _, err := range st.Walk(ctx) {
		if err == nil {
			n++
		}
	}
	fmt.Println(n, "envelope")
	// Output:
	// <nil>
	// 1 envelope
}

func ExampleOpen_notADirectory() {
	f, _ := os.CreateTemp("", "mxq-example")
	defer os.Remove(f.Name())
	f.Close()
	_, err := queue.Open(context.Background(), "file://"+f.Name())
	fmt.Println(errors.Is(err, queue.ErrInvalid))
	// Output: true
}
