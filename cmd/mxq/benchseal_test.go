package main

import (
	"strings"
	"testing"

	"github.com/mxqueue/mxq/bench"
)

// TestCorpusRatios: the corpus goes through a Store that compresses, so
// the ratio counts what the queue stores. Text and HTML mail is small
// enough to travel in its envelope, and must be compressed there too.
func TestCorpusRatios(t *testing.T) {
	rows, err := corpusRatios(t.Context(), bench.Corpus(1, 60, 0))
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, r := range rows {
		for _, k := range []string{"text", "html"} {
			if strings.HasPrefix(r.Op, "zstd on corpus: "+k+" (") {
				seen++
				if r.Queue <= 0 || r.Queue > 0.7 {
					t.Errorf("%s: stored/original %.2f, want compressed (at most 0.7)", r.Op, r.Queue)
				}
			}
		}
	}
	if seen != 2 {
		t.Fatalf("the corpus of 60 messages gave %d rows for text and HTML, want 2: %+v", seen, rows)
	}
}
