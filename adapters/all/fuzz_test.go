package all_test

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"cloud.google.com/go/datastore"
	"cloud.google.com/go/storage"
	"google.golang.org/api/option"

	ds "github.com/mxqueue/mxq/adapters/datastore"
	"github.com/mxqueue/mxq/adapters/file"
	"github.com/mxqueue/mxq/adapters/gcs"
	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/adapters/minio"
	"github.com/mxqueue/mxq/adapters/restclient"
	"github.com/mxqueue/mxq/adapters/s3"
	"github.com/mxqueue/mxq/queue"
)

// underDir is the file opener with every path moved under a directory of
// the test, so that no input creates directories elsewhere.
type underDir struct {
	dir func() string
	o   *file.URLOpener
}

func (d underDir) OpenStoreURL(ctx context.Context, u *url.URL, opts *queue.Options) (*queue.Store, error) {
	if strings.HasPrefix(u.Path, "/") {
		if strings.Contains(u.Path, "..") {
			return nil, &queue.Error{Op: "open", Kind: queue.ErrInvalid, Err: errors.New("fuzz: a path with .. is not tried")}
		}
		v := *u
		v.Path = filepath.Join(d.dir(), u.Path)
		u = &v
	}
	return d.o.OpenStoreURL(ctx, u, opts)
}

// FuzzOpenURL opens arbitrary queue URLs through a URLMux that has every
// adapter's opener. Opening does no I/O with the store, so none is
// needed. A URL that opens opens again from its canonical form; one that
// does not gives an error wrapping queue.ErrInvalid; and no error shows
// the password of a URL.
func FuzzOpenURL(f *testing.F) {
	f.Setenv("MINIO_ROOT_USER", "fuzz-user")
	f.Setenv("MINIO_ROOT_PASSWORD", "fuzz-password")
	f.Setenv("AWS_ACCESS_KEY_ID", "fuzz-user")
	f.Setenv("AWS_SECRET_ACCESS_KEY", "fuzz-password")
	f.Setenv("AWS_CONFIG_FILE", filepath.Join(f.TempDir(), "none"))
	f.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(f.TempDir(), "none"))
	f.Setenv("AWS_REGION", "")
	f.Setenv("AWS_PROFILE", "")
	f.Setenv("DATASTORE_EMULATOR_HOST", "127.0.0.1:1")
	ctx := f.Context()
	gc, err := storage.NewClient(ctx, option.WithoutAuthentication(), option.WithEndpoint("http://127.0.0.1:1/storage/v1/"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { gc.Close() })
	dc, err := datastore.NewClient(ctx, "fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { dc.Close() })

	var dir string
	mux := new(queue.URLMux)
	mux.Register(mem.Scheme, new(mem.URLOpener))
	mux.Register(file.Scheme, underDir{dir: func() string { return dir }, o: new(file.URLOpener)})
	mux.Register(s3.Scheme, new(s3.URLOpener))
	mux.Register(minio.Scheme, new(minio.URLOpener))
	mux.Register(gcs.Scheme, &gcs.URLOpener{Client: gc})
	mux.Register(ds.Scheme, &ds.URLOpener{Client: dc})
	mux.Register(restclient.Scheme, &restclient.URLOpener{Token: "t"})
	mux.Register(restclient.SchemeHTTPS, &restclient.URLOpener{Token: "t"})

	for _, s := range []string{
		"mem://", "mem://q", "mem://q/sub?x=1",
		"file:///var/spool/mxq", "file://localhost/q", "file://host/q", "file:q", "file:///q?a=b",
		"s3://bucket/prefix/?region=eu-west-1",
		"s3://bucket?endpoint=http://127.0.0.1:9000&use_path_style=true&disable_https=true",
		"s3://bucket?endpoint=https://u:secretpw@h", "s3://u:secretpw@bucket", "s3://bucket?use_path_style=maybe",
		"s3://bucket?endpoint=ftp://x", "s3://?region=x", "s3://b?profile=nosuchprofile&region=x",
		"minio://127.0.0.1:9000/bucket/prefix?secure=false", "minio://h/b?region=x", "minio://h/",
		"minio://h/Bad_Bucket", "minio://u:secretpw@h/b", "minio://h/b?secure=2",
		"gs://bucket/prefix", "gs:///x", "gs://b?x=1",
		"datastore://project/ns", "datastore://p/__x__", "datastore://p/ns?database=db", "datastore://p/a/b",
		"http://127.0.0.1:8025", "https://mxq.example.net/queue/", "http://u:secretpw@h", "http://h#frag", "http://h?x=1", "http:opaque",
		"", "nope://x", "://", "%zz", "S3://Bucket", "mem://u:pw@q", "file://u@/q", "gs://u@b", "datastore://u:p@proj/ns",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		dir = t.TempDir()
		st, err := mux.Open(ctx, s)
		if err != nil {
			if !errors.Is(err, queue.ErrInvalid) {
				t.Fatalf("Open(%q): %v, want an error wrapping ErrInvalid", s, err)
			}
			if u, perr := url.Parse(s); perr == nil && u.User != nil {
				if pw, ok := u.User.Password(); ok && len(pw) >= 6 && strings.Contains(err.Error(), pw) &&
					!strings.Contains(strings.Replace(s, pw, "", 1), pw) {
					t.Fatalf("Open(%q): the error shows the password: %v", s, err)
				}
			}
			return
		}
		st.Close()
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("Open(%q) succeeded, but it does not parse as a URL: %v", s, err)
		}
		if u.User != nil {
			t.Fatalf("Open(%q) accepted credentials in the URL", s)
		}
		st, err = mux.Open(ctx, u.String())
		if err != nil {
			t.Fatalf("Open(%q) succeeded, but its canonical form %q does not: %v", s, u.String(), err)
		}
		st.Close()
	})
}
