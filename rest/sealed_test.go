package rest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/adapters/restclient"
	"github.com/mxqueue/mxq/conformance"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
	"github.com/mxqueue/mxq/queue/layout"
	"github.com/mxqueue/mxq/queue/seal"
)

func serverEncryption(t testing.TB) *queue.Encryption {
	t.Helper()
	b := make([]byte, seal.KeySize)
	rand.Read(b)
	k, err := seal.NewKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return &queue.Encryption{Keys: seal.NewKeyring(k), Compress: true, Require: true}
}

// TestConformanceServerEncrypted runs the suite through plain REST clients
// against a handler whose store encrypts: the server encrypts for its
// store, and the clients see the queue as it is.
func TestConformanceServerEncrypted(t *testing.T) {
	conformance.Run(t, func(ctx context.Context, t testing.TB) (conformance.Harness, error) {
		st, err := queue.New(mem.OpenBackend(fmt.Sprintf("rest-sealed-%d", harnesses.Add(1))), &queue.Options{Encryption: serverEncryption(t)})
		if err != nil {
			return nil, err
		}
		return serve(st, conformance.Capabilities{ContentInMemory: true, IfMatchMissing: driver.CodeNotFound}), nil
	})
}

// TestServerSeals checks what lies in the store behind the server, for a
// client that does not encrypt and for one that encrypts end to end.
func TestServerSeals(t *testing.T) {
	ctx := t.Context()
	name := fmt.Sprintf("rest-sealed-%d", harnesses.Add(1))
	st, err := queue.New(mem.OpenBackend(name), &queue.Options{Encryption: serverEncryption(t)})
	if err != nil {
		t.Fatal(err)
	}
	h := serve(st, conformance.Capabilities{})
	defer h.Close()
	content := []byte(strings.Repeat("Subject: a secret\r\n", 50))
	for _, tc := range []struct {
		name string
		enc  *queue.Encryption
	}{
		{"plain client", nil},
		{"encrypting client", serverEncryption(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := restclient.OpenBackend(ctx, h.srv.URL, &restclient.Options{Token: testToken})
			if err != nil {
				t.Fatal(err)
			}
			c, err := queue.New(b, &queue.Options{Encryption: tc.enc})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			id, _ := tx.AddEnvelope([]byte("rcpt@example.org"))
			if _, err := tx.WriteContent(ctx, bytes.NewReader(content)); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			raw := mem.OpenBackend(name)
			for _, key := range []string{
				layout.Key(layout.Handle{Kind: layout.Content, Msg: uint32(id.MsgID())}),
				layout.Key(layout.Handle{Kind: layout.Envelope, Evp: uint64(id)}),
			} {
				rc, _, err := raw.Get(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				stored, _ := io.ReadAll(rc)
				rc.Close()
				if !bytes.HasPrefix(stored, []byte(seal.Magic)) || bytes.Contains(stored, []byte("secret")) || bytes.Contains(stored, []byte("rcpt@")) {
					t.Fatalf("%s is stored in the clear: %q", key, stored[:min(40, len(stored))])
				}
			}
			rc, err := c.OpenContent(ctx, id.MsgID())
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("content read back: %v", err)
			}
		})
	}
}
