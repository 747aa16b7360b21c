package mem_test

import (
	"context"
	"fmt"
	"strings"

	_ "github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
)

func Example() {
	ctx := context.Background()
	st, err := queue.Open(ctx, "mem://example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close()
	tx, _ := st.Begin(ctx)
	id, _ := tx.AddEnvelope([]byte("rcpt: bob@example.org"))
	tx.WriteContent(ctx, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	if err := tx.Commit(ctx); err != nil {
		fmt.Println(err)
		return
	}
	// Another Store on the same name sees the same queue.
	other, _ := queue.Open(ctx, "mem://example")
	defer other.Close()
	e, err := other.Load(ctx, id)
	fmt.Println(string(e.Data), err)
	// Output: rcpt: bob@example.org <nil>
}

func Example_badURL() {
	_, err := queue.Open(context.Background(), "mem://example?size=1")
	fmt.Println(err)
	// Output: mxq: open mem://example?size=1: invalid argument: invalid query parameter "size": this scheme takes none
}
