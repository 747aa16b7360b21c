package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/bench"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
	"github.com/mxqueue/mxq/queue/seal"
)

// benchEncryption measures what encryption, and compression with it, cost
// on commit and OpenContent against the same queue without them, with a
// key made for the run, and reports the compression ratio of a generated
// corpus. The queue URL's own encryption parameters are set aside.
func benchEncryption(ctx context.Context, queueURL, node string, n int, progress func(string, ...any)) ([]benchRow, error) {
	u, err := url.Parse(queueURL)
	if err != nil {
		return nil, err
	}
	if _, err := queue.EncryptionFromURL(u); err != nil {
		return nil, err
	}
	secret := make([]byte, seal.KeySize)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	key, err := seal.NewKey(secret)
	if err != nil {
		return nil, err
	}
	modes := []struct {
		name string
		enc  *queue.Encryption
	}{
		{"plain", nil},
		{"encrypted", &queue.Encryption{Keys: seal.NewKeyring(key)}},
		{"zstd+encrypted", &queue.Encryption{Keys: seal.NewKeyring(key), Compress: true}},
	}
	corpus := bench.Corpus(1, 200, 8<<20)
	small := corpus[2].Data
	for _, m := range corpus[2:] {
		if m.Kind == "text" && len(m.Data) >= 3<<10 && len(m.Data) <= 6<<10 {
			small = m.Data
			break
		}
	}
	const bigSize = 32 << 20
	big := make([]byte, 0, bigSize)
	for _, m := range corpus[2:] {
		if len(big)+len(m.Data) > bigSize {
			break
		}
		big = append(big, m.Data...)
	}
	type figures struct {
		commit, open bench.Result
		mbps         float64
	}
	var got []figures
	for _, mode := range modes {
		s, err := queue.DefaultURLMux().OpenOptions(ctx, u.String(), &queue.Options{Node: node, Encryption: mode.enc})
		if err != nil {
			return nil, err
		}
		defer s.Close()
		progress("commit and OpenContent of %d bytes, %s ...", len(small), mode.name)
		var f figures
		// Warm up: connections, the ID pool, the key's cipher.
		if _, err := bench.Measure(ctx, bench.Commit(s, small, 1), max(n/5, 5), 1); err != nil {
			return nil, err
		}
		if f.commit, err = bench.Measure(ctx, bench.Commit(s, small, 1), n, 1); err != nil {
			return nil, err
		}
		m, err := commitOne(ctx, s, small)
		if err != nil {
			return nil, err
		}
		f.open, err = bench.Measure(ctx, func(ctx context.Context) error { return readAll(ctx, s, m, len(small)) }, n, 1)
		s.DeleteMessage(context.WithoutCancel(ctx), m)
		if err != nil {
			return nil, err
		}
		progress("commit and read %d MiB of mail, %s ...", len(big)>>20, mode.name)
		start := time.Now()
		for range 3 {
			m, err := commitOne(ctx, s, big)
			if err != nil {
				return nil, err
			}
			err = readAll(ctx, s, m, len(big))
			s.DeleteMessage(context.WithoutCancel(ctx), m)
			if err != nil {
				return nil, err
			}
		}
		f.mbps = 3 * float64(len(big)) / (1 << 20) / time.Since(start).Seconds()
		got = append(got, f)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	var rows []benchRow
	for i, mode := range modes[1:] {
		q, p := got[i+1], got[0]
		rows = append(rows,
			benchRow{Op: fmt.Sprintf("commit %d B, %s vs plain", len(small), mode.name), Metric: "p50 ms", Queue: ms(q.commit.P50), Raw: ms(p.commit.P50), Ratio: ms(q.commit.P50) / ms(p.commit.P50), Target: "report"},
			benchRow{Op: fmt.Sprintf("OpenContent %d B, %s vs plain", len(small), mode.name), Metric: "p50 ms", Queue: ms(q.open.P50), Raw: ms(p.open.P50), Ratio: ms(q.open.P50) / ms(p.open.P50), Target: "report"},
			benchRow{Op: fmt.Sprintf("commit+read %d MiB, %s vs plain", len(big)>>20, mode.name), Metric: "MiB/s", Queue: q.mbps, Raw: p.mbps, Ratio: q.mbps / p.mbps, Target: "report"},
		)
	}
	ratios, err := corpusRatios(ctx, corpus)
	if err != nil {
		return nil, err
	}
	return append(rows, ratios...), nil
}

// corpusRatios commits every message of the corpus, with one envelope,
// to a Store in memory that compresses, and reports the bytes it stored
// (the content, in its envelope or an object of its own, and the
// envelope) over the original bytes, per kind of message and in all.
func corpusRatios(ctx context.Context, corpus []bench.Mail) ([]benchRow, error) {
	b := mem.OpenBackend("bench-corpus-" + rand.Text())
	s, err := queue.New(b, &queue.Options{Encryption: &queue.Encryption{Compress: true}})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	type sum struct{ n, orig, stored int }
	kinds := []string{"text", "html", "attachment", "large attachment", "binary attachment", "all"}
	sums := map[string]*sum{}
	for _, k := range kinds {
		sums[k] = &sum{}
	}
	for _, m := range corpus {
		id, err := commitOne(ctx, s, m.Data)
		if err != nil {
			return nil, err
		}
		stored, err := storedBytes(ctx, b, id)
		if err != nil {
			return nil, err
		}
		if err := s.DeleteMessage(ctx, id); err != nil {
			return nil, err
		}
		for _, k := range []string{m.Kind, "all"} {
			s := sums[k]
			s.n++
			s.orig += len(m.Data)
			s.stored += stored
		}
	}
	var rows []benchRow
	for _, k := range kinds {
		s := sums[k]
		if s.n == 0 {
			continue
		}
		rows = append(rows, benchRow{
			Op:     fmt.Sprintf("zstd on corpus: %s (%d msgs, %.1f MiB)", k, s.n, float64(s.orig)/(1<<20)),
			Metric: "stored/original", Queue: float64(s.stored) / float64(s.orig), Target: "report",
		})
	}
	return rows, nil
}

// storedBytes returns the size, as stored in b, of message m's content
// object, if any, and its envelopes.
func storedBytes(ctx context.Context, b driver.Backend, m queue.MsgID) (int, error) {
	n := 0
	for _, kind := range []layout.Kind{layout.Content, layout.Envelope} {
		keys, _, err := b.List(ctx, layout.Key(layout.Handle{Kind: kind, Msg: uint32(m)}), "", 1000)
		if err != nil {
			return 0, err
		}
		for _, k := range keys {
			rc, _, err := b.Get(ctx, k)
			if err != nil {
				return 0, err
			}
			c, err := io.Copy(io.Discard, rc)
			rc.Close()
			if err != nil {
				return 0, err
			}
			n += int(c)
		}
	}
	return n, nil
}

func commitOne(ctx context.Context, s *queue.Store, content []byte) (queue.MsgID, error) {
	tx, err := s.Begin(ctx)
	if err != nil {
		return 0, err
	}
	if _, err := tx.AddEnvelope([]byte("bench")); err != nil {
		tx.Rollback(ctx)
		return 0, err
	}
	if _, err := tx.CommitContent(ctx, bytes.NewReader(content)); err != nil {
		tx.Rollback(ctx)
		return 0, err
	}
	return tx.ID(), nil
}

func readAll(ctx context.Context, s *queue.Store, m queue.MsgID, want int) error {
	rc, err := s.OpenContent(ctx, m)
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err == nil && int(n) != want {
		err = fmt.Errorf("read %d bytes of message %v, want %d", n, m, want)
	}
	return err
}
