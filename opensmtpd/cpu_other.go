//go:build !unix

package opensmtpd

import "time"

// cpuTime is not measured off Unix.
func cpuTime() (user, sys time.Duration, ok bool) { return 0, 0, false }
