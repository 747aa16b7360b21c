package main

import (
	"context"
	"net/url"
	"os"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func init() { ensureBucket = makeBucket }

// makeBucket creates the bucket of a minio:// or s3:// test URL on the
// test MinIO, with the credentials from the environment.
func makeBucket(ctx context.Context, u *url.URL) error {
	host, bucket, secure := u.Host, u.Host, false
	switch u.Scheme {
	case "minio":
		bucket, _, _ = strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
		secure = u.Query().Get("secure") != "false"
	default:
		ep, err := url.Parse(u.Query().Get("endpoint"))
		if err != nil {
			return err
		}
		host, secure = ep.Host, ep.Scheme == "https"
	}
	c, err := minio.New(host, &minio.Options{
		Creds:  credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), ""),
		Secure: secure,
	})
	if err != nil {
		return err
	}
	err = c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
	switch minio.ToErrorResponse(err).Code {
	case "BucketAlreadyOwnedByYou", "BucketAlreadyExists":
		return nil
	}
	return err
}
