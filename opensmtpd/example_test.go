package opensmtpd_test

import (
	"context"
	"log"
	"net"
	"os"
	"time"

	"github.com/mxqueue/mxq/opensmtpd"
)

// A queue process started by "smtpd -B queue=NAME" finds smtpd on fd 0.
func ExampleServe() {
	var h opensmtpd.Handler // the queue implementation

	f := os.NewFile(0, "smtpd")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		log.Fatal(err)
	}
	err = opensmtpd.Serve(context.Background(), c.(*net.UnixConn), h, &opensmtpd.ServeOptions{
		OpTimeout: 10 * time.Second,
	})
	if err != nil {
		log.Fatal(err) // smtpd exits when its queue process does
	}
}
