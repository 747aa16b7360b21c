package conformance

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/seal"
)

// RunEncrypted runs the suite twice more over the adapter: with
// encryption on, and with compression and encryption on. Every Store the
// suite opens then seals content and envelopes (queue.Options.Encryption)
// with a key made for the run, and every line of the contract must hold
// as it does over plain objects. An adapter's test calls it next to Run.
func RunEncrypted(t *testing.T, mk HarnessMaker) {
	t.Run("Encrypted", func(t *testing.T) { Run(t, WithEncryption(mk, encryption(t, false))) })
	t.Run("CompressedEncrypted", func(t *testing.T) { Run(t, WithEncryption(mk, encryption(t, true))) })
}

// encryption returns a configuration with a fresh random key, and an
// older one as a rotated queue has.
func encryption(t testing.TB, compress bool) *queue.Encryption {
	t.Helper()
	var keys [2]*seal.Key
	for i := range keys {
		b := make([]byte, seal.KeySize)
		rand.Read(b)
		k, err := seal.NewKey(b)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k
	}
	return &queue.Encryption{Keys: seal.NewKeyring(keys[0], keys[1]), Compress: compress}
}

// WithEncryption returns a HarnessMaker whose harnesses are those of mk,
// except that every Store the suite opens over them uses e for
// queue.Options.Encryption, unless the test sets its own.
func WithEncryption(mk HarnessMaker, e *queue.Encryption) HarnessMaker {
	return func(ctx context.Context, t testing.TB) (Harness, error) {
		h, err := mk(ctx, t)
		if err != nil {
			return nil, err
		}
		return &sealedHarness{Harness: h, e: e}, nil
	}
}

// encryptedHarness is a Harness whose Stores encrypt.
type encryptedHarness interface {
	encryption() *queue.Encryption
}

type sealedHarness struct {
	Harness
	e *queue.Encryption
}

func (h *sealedHarness) encryption() *queue.Encryption { return h.e }
