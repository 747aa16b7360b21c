package gcs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/api/googleapi"

	"github.com/mxqueue/mxq/queue/driver"
)

// countingTransport counts the requests it carries.
type countingTransport struct {
	n atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

// TestDeleteMultiBatches: DeleteMulti deletes 100 objects per request
// through the emulator's batch endpoint; missing keys are not an error.
func TestDeleteMultiBatches(t *testing.T) {
	c, bucket, prefix := testEnv(t)
	ct := &countingTransport{}
	b, err := openBackend(t.Context(), c, bucket, prefix, &http.Client{Transport: ct})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(driver.MultiDeleter); !ok {
		t.Fatal("the backend with a batch client is not a driver.MultiDeleter")
	}
	var keys []string
	for i := range 250 {
		k := fmt.Sprintf("due/%03d/k%d", i%7, i)
		if _, err := put(t, b, k, "x", driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	keys = append(keys, "due/missing/1", "due/missing/2")
	if err := driver.DeleteMulti(t.Context(), b, keys); err != nil {
		t.Fatal(err)
	}
	if n := ct.n.Load(); n != 3 {
		t.Errorf("%d batch requests for %d keys, want 3", n, len(keys))
	}
	for _, k := range keys {
		if _, _, err := b.Get(t.Context(), k); b.ErrorCode(err) != driver.CodeNotFound {
			t.Fatalf("Get(%s) after DeleteMulti: %v", k, err)
		}
	}
}

// batchAnswer builds a batch answer with one part per status.
func batchAnswer(t *testing.T, statuses ...int) *http.Response {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for i, st := range statuses {
		pw, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type": {"application/http"},
			"Content-Id":   {fmt.Sprintf("<response-%d>", i+1)},
		})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(pw, "HTTP/1.1 %d %s\r\nContent-Length: 2\r\n\r\nno", st, http.StatusText(st))
	}
	mw.Close()
	return &http.Response{
		StatusCode: 200,
		Header:     http.Header{"Content-Type": {"multipart/mixed; boundary=" + mw.Boundary()}},
		Body:       io.NopCloser(&body),
	}
}

// TestReadBatch: the answer to a batch of deletes succeeds only if every
// call was answered with success or 404; a failed call is reported with
// its status and its key, so that 429 and 5xx are retried.
func TestReadBatch(t *testing.T) {
	keys := []string{"a", "b", "c"}
	b := &backend{}
	for _, tc := range []struct {
		name string
		resp *http.Response
		fail bool
		want driver.Code
		key  string
	}{
		{"all deleted", batchAnswer(t, 204, 204, 204), false, 0, ""},
		{"one missing", batchAnswer(t, 204, 404, 200), false, 0, ""},
		{"one throttled", batchAnswer(t, 204, 429, 204), true, driver.CodeUnavailable, "b"},
		{"one refused", batchAnswer(t, 403, 204, 204), true, driver.CodeUnknown, "a"},
		{"too few answers", batchAnswer(t, 204, 204), true, driver.CodeUnavailable, ""},
		{"not multipart", &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader("{}"))}, true, driver.CodeUnavailable, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := readBatch(tc.resp, keys)
			if (err != nil) != tc.fail || err != nil && b.ErrorCode(err) != tc.want {
				t.Fatalf("readBatch = %v (code %v), want failure %v with code %v", err, b.ErrorCode(err), tc.fail, tc.want)
			}
			if tc.key != "" && !strings.Contains(err.Error(), "of "+tc.key+":") {
				t.Errorf("error %q does not name key %s", err, tc.key)
			}
		})
	}
}

// FuzzReadBatch: no answer, however malformed, makes readBatch panic or
// report success for calls it did not see answered.
func FuzzReadBatch(f *testing.F) {
	f.Add([]byte("--x\r\nContent-Type: application/http\r\nContent-Id: <response-1>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n--x--\r\n"))
	f.Add([]byte("--x--\r\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, body []byte) {
		resp := &http.Response{
			StatusCode: 200,
			Header:     http.Header{"Content-Type": {"multipart/mixed; boundary=x"}},
			Body:       io.NopCloser(bytes.NewReader(body)),
		}
		err := readBatch(resp, []string{"a"})
		if err == nil && !bytes.Contains(body, []byte("HTTP/")) {
			t.Fatalf("success without an HTTP answer in %q", body)
		}
		var ge *googleapi.Error
		if err != nil && !errors.As(err, &ge) {
			t.Fatalf("readBatch = %v, not a *googleapi.Error: its code would be unknown", err)
		}
	})
}
