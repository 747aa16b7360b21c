package restclient_test

import (
	"context"
	"fmt"
	"net/http/httptest"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/adapters/restclient"
	"github.com/mxqueue/mxq/rest"
)

// ExampleOpen opens a Store on an mxq server and queues a message through
// it. Here the server is in the same process, over a mem store; usually it
// is "mxq serve" on another machine.
func ExampleOpen() {
	ctx := context.Background()
	backing, _ := mem.Open(ctx, "", nil)
	defer backing.Close()
	srv := httptest.NewServer(rest.New(backing, &rest.Options{Token: "t0ken"}))
	defer srv.Close()

	st, err := restclient.Open(ctx, srv.URL, &restclient.Options{Token: "t0ken"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close()
	tx, _ := st.Begin(ctx)
	tx.AddEnvelope([]byte("rcpt: alice@example.org"))
	if err := tx.Commit(ctx); err != nil {
		fmt.Println(err)
		return
	}
	// The server's own Store sees the message.
	n := 0
	for _, err := range backing.Walk(ctx) {
		if err == nil {
			n++
		}
	}
	fmt.Println(n, "envelope queued")
	// Output: 1 envelope queued
}
