package driver

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestURLParams(t *testing.T) {
	u, _ := url.Parse("demo://b/p?region=x&secure=false")
	p, err := URLParams(u, "region", "secure")
	if err != nil || p["region"] != "x" || p["secure"] != "false" || len(p) != 2 {
		t.Fatalf("URLParams = %v, %v", p, err)
	}
	for _, c := range []struct {
		url     string
		allowed []string
		want    string
	}{
		{"demo://b?regoin=x", []string{"region"}, `invalid query parameter "regoin"; valid: region`},
		{"demo://b?region=x", nil, `invalid query parameter "region": this scheme takes none`},
		{"demo://b?region=x&region=y", []string{"region"}, `query parameter "region" given 2 times`},
		{"demo://u:secret@b?x=1", nil, "invalid query parameter"},
	} {
		u, _ := url.Parse(c.url)
		_, err := URLParams(u, c.allowed...)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("URLParams(%s, %q) = %v, want ErrInvalid mentioning %q", c.url, c.allowed, err, c.want)
		}
	}
}

func TestParseBool(t *testing.T) {
	for in, want := range map[string]bool{"": true, "true": true, "1": true, "on": true, "no": false, "FALSE": false, "off": false} {
		got, err := ParseBool("x", in, true)
		if err != nil || got != want {
			t.Errorf("ParseBool(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseBool("x", "maybe", true); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseBool(maybe) = %v", err)
	}
}

func TestValidKey(t *testing.T) {
	for _, k := range []string{"inc/ab12cd34", "node/mx1.example", "a/b", "a/b.c/d_e-f", strings.Repeat("a/", 511) + "ab"} {
		if err := ValidKey(k); err != nil {
			t.Errorf("ValidKey(%q): %v", k, err)
		}
	}
	for _, k := range []string{"", "foo", ".tmp/x", ".hidden/x", "a/.b", "a//b", "a/b/", "/a/b", "a/./b", "a/../b",
		"A/b", "a/b,c", "a/b c", "a/b\x00", "a/é", strings.Repeat("a/", 512) + "ab"} {
		if err := ValidKey(k); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidKey(%q) = %v, want ErrInvalid", k, err)
		}
	}
}
