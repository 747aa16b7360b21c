package gcs

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"cloud.google.com/go/storage"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Scheme is the URL scheme that gcs registers with queue.DefaultURLMux.
const Scheme = "gs"

func init() { queue.DefaultURLMux().Register(Scheme, new(URLOpener)) }

// URLOpener opens gs URLs: gs://bucket/prefix is the queue under prefix
// in bucket. No query parameters are accepted.
//
// If Client is nil, the opener creates one client on its first use, with
// Application Default Credentials or, when STORAGE_EMULATOR_HOST is set,
// the emulator without authentication, and shares it between the Stores
// it opens; likewise an HTTP client for batches of deletes (see
// Options.Batch).
type URLOpener struct {
	// Client, if set, is used for every Store.
	Client *storage.Client
	// Batch, if set, is used for every Store's batches of deletes (see
	// Options.Batch). If both are nil, the opener creates one, with the
	// client's credentials; if only Client is set, there is none.
	Batch *http.Client

	once   sync.Once
	client *storage.Client
	batch  *http.Client
	err    error
}

// OpenStoreURL implements queue.URLOpener.
func (o *URLOpener) OpenStoreURL(ctx context.Context, u *url.URL, qopts *queue.Options) (*queue.Store, error) {
	opts := &Options{Prefix: strings.TrimPrefix(u.Path, "/")}
	if qopts != nil {
		opts.Queue = *qopts
	}
	if _, err := driver.URLParams(u); err != nil {
		return nil, err
	}
	if u.Host == "" {
		return nil, &queue.Error{Op: "open", ID: u.Redacted(), Kind: queue.ErrInvalid, Err: fmt.Errorf("gs URL needs a bucket: gs://bucket/prefix")}
	}
	c, batch := o.Client, o.Batch
	if c == nil {
		o.once.Do(func() {
			// The clients outlive this call, so they do not take ctx's
			// cancellation.
			ctx := context.WithoutCancel(ctx)
			if o.client, o.err = storage.NewClient(ctx); o.err != nil {
				return
			}
			o.batch, o.err = newBatchClient(ctx)
		})
		if o.err != nil {
			return nil, &queue.Error{Op: "open", ID: u.Redacted(), Err: fmt.Errorf("gcs: creating client: %w", o.err)}
		}
		c = o.client
		if batch == nil {
			batch = o.batch
		}
	}
	opts.Batch = batch
	return Open(ctx, c, u.Host, opts)
}
