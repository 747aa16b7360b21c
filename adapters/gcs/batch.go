package gcs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"
	htransport "google.golang.org/api/transport/http"

	"github.com/mxqueue/mxq/queue/driver"
)

// maxBatch is the most calls the JSON API takes in one batch request.
const maxBatch = 100

// publicBatchURL is the JSON API's batch endpoint for Cloud Storage.
const publicBatchURL = "https://storage.googleapis.com/batch/storage/v1"

// batchURL returns the batch endpoint: the emulator's when
// STORAGE_EMULATOR_HOST is set, as the SDK does, else the public one.
func batchURL() string {
	host := os.Getenv("STORAGE_EMULATOR_HOST")
	if host == "" {
		return publicBatchURL
	}
	if !strings.Contains(host, "://") {
		host = "http://" + host
	}
	return strings.TrimSuffix(host, "/") + "/batch/storage/v1"
}

// newBatchClient returns the HTTP client for the batch endpoint: with
// Application Default Credentials, or none for the emulator.
func newBatchClient(ctx context.Context) (*http.Client, error) {
	if os.Getenv("STORAGE_EMULATOR_HOST") != "" {
		return &http.Client{}, nil
	}
	c, _, err := htransport.NewClient(ctx, option.WithScopes(storage.ScopeFullControl))
	return c, err
}

// batchBackend is a backend that also deletes many objects per request,
// through the JSON API's batch endpoint, which the SDK does not offer.
type batchBackend struct {
	*backend
	client *http.Client
	url    string // the batch endpoint
	host   string // its host, for the calls' Host header
}

var _ driver.MultiDeleter = (*batchBackend)(nil)

// DeleteMulti implements driver.MultiDeleter with one batch request per
// 100 keys. A missing object is not an error; the first call that fails
// otherwise is, with its HTTP status (so 429 and 5xx are retried).
func (b *batchBackend) DeleteMulti(ctx context.Context, keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), maxBatch)
		if err := b.deleteBatch(ctx, keys[:n]); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// deleteBatch deletes keys, at most maxBatch of them, with one request.
func (b *batchBackend) deleteBatch(ctx context.Context, keys []string) error {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for i, k := range keys {
		pw, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type": {"application/http"},
			"Content-Id":   {"<" + strconv.Itoa(i+1) + ">"},
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(pw, "DELETE /storage/v1/b/%s/o/%s HTTP/1.1\r\nHost: %s\r\n\r\n", url.PathEscape(b.name), url.PathEscape(k), b.host)
	}
	if err := mw.Close(); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.url, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "multipart/mixed; boundary="+mw.Boundary())
	resp, err := b.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := googleapi.CheckResponse(resp); err != nil {
		return err
	}
	return readBatch(resp, keys)
}

// readBatch reads the answer to a batch of deletes of keys: one part per
// call, each an HTTP response.
func readBatch(resp *http.Response, keys []string) error {
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		return &googleapi.Error{Code: http.StatusBadGateway, Message: fmt.Sprintf("gcs: batch answer of type %q, not multipart", resp.Header.Get("Content-Type"))}
	}
	mr := multipart.NewReader(resp.Body, params["boundary"])
	answered := 0
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return &googleapi.Error{Code: http.StatusBadGateway, Message: fmt.Sprintf("gcs: reading the batch answer: %v", err)}
		}
		r, err := http.ReadResponse(bufio.NewReader(p), nil)
		if err != nil {
			return &googleapi.Error{Code: http.StatusBadGateway, Message: fmt.Sprintf("gcs: a call's answer in the batch: %v", err)}
		}
		msg, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
		r.Body.Close()
		answered++
		switch {
		case r.StatusCode/100 == 2, r.StatusCode == http.StatusNotFound:
		default:
			key := "?"
			if i := callIndex(p.Header.Get("Content-Id")); i >= 1 && i <= len(keys) {
				key = keys[i-1]
			}
			return &googleapi.Error{Code: r.StatusCode, Message: fmt.Sprintf("gcs: batch delete of %s: %s", key, bytes.TrimSpace(msg))}
		}
	}
	if answered != len(keys) {
		return &googleapi.Error{Code: http.StatusBadGateway, Message: fmt.Sprintf("gcs: the batch answered %d of %d deletes", answered, len(keys))}
	}
	return nil
}

// callIndex returns the number of the call that a part of a batch answer
// answers, from its Content-ID, "<response-N>", or 0.
func callIndex(id string) int {
	id = strings.TrimPrefix(strings.TrimSuffix(strings.TrimPrefix(id, "<"), ">"), "response-")
	n, err := strconv.Atoi(id)
	if err != nil {
		return 0
	}
	return n
}
