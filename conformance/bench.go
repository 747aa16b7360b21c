package conformance

import "testing"

// RunBenchmarks runs the suite's benchmarks.
func RunBenchmarks(b *testing.B, mk HarnessMaker) {}
