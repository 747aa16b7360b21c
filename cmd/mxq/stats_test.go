package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/queue"
)

// TestStatsStores runs mxq stats on every kind of store, and checks its
// figures against what was stored and that it read nothing per envelope.
func TestStatsStores(t *testing.T) {
	for _, kind := range []string{"file", "minio", "gcs", "datastore"} {
		t.Run(kind, func(t *testing.T) {
			u := storeURL(t, kind)
			const n = 6
			c := fillQueue(t, u, n)
			var bytes int64
			for _, b := range c.content {
				bytes += int64(len(b))
			}
			code, out, errs := runMxq(t, "", "--queue", u, "--json", "stats")
			if code != 0 {
				t.Fatalf("stats: exit %d: %s", code, errs)
			}
			var st queue.Stats
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatal(err)
			}
			// fillQueue defers one envelope of messages 1 and 4 by an hour.
			if st.Messages != n || st.Envelopes != int64(len(c.envs)) || st.Bytes != bytes ||
				st.Due.Hour != 2 || st.Due.Now != int64(len(c.envs))-2 || st.Oldest == nil || st.Nodes[0].Name != "filler" {
				t.Errorf("stats %s", out)
			}
			if st.Cost.Heads != n || st.Cost.Gets > n+1 {
				t.Errorf("cost %+v: want a head per message, and no more gets than transactions and nodes", st.Cost)
			}
			code, out, _ = runMxq(t, "", "--queue", u, "stats", "--sizes=false")
			if code != 0 || !strings.Contains(out, "envelopes") || !strings.Contains(out, "0 head(s)") {
				t.Errorf("stats: exit %d:\n%s", code, out)
			}
		})
	}
}
