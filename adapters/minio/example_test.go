package minio_test

import (
	"context"
	"fmt"
	"log"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	mxqminio "github.com/mxqueue/mxq/adapters/minio"
	"github.com/mxqueue/mxq/queue"
)

// Opening a queue by URL does no I/O; Ping checks the bucket and the
// credentials, which come from the environment.
func Example_url() {
	ctx := context.Background()
	_, err := queue.Open(ctx, "minio://127.0.0.1:9000/spool/mx1/?secure=false&endpoint=x")
	fmt.Println(err)
	// Output:
	// mxq: open minio://127.0.0.1:9000/spool/mx1/?secure=false&endpoint=x: invalid argument: invalid query parameter "endpoint"; valid: secure, region
}

// Open takes a client configured by the application.
func ExampleOpen() {
	ctx := context.Background()
	client, err := minio.New("127.0.0.1:9000", &minio.Options{
		Creds:  credentials.NewEnvMinio(),
		Secure: false,
	})
	if err != nil {
		log.Fatal(err)
	}
	st, err := mxqminio.Open(ctx, client, "spool", &mxqminio.Options{Prefix: "mx1/"})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	if err := st.Ping(ctx); err != nil {
		log.Fatal(err)
	}
}
