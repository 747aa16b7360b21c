package seal_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mxqueue/mxq/adapters/mem"
	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/seal"
)

// A Store that encrypts, with a key made on the spot; a real one comes
// from seal.LoadKeyFile, or from the key_file parameter of a queue URL.
func Example() {
	ctx := context.Background()
	secret := make([]byte, seal.KeySize)
	rand.Read(secret)
	key, _ := seal.NewKey(secret)
	enc := &queue.Encryption{Keys: seal.NewKeyring(key), Compress: true}
	st, err := queue.New(mem.OpenBackend("seal-example"), &queue.Options{Encryption: enc})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close()
	tx, _ := st.Begin(ctx)
	tx.AddEnvelope([]byte("rcpt: bob@example.org"))
	tx.WriteContent(ctx, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))
	if err := tx.Commit(ctx); err != nil {
		fmt.Println(err)
		return
	}
	rc, _ := st.OpenContent(ctx, tx.ID())
	b, _ := io.ReadAll(rc)
	rc.Close()
	fmt.Printf("%q\n", b)

	// A Store without the key sees that the content is sealed.
	plain, _ := queue.New(mem.OpenBackend("seal-example"), nil)
	defer plain.Close()
	_, err = plain.OpenContent(ctx, tx.ID())
	fmt.Println(errors.Is(err, queue.ErrCorrupt), errors.Is(err, seal.ErrUnknownKey))
	// Output:
	// "Subject: hi\r\n\r\nhello\r\n"
	// true true
}
