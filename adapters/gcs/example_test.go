package gcs_test

import (
	"context"
	"fmt"
	"log"

	"cloud.google.com/go/storage"

	"github.com/mxqueue/mxq/adapters/gcs"
	"github.com/mxqueue/mxq/queue"
)

// Open a queue by URL. With STORAGE_EMULATOR_HOST set, the client talks
// to the emulator; otherwise it uses Application Default Credentials.
func Example_openURL() {
	ctx := context.Background()
	st, err := queue.Open(ctx, "gs://spool-bucket/mx1")
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
	client, err := storage.NewClient(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	st, err := gcs.Open(ctx, client, "spool-bucket", &gcs.Options{Prefix: "mx1/"})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	fmt.Println("node", st.Node() != "")
}
