package s3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/mxqueue/mxq/adapters/internal/s3proto"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Scheme is the URL scheme that s3 registers with queue.DefaultURLMux.
const Scheme = "s3"

func init() { queue.DefaultURLMux().Register(Scheme, new(URLOpener)) }

// URLOpener opens s3 URLs:
//
//	s3://bucket/prefix?region=&endpoint=&use_path_style=&disable_https=&profile=
//
// The host is the bucket, the path the key prefix (Options.Prefix). The
// query parameters, all optional:
//
//   - region: the AWS region. Default: from the AWS configuration
//     (AWS_REGION, the profile), or us-east-1 when endpoint is set.
//   - endpoint: the base URL of an S3-compatible server, such as
//     http://127.0.0.1:9000. Without a scheme, https:// is assumed, or
//     http:// with disable_https.
//   - use_path_style: true to address the bucket in the path
//     (endpoint/bucket/key) rather than the host name; MinIO and most
//     S3-compatible servers need it. Default: false.
//   - disable_https: true to talk plain HTTP. Default: false.
//   - profile: the shared configuration profile. Default: AWS_PROFILE or
//     "default".
//
// Any other parameter is an error wrapping queue.ErrInvalid. Credentials
// come from the standard AWS chain (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, the profile, SSO, the instance role), never from
// the URL. The AWS configuration is loaded on the first open of each
// profile and region, not at import, and shared by the Stores opened
// after it.
//
// The client tries a request at most 3 times (conditional writes once),
// with a 5 s connect and TLS handshake timeout and a 30 s wait for
// response headers.
type URLOpener struct {
	mu      sync.Mutex
	configs map[configKey]*lazyConfig
}

type configKey struct{ profile, region string }

// lazyConfig loads one AWS configuration once.
type lazyConfig struct {
	once sync.Once
	cfg  aws.Config
	err  error
}

// OpenStoreURL implements queue.URLOpener.
func (o *URLOpener) OpenStoreURL(ctx context.Context, u *url.URL, qopts *queue.Options) (*queue.Store, error) {
	client, bucket, err := o.client(ctx, u)
	if err != nil {
		return nil, err
	}
	opts := &Options{Prefix: u.Path}
	if qopts != nil {
		opts.Queue = *qopts
	}
	return Open(ctx, client, bucket, opts)
}

// client returns a client for u and the bucket u names.
func (o *URLOpener) client(ctx context.Context, u *url.URL) (*awss3.Client, string, error) {
	p, err := driver.URLParams(u, "region", "endpoint", "use_path_style", "disable_https", "profile")
	if err != nil {
		return nil, "", err
	}
	// The query is left out of the errors: an endpoint could hold a
	// password.
	id := (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	bad := func(err error) error { return s3proto.Invalid(id, err) }
	if u.User != nil {
		id = "s3://" + u.Host + u.Path
		return nil, "", bad(errors.New("s3: credentials do not belong in the URL; use the AWS credential chain"))
	}
	bucket := u.Host
	if bucket == "" {
		return nil, "", bad(errors.New("s3: no bucket: want s3://bucket/prefix"))
	}
	pathStyle, err := driver.ParseBool("use_path_style", p["use_path_style"], false)
	if err != nil {
		return nil, "", bad(err)
	}
	noHTTPS, err := driver.ParseBool("disable_https", p["disable_https"], false)
	if err != nil {
		return nil, "", bad(err)
	}
	endpoint := p["endpoint"]
	if endpoint != "" {
		if !strings.Contains(endpoint, "://") {
			if noHTTPS {
				endpoint = "http://" + endpoint
			} else {
				endpoint = "https://" + endpoint
			}
		}
		eu, err := url.Parse(endpoint)
		if err != nil || eu.Host == "" || (eu.Scheme != "http" && eu.Scheme != "https") {
			return nil, "", bad(errors.New("s3: endpoint is not an http or https URL"))
		}
		if eu.User != nil {
			return nil, "", bad(errors.New("s3: credentials do not belong in the endpoint"))
		}
		if noHTTPS && eu.Scheme == "https" {
			return nil, "", bad(errors.New("s3: disable_https=true contradicts an https endpoint"))
		}
	}

	cfg, err := o.config(ctx, configKey{profile: p["profile"], region: p["region"]})
	if err != nil {
		return nil, "", bad(fmt.Errorf("s3: loading the AWS configuration: %w", err))
	}
	if cfg.Region == "" {
		if endpoint == "" {
			return nil, "", bad(errors.New("s3: no region: set region= in the URL, AWS_REGION, or the profile's region"))
		}
		cfg.Region = "us-east-1"
	}
	client := awss3.NewFromConfig(cfg, func(so *awss3.Options) {
		so.UsePathStyle = pathStyle
		so.EndpointOptions.DisableHTTPS = noHTTPS
		if endpoint != "" {
			so.BaseEndpoint = aws.String(endpoint)
		}
	})
	return client, bucket, nil
}

// config returns the AWS configuration for k, loading it on first use.
func (o *URLOpener) config(ctx context.Context, k configKey) (aws.Config, error) {
	o.mu.Lock()
	if o.configs == nil {
		o.configs = make(map[configKey]*lazyConfig)
	}
	lc := o.configs[k]
	if lc == nil {
		lc = new(lazyConfig)
		o.configs[k] = lc
	}
	o.mu.Unlock()
	lc.once.Do(func() { lc.cfg, lc.err = loadConfig(ctx, k) })
	if lc.err != nil {
		// Let a later open try again, for instance after a fixed file.
		o.mu.Lock()
		if o.configs[k] == lc {
			delete(o.configs, k)
		}
		o.mu.Unlock()
	}
	return lc.cfg.Copy(), lc.err
}

func loadConfig(ctx context.Context, k configKey) (aws.Config, error) {
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = s3proto.DialTimeout }).
		WithTransportOptions(s3proto.Tune)
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = s3proto.MaxAttempts
				so.MaxBackoff = s3proto.MaxBackoff
				// No client-wide retry budget: attempts are bounded
				// per request, and the Store's retries come on top.
				so.RateLimiter = ratelimit.None
			})
		}),
	}
	if k.region != "" {
		opts = append(opts, config.WithRegion(k.region))
	}
	if k.profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(k.profile))
	}
	return config.LoadDefaultConfig(ctx, opts...)
}
