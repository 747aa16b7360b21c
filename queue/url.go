package queue

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// URLOpener opens a Store from a URL whose scheme it was registered for.
type URLOpener interface {
	// OpenStoreURL opens the Store that u names, with the queue options
	// opts (nil: defaults), which it passes to New. It must reject query
	// parameters it does not know with an error wrapping ErrInvalid.
	OpenStoreURL(ctx context.Context, u *url.URL, opts *Options) (*Store, error)
}

// URLMux maps URL schemes to URLOpeners. The zero value is ready to use.
// Applications and tests can build their own; DefaultURLMux is the one that
// adapters register with in their init functions.
type URLMux struct {
	mu      sync.RWMutex
	openers map[string]URLOpener
}

// Register makes o the opener for scheme, matched case-insensitively. It
// panics if o is nil, the scheme is empty or invalid, or it is registered
// already, as sql.Register does.
func (m *URLMux) Register(scheme string, o URLOpener) {
	if o == nil {
		panic("queue: Register opener is nil")
	}
	s := strings.ToLower(scheme)
	if s == "" || strings.ContainsAny(s, ":/ ") {
		panic(fmt.Sprintf("queue: Register invalid scheme %q", scheme))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.openers == nil {
		m.openers = make(map[string]URLOpener)
	}
	if _, dup := m.openers[s]; dup {
		panic(fmt.Sprintf("queue: Register called twice for scheme %q", s))
	}
	m.openers[s] = o
}

// Schemes returns the registered schemes in sorted order.
func (m *URLMux) Schemes() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var s []string
	for k := range m.openers {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

// ValidScheme reports whether scheme has an opener.
func (m *URLMux) ValidScheme(scheme string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, ok := m.openers[strings.ToLower(scheme)]
	return ok
}

// Open opens the Store that urlstr names with default options. A URL that
// does not parse, has an unknown scheme (the error lists the registered
// ones) or carries credentials (user:password@) is an error wrapping
// ErrInvalid.
func (m *URLMux) Open(ctx context.Context, urlstr string) (*Store, error) {
	return m.OpenOptions(ctx, urlstr, nil)
}

// OpenOptions is Open with queue options; opts may be nil. The
// encryption parameters of the query (see EncryptionFromURL) are taken out
// first, the same for every scheme, and set opts.Encryption.
func (m *URLMux) OpenOptions(ctx context.Context, urlstr string, opts *Options) (*Store, error) {
	u, err := url.Parse(urlstr)
	if err != nil {
		return nil, &Error{Op: "open", ID: RedactURL(urlstr), Kind: ErrInvalid, Err: fmt.Errorf("not a URL")}
	}
	if u.Scheme == "" {
		return nil, errorf("open", RedactURL(urlstr), ErrInvalid, "no scheme; want one of %s", strings.Join(m.Schemes(), ", "))
	}
	m.mu.RLock()
	o := m.openers[strings.ToLower(u.Scheme)]
	m.mu.RUnlock()
	if o == nil {
		return nil, errorf("open", RedactURL(urlstr), ErrInvalid, "unknown scheme %q; registered: %s (forgotten import?)", u.Scheme, strings.Join(m.Schemes(), ", "))
	}
	if u.User != nil {
		// No scheme takes them, and one that ignored them would hide a
		// mistake: say where they come from instead.
		return nil, errorf("open", RedactURL(urlstr), ErrInvalid, "credentials do not belong in a queue URL: the URLOpener of %s says where they come from (the AWS chain, MINIO_ROOT_USER, MXQ_TOKEN...)", u.Scheme)
	}
	if opts, err = encryptionOptions(u, opts); err != nil {
		return nil, err
	}
	return o.OpenStoreURL(ctx, u, opts)
}

var defaultMux = new(URLMux)

// DefaultURLMux returns the URLMux that adapters register with when they
// are imported, and that Open uses.
func DefaultURLMux() *URLMux { return defaultMux }

// Open opens the Store that urlstr names through DefaultURLMux.
func Open(ctx context.Context, urlstr string) (*Store, error) {
	return defaultMux.Open(ctx, urlstr)
}

// RedactURL returns urlstr with any password replaced by "xxxxx", for
// logs and error messages. Strings that do not parse are returned as they
// are.
func RedactURL(urlstr string) string {
	u, err := url.Parse(urlstr)
	if err != nil || u.User == nil {
		return urlstr
	}
	return u.Redacted()
}
