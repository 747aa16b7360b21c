package driver

import "testing"

func TestHTTPCode(t *testing.T) {
	for status, want := range map[int]Code{
		0: CodeUnknown, 200: CodeUnknown, 400: CodeInvalid, 401: CodeUnknown, 403: CodeUnknown,
		404: CodeNotFound, 408: CodeUnavailable, 409: CodeUnknown, 412: CodePrecondition,
		413: CodeUnknown, 429: CodeUnavailable, 500: CodeUnavailable, 501: CodeUnsupported,
		502: CodeUnavailable, 503: CodeUnavailable, 504: CodeUnavailable,
	} {
		if got := HTTPCode(status); got != want {
			t.Errorf("HTTPCode(%d) = %d, want %d", status, got, want)
		}
	}
}
