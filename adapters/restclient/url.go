package restclient

import (
	"context"
	"net/http"
	"net/url"
	"os"

	"github.com/mxqueue/mxq/queue"
)

// The URL schemes that rest registers with queue.DefaultURLMux.
const (
	Scheme      = "http"
	SchemeHTTPS = "https"
)

func init() {
	queue.DefaultURLMux().Register(Scheme, new(URLOpener))
	queue.DefaultURLMux().Register(SchemeHTTPS, new(URLOpener))
}

// URLOpener opens http and https URLs of mxq servers:
//
//	http://127.0.0.1:8025
//	https://mxq.example.net/queue      (a server mounted under /queue)
//
// The path, if any, is the prefix in front of the API's /v1. No query
// parameters are accepted, nor credentials in the URL.
type URLOpener struct {
	// Token is the bearer token. Empty: the value of MXQ_TOKEN, read
	// when a URL is opened.
	Token string
	// Client sends the requests; see Options.Client.
	Client *http.Client
}

// OpenStoreURL implements queue.URLOpener.
func (o *URLOpener) OpenStoreURL(ctx context.Context, u *url.URL, qopts *queue.Options) (*queue.Store, error) {
	token := o.Token
	if token == "" {
		token = os.Getenv("MXQ_TOKEN")
	}
	b, err := openBackend(u, token, o.Client)
	if err != nil {
		return nil, err
	}
	opts := new(queue.Options)
	if qopts != nil {
		*opts = *qopts
	}
	return queue.New(b, opts)
}
