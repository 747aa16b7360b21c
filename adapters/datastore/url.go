package datastore

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"cloud.google.com/go/datastore"
	"google.golang.org/api/option"
	"google.golang.org/grpc"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// clientOptions are the options of the clients that URLOpener creates.
// The SDK's gRPC service config waits for a connection until the request's
// deadline ("waitForReady"), so that a dead endpoint only ever reports
// "context deadline exceeded". This one is the SDK's config without it: a
// request fails fast with the reason (connection refused, name not found),
// and the same retry policy retries it.
var clientOptions = []option.ClientOption{
	option.WithGRPCDialOption(grpc.WithDefaultServiceConfig(serviceConfig)),
}

const serviceConfig = `{
  "methodConfig": [
    {
      "name": [{"service": "google.datastore.v1.Datastore"}],
      "timeout": "60s",
      "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.100s",
        "maxBackoff": "60s",
        "backoffMultiplier": 1.3,
        "retryableStatusCodes": ["UNAVAILABLE"]
      }
    },
    {
      "name": [
        {"service": "google.datastore.v1.Datastore", "method": "Lookup"},
        {"service": "google.datastore.v1.Datastore", "method": "RunQuery"},
        {"service": "google.datastore.v1.Datastore", "method": "RunAggregationQuery"},
        {"service": "google.datastore.v1.Datastore", "method": "ReserveIds"}
      ],
      "timeout": "60s",
      "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.100s",
        "maxBackoff": "60s",
        "backoffMultiplier": 1.3,
        "retryableStatusCodes": ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "RESOURCE_EXHAUSTED"]
      }
    }
  ]
}`

// Scheme is the URL scheme that datastore registers with
// queue.DefaultURLMux.
const Scheme = "datastore"

func init() { queue.DefaultURLMux().Register(Scheme, new(URLOpener)) }

// URLOpener opens datastore URLs: datastore://project/namespace is the
// queue in namespace of project. The query parameter is:
//
//	database   the Firestore in Datastore mode database; default: the
//	           default database
//
// Unknown parameters are rejected.
//
// If Client is nil, the opener creates a client per project and database
// on first use, with Application Default Credentials or, when
// DATASTORE_EMULATOR_HOST is set, the emulator without authentication,
// and shares it between the Stores it opens.
type URLOpener struct {
	// Client, if set, is used for every Store, whatever the URL's project
	// and database.
	Client *datastore.Client

	mu      sync.Mutex
	clients map[[2]string]*datastore.Client
}

// OpenStoreURL implements queue.URLOpener.
func (o *URLOpener) OpenStoreURL(ctx context.Context, u *url.URL, qopts *queue.Options) (*queue.Store, error) {
	p, err := driver.URLParams(u, "database")
	if err != nil {
		return nil, err
	}
	ns := strings.Trim(u.Path, "/")
	if err := validNamespace(ns); err != nil {
		return nil, &queue.Error{Op: "open", ID: u.Redacted(), Kind: queue.ErrInvalid, Err: err}
	}
	c := o.Client
	if c == nil {
		if c, err = o.client(ctx, u.Host, p["database"]); err != nil {
			return nil, &queue.Error{Op: "open", ID: u.Redacted(), Err: fmt.Errorf("datastore: creating client: %w", err)}
		}
	}
	opts := &Options{Namespace: ns}
	if qopts != nil {
		opts.Queue = *qopts
	}
	return Open(ctx, c, opts)
}

func (o *URLOpener) client(ctx context.Context, project, database string) (*datastore.Client, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := [2]string{project, database}
	if c := o.clients[k]; c != nil {
		return c, nil
	}
	if project == "" {
		project = datastore.DetectProjectID
	}
	// The client outlives this call, so it does not take ctx's
	// cancellation.
	c, err := datastore.NewClientWithDatabase(context.WithoutCancel(ctx), project, database, clientOptions...)
	if err != nil {
		return nil, err
	}
	if o.clients == nil {
		o.clients = make(map[[2]string]*datastore.Client)
	}
	o.clients[k] = c
	return c, nil
}
