package queue

import "time"

// SetClaimPointerDelay sets how long a claim of an envelope that Due
// returned goes without a claim pointer, for a test, and returns the
// function that restores it.
func SetClaimPointerDelay(d time.Duration) (restore func()) {
	old := claimPointerDelay
	claimPointerDelay = d
	return func() { claimPointerDelay = old }
}
