package restclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// answer is a RoundTripper that gives every request the same answer, as a
// server would send it, so that the client's parsing of answers can be
// fuzzed without a server.
type answer struct {
	status int
	etag   string
	body   []byte
}

func (a answer) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	h := make(http.Header)
	if a.etag != "" {
		h.Set("ETag", a.etag)
	}
	return &http.Response{
		Status:        strconv.Itoa(a.status) + " " + http.StatusText(a.status),
		StatusCode:    a.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(a.body)),
		ContentLength: int64(len(a.body)),
		Request:       req,
	}, nil
}

// documentedCodes is the table of docs/rest.md: the code of an error
// answer's JSON, and what a client makes of it. "exists" and "conflict"
// are a failed condition only with status 412.
var documentedCodes = map[string]driver.Code{
	"not_found":          driver.CodeNotFound,
	"exists":             driver.CodePrecondition,
	"conflict":           driver.CodePrecondition,
	"invalid":            driver.CodeInvalid,
	"too_large":          driver.CodeInvalid,
	"unsupported":        driver.CodeUnsupported,
	"corrupt":            driver.CodeCorrupt,
	"unavailable":        driver.CodeUnavailable,
	"closed":             driver.CodeUnavailable,
	"unauthorized":       driver.CodeUnknown,
	"internal":           driver.CodeUnknown,
	"method_not_allowed": driver.CodeUnknown,
}

// wantCode is how docs/rest.md and the package doc say an error answer is
// classified: by its JSON code if it has a known one, else by its status.
func wantCode(status int, body []byte) driver.Code {
	var eb struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &eb) == nil {
		if c, ok := documentedCodes[eb.Error.Code]; ok {
			if c == driver.CodePrecondition && status != http.StatusPreconditionFailed {
				return driver.CodeUnknown // a conflict that is not a failed condition
			}
			return c
		}
	}
	switch {
	case status == 404:
		return driver.CodeNotFound
	case status == 412:
		return driver.CodePrecondition
	case status == 400 || status == 413:
		return driver.CodeInvalid
	case status == 501:
		return driver.CodeUnsupported
	case status == 408 || status == 429 || status >= 500:
		return driver.CodeUnavailable
	}
	return driver.CodeUnknown
}

