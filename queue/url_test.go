package queue

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/queue/driver"
)

type fakeOpener struct{ got *url.URL }

func (o *fakeOpener) OpenStoreURL(ctx context.Context, u *url.URL, opts *Options) (*Store, error) {
	o.got = u
	if _, err := driver.URLParams(u, "region"); err != nil {
		return nil, err
	}
	return nil, nil
}

func TestURLMux(t *testing.T) {
	var m URLMux
	o := new(fakeOpener)
	m.Register("Demo", o)
	m.Register("other", new(fakeOpener))
	ctx := t.Context()
	if _, err := m.Open(ctx, "DEMO://bucket/p?region=x"); err != nil || o.got == nil || o.got.Host != "bucket" {
		t.Fatalf("Open: %v, %v", err, o.got)
	}
	for _, c := range []struct {
		name, url, want string
	}{
		{"unknown scheme", "bogus://x", `unknown scheme "bogus"; registered: demo, other (forgotten import?)`},
		{"no scheme", "just-a-path", "no scheme"},
		{"not a URL", "demo://%zz", "not a URL"},
		{"unknown parameter", "demo://b?regoin=x", `invalid query parameter "regoin"`},
		{"repeated parameter", "demo://b?region=x&region=y", "given 2 times"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := m.Open(ctx, c.url)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open(%q) = %v, want ErrInvalid mentioning %q", c.url, err, c.want)
			}
		})
	}
	for _, c := range []struct {
		name   string
		scheme string
		o      URLOpener
	}{
		{"duplicate", "demo", new(fakeOpener)},
		{"nil opener", "x", nil},
		{"empty scheme", "", new(fakeOpener)},
		{"bad scheme", "a:b", new(fakeOpener)},
	} {
		t.Run("Register "+c.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("Register did not panic")
				}
			}()
			m.Register(c.scheme, c.o)
		})
	}
}

func TestRedactURL(t *testing.T) {
	if got := RedactURL("http://user:secret@host/p"); strings.Contains(got, "secret") {
		t.Fatalf("RedactURL kept the password: %s", got)
	}
	if got := RedactURL("s3://bucket/p?region=x"); got != "s3://bucket/p?region=x" {
		t.Fatalf("RedactURL changed a URL without a password: %s", got)
	}
}
