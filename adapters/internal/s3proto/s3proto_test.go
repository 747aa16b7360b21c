package s3proto

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

type client struct{}

func TestOpenBackend(t *testing.T) {
	var gotSize int64
	mk := func(_ *client, _ string, ps int64) driver.Backend {
		gotSize = ps
		return struct{ driver.Backend }{}
	}
	if _, err := OpenBackend("x", new(client), "b", &Options{}, mk); err != nil || gotSize != DefaultPartSize {
		t.Fatalf("default part size: %d, %v", gotSize, err)
	}
	if _, err := OpenBackend("x", new(client), "b", &Options{PartSize: 8 << 20}, mk); err != nil || gotSize != 8<<20 {
		t.Fatalf("part size of 8 MiB: %d, %v", gotSize, err)
	}
	for name, c := range map[string]struct {
		client *client
		bucket string
		ps     int64
	}{
		"nil client":      {nil, "b", 0},
		"no bucket":       {new(client), "", 0},
		"small part size": {new(client), "b", 1 << 20},
	} {
		if _, err := OpenBackend("x", c.client, c.bucket, &Options{PartSize: c.ps}, mk); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestPingError(t *testing.T) {
	answer := errors.New("answer")
	for _, c := range []struct {
		name    string
		missing bool
		status  int
		err     error
		want    driver.Code
		says    string
	}{
		{"bucket reported missing", true, 0, nil, driver.CodeInvalid, `bucket "b": bucket does not exist`},
		{"404", false, http.StatusNotFound, answer, driver.CodeInvalid, "does not exist: answer"},
		{"403", false, http.StatusForbidden, answer, driver.CodeUnknown, "denied (check the credentials): answer"},
		{"other", false, http.StatusInternalServerError, answer, driver.CodeUnavailable, "answer"},
	} {
		err := PingError("x", "b", c.missing, c.status, c.err)
		if got := ErrorCode(err, "", c.status, nil); got != c.want || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v (code %d), want code %d saying %q", c.name, err, got, c.want, c.says)
		}
	}
}
