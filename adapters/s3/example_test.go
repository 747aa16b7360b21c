package s3_test

import (
	"context"
	"fmt"
	"log"

	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/mxqueue/mxq/adapters/s3"
	"github.com/mxqueue/mxq/queue"
)

// Opening a queue by URL does no I/O; Ping checks the bucket and the
// credentials.
func Example_url() {
	ctx := context.Background()
	st, err := queue.Open(ctx, "s3://spool-bucket/mx1/?region=eu-west-1")
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	fmt.Println("opened")

	_, err = queue.Open(ctx, "s3://spool-bucket/mx1/?regoin=eu-west-1")
	fmt.Println(err)
	// Output:
	// opened
	// mxq: open s3://spool-bucket/mx1/?regoin=eu-west-1: invalid argument: invalid query parameter "regoin"; valid: region, endpoint, use_path_style, disable_https, profile
}

// Open takes a client configured by the application.
func ExampleOpen() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion("eu-west-1"))
	if err != nil {
		log.Fatal(err)
	}
	client := awss3.NewFromConfig(cfg)
	st, err := s3.Open(ctx, client, "spool-bucket", &s3.Options{Prefix: "mx1/"})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	if err := st.Ping(ctx); err != nil {
		log.Fatal(err)
	}
}
