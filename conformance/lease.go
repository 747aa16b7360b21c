package conformance

import "testing"

func runLeaseTests(t *testing.T, mk HarnessMaker) {}
