package file

import (
	"context"
	"errors"
	"net/url"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Scheme is the URL scheme that file registers with queue.DefaultURLMux.
const Scheme = "file"

func init() { queue.DefaultURLMux().Register(Scheme, new(URLOpener)) }

// URLOpener opens file URLs: file:///abs/path names the queue directory.
// The host must be empty or "localhost"; no query parameters are accepted.
type URLOpener struct{}

// OpenStoreURL implements queue.URLOpener.
func (o *URLOpener) OpenStoreURL(ctx context.Context, u *url.URL, qopts *queue.Options) (*queue.Store, error) {
	opts := new(Options)
	if qopts != nil {
		opts.Queue = *qopts
	}
	if _, err := driver.URLParams(u); err != nil {
		return nil, err
	}
	if u.Host != "" && u.Host != "localhost" {
		return nil, &queue.Error{Op: "open", ID: u.Redacted(), Kind: queue.ErrInvalid, Err: errors.New("file URLs name a local directory: use file:///abs/path")}
	}
	if u.Path == "" || u.Opaque != "" {
		return nil, &queue.Error{Op: "open", ID: u.Redacted(), Kind: queue.ErrInvalid, Err: errors.New("want file:///abs/path")}
	}
	return Open(ctx, u.Path, opts)
}