// FuzzAnswer feeds the client arbitrary answers (status, ETag, body) to
// each request it makes, and checks what it makes of them: a success only
// from a status the request expects, with the version of a strong ETag
// and, for a listing, keys that are a valid page within the limit; an
// error answer classified by its JSON code or else its status; a listing
// that does not parse is ErrCorrupt. 401 and 403 are never taken for a
// transient failure, and no answer makes the client panic.
func FuzzAnswer(f *testing.F) {
	f.Add(uint8(0), 200, `"v1"`, []byte("content"))
	f.Add(uint8(0), 200, `W/"v1"`, []byte("content"))
	f.Add(uint8(0), 200, `""`, []byte{})
	f.Add(uint8(1), 200, `"v1"`, []byte{})
	f.Add(uint8(2), 204, `"v2"`, []byte{})
	f.Add(uint8(2), 412, "", []byte(`{"error":{"code":"exists","message":"the key exists"}}`))
	f.Add(uint8(2), 409, "", []byte(`{"error":{"code":"conflict"}}`))
	f.Add(uint8(3), 204, "", []byte{})
	f.Add(uint8(3), 404, "", []byte(`{"error":{"code":"not_found"}}`))
	f.Add(uint8(4), 200, "", []byte(`{"keys":["a/b","a/c"],"more":false}`))
	f.Add(uint8(4), 200, "", []byte(`{"keys":["a/b","a/c","a/d"],"more":true}`))
	f.Add(uint8(4), 200, "", []byte(`{"keys":null}`))
	f.Add(uint8(4), 200, "", []byte(`[`))
	f.Add(uint8(5), 503, "", []byte(`{"error":{"code":"unavailable","message":"store outage"}}`))
	f.Add(uint8(5), 401, "", []byte(`{"error":{"code":"unauthorized"}}`))
	f.Add(uint8(0), 500, "", []byte("<html>proxy error</html>"))
	f.Add(uint8(0), 302, "", []byte{})
	f.Fuzz(func(t *testing.T, op uint8, status int, etag string, body []byte) {
		if status < 100 || status > 999 || status == http.StatusSwitchingProtocols {
			return // not a status an HTTP/1.1 answer can carry to a client
		}
		// An answer that makes a call hang is a failure too: crash with
		// it, so that the fuzzer keeps the input.
		watchdog := time.AfterFunc(20*time.Second, func() {
			panic(fmt.Sprintf("op %d hangs on a %d answer, ETag %q, body %q", op%6, status, etag, body))
		})
		defer watchdog.Stop()
		ctx := context.Background()
		b, err := OpenBackend(ctx, "http://mxq.invalid", &Options{Client: &http.Client{Transport: answer{status, etag, body}}})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		strong := len(etag) >= 3 && etag[0] == '"' && etag[len(etag)-1] == '"'
		var want []int // the statuses that mean success
		var v driver.Version
		const limit = 2
		switch op % 6 {
		case 0:
			want = []int{200}
			var rc io.ReadCloser
			var a driver.Attrs
			rc, a, err = b.Get(ctx, "a/b")
			if err == nil {
				got, rerr := io.ReadAll(rc)
				rc.Close()
				if rerr != nil || !bytes.Equal(got, body) {
					t.Fatalf("Get read %q (%v), the answer was %q", got, rerr, body)
				}
				v = a.Version
			}
		case 1:
			want = []int{200}
			var a driver.Attrs
			a, err = b.(driver.Stater).Stat(ctx, "a/b")
			v = a.Version
		case 2:
			want = []int{200, 201, 204}
			v, err = b.Put(ctx, "a/b", strings.NewReader("x"), &driver.PutOptions{Size: 1, IfMatch: "v1"})
		case 3:
			want = []int{200, 204}
			err = b.Delete(ctx, "a/b")
			strong = true // no version to read
		case 4:
			want = []int{200}
			var keys []string
			var more bool
			keys, more, err = b.List(ctx, "a/", "", limit)
			if err == nil {
				if len(keys) > limit {
					t.Fatalf("List over a limit of %d gave %d keys", limit, len(keys))
				}
				// What was taken is what the answer says.
				var page struct {
					Keys []string `json:"keys"`
					More bool     `json:"more"`
				}
				if json.Unmarshal(body, &page) != nil && json.NewDecoder(bytes.NewReader(body)).Decode(&page) != nil {
					t.Fatalf("List took %q for a page", body)
				}
				if len(page.Keys) != len(keys) || page.More != more {
					t.Fatalf("List gave %q, %v from %q", keys, more, body)
				}
			} else if status == 200 && !errors.Is(err, queue.ErrCorrupt) {
				t.Fatalf("List of a 200 answer %q: %v, want ErrCorrupt", body, err)
			}
			strong = true
		case 5:
			want = []int{200}
			// Ping lists one key: an answer that is not a page is
			// ErrCorrupt.
			err = b.(driver.Pinger).Ping(ctx)
			if err != nil && status == 200 && !errors.Is(err, queue.ErrCorrupt) {
				t.Fatalf("Ping on a 200 answer %q: %v, want ErrCorrupt", body, err)
			}
		}
		success := false
		for _, w := range want {
			success = success || status == w
		}
		if !success {
			if err == nil {
				t.Fatalf("op %d succeeded on a %d answer", op%6, status)
			}
			var he *httpError
			if !errors.As(err, &he) {
				t.Fatalf("op %d on a %d answer: %v is not an answer's error", op%6, status, err)
			}
			c := b.ErrorCode(err)
			wc := wantCode(status, body)
			if op%6 == 1 {
				wc = wantCode(status, nil) // a HEAD answer has no body
			}
			if c != wc {
				t.Fatalf("op %d: a %d answer with %q is classified %v, want %v", op%6, status, body, c, wc)
			}
			if (status == 401 || status == 403) && c == driver.CodeUnavailable {
				t.Fatalf("a %d answer is taken for a transient failure", status)
			}
			if len(he.Error()) > 64<<10+512 {
				t.Fatalf("the error of a %d answer is %d bytes long", status, len(he.Error()))
			}
			return
		}
		if op%6 >= 4 {
			return // checked above
		}
		switch {
		case strong && err != nil:
			t.Fatalf("op %d on a %d answer with ETag %q: %v", op%6, status, etag, err)
		case !strong && err == nil:
			t.Fatalf("op %d took the ETag %q for a version", op%6, etag)
		case err == nil && op%6 <= 2 && string(v) != etag[1:len(etag)-1]:
			t.Fatalf("op %d read the version %q from the ETag %q", op%6, v, etag)
		}
	})
}
