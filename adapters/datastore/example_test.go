package datastore_test

import (
	"context"
	"fmt"
	"log"

	"cloud.google.com/go/datastore"

	mxqdatastore "github.com/mxqueue/mxq/adapters/datastore"
	"github.com/mxqueue/mxq/queue"
)

// Open a queue by URL. With DATASTORE_EMULATOR_HOST set, the client talks
// to the emulator; otherwise it uses Application Default Credentials.
func Example_openURL() {
	ctx := context.Background()
	st, err := queue.Open(ctx, "datastore://my-project/mx1?database=queue")
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	if err := st.Ping(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("queue is ready")
}

// Open a queue with a client of your own.
func ExampleOpen() {
	ctx := context.Background()
	client, err := datastore.NewClient(ctx, "my-project")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	st, err := mxqdatastore.Open(ctx, client, &mxqdatastore.Options{Namespace: "mx1"})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	fmt.Println("node", st.Node() != "")
}
