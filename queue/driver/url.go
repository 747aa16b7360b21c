package driver

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// ErrInvalid is the sentinel of a bad argument: a URL, a query parameter
// or a key that breaks the rules. It is the same error value as
// queue.ErrInvalid, so that errors.Is(err, queue.ErrInvalid) holds for the
// errors of the helpers in this package, which cannot import queue.
var ErrInvalid = errors.New("invalid argument")

// URLParams checks the query of u against the allowed parameter names and
// returns the values, one per name. Unknown or repeated parameters are
// errors wrapping ErrInvalid. Adapters use it in their URL openers.
func URLParams(u *url.URL, allowed ...string) (map[string]string, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("mxq: open %s: %w: %s", u.Redacted(), ErrInvalid, fmt.Sprintf(format, args...))
	}
	out := make(map[string]string)
	for k, v := range u.Query() {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return nil, bad("invalid query parameter %q: this scheme takes none", k)
			}
			return nil, bad("invalid query parameter %q; valid: %s", k, strings.Join(allowed, ", "))
		}
		if len(v) != 1 {
			return nil, bad("query parameter %q given %d times", k, len(v))
		}
		out[k] = v[0]
	}
	return out, nil
}

// ParseBool parses a boolean URL parameter: true/false, 1/0, yes/no,
// on/off. An empty value gives def; anything else is an error wrapping
// ErrInvalid.
func ParseBool(name, v string, def bool) (bool, error) {
	switch strings.ToLower(v) {
	case "":
		return def, nil
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off":
		return false, nil
	}
	return false, fmt.Errorf("%w: query parameter %s=%q: want true or false", ErrInvalid, name, v)
}
