package driver

import "net/http"

// HTTPCode maps the HTTP status of a service's answer onto a Code, for
// adapters of services that answer over HTTP, once the service's own
// error codes have not decided:
//
//	404                  CodeNotFound
//	412                  CodePrecondition
//	400                  CodeInvalid
//	501                  CodeUnsupported
//	408, 429, other 5xx  CodeUnavailable
//	anything else        CodeUnknown (401 and 403 among them: retrying will not help)
func HTTPCode(status int) Code {
	switch {
	case status == http.StatusNotFound:
		return CodeNotFound
	case status == http.StatusPreconditionFailed:
		return CodePrecondition
	case status == http.StatusBadRequest:
		return CodeInvalid
	case status == http.StatusNotImplemented:
		return CodeUnsupported
	case status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500:
		return CodeUnavailable
	}
	return CodeUnknown
}
