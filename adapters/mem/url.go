package mem

import (
	"context"
	"net/url"
	"strings"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Scheme is the URL scheme that mem registers with queue.DefaultURLMux.
const Scheme = "mem"

func init() { queue.DefaultURLMux().Register(Scheme, new(URLOpener)) }

// URLOpener opens mem URLs: mem://name shares the storage called name with
// every other mem://name Store of the process. No query parameters are
// accepted.
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
	name := u.Host + strings.TrimSuffix(u.Path, "/")
	return Open(ctx, name, opts)
}
