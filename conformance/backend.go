package conformance

// The driver contract, tested on the Backend directly.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mxqueue/mxq/queue/driver"
)

// testBackend checks the driver contract directly.
func testBackend(t *testing.T, mk HarnessMaker) {
	e := newEnv(t, mk)
	b := e.backend()
	ctx := e.ctx
	put := func(key, data string, o driver.PutOptions) (driver.Version, error) {
		o.Size = int64(len(data))
		return b.Put(ctx, key, strings.NewReader(data), &o)
	}
	get := func(key string) (string, driver.Attrs, error) {
		rc, a, err := b.Get(ctx, key)
		if err != nil {
			return "", a, err
		}
		defer rc.Close()
		d, err := io.ReadAll(rc)
		return string(d), a, err
	}
	code := func(what string, err error, want driver.Code) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: no error, want code %d", what, want)
		}
		if got := b.ErrorCode(err); got != want {
			t.Fatalf("%s: ErrorCode(%v) = %d, want %d", what, err, got, want)
		}
	}

	t.Run("GetMissing", func(t *testing.T) {
		_, _, err := b.Get(ctx, "msg/00/00000001")
		code("Get missing", err, driver.CodeNotFound)
	})
	t.Run("PutGet", func(t *testing.T) {
		v, err := put("inc/00000002", "hello", driver.PutOptions{})
		wantErr(t, "Put", err, nil)
		d, a, err := get("inc/00000002")
		wantErr(t, "Get", err, nil)
		if d != "hello" || a.Version != v {
			t.Fatalf("Get = %q version %q, want %q version %q", d, a.Version, "hello", v)
		}
		if st, ok := b.(driver.Stater); ok {
			a, err := st.Stat(ctx, "inc/00000002")
			wantErr(t, "Stat", err, nil)
			if a.Version != v || a.Size != 5 {
				t.Fatalf("Stat = %+v, want version %q size 5", a, v)
			}
		}
	})
	t.Run("CreateOnly", func(t *testing.T) {
		_, err := put("inc/00000003", "one", driver.PutOptions{IfNoneMatch: true})
		wantErr(t, "first create", err, nil)
		_, err = put("inc/00000003", "two", driver.PutOptions{IfNoneMatch: true})
		code("second create", err, driver.CodePrecondition)
		if d, _, _ := get("inc/00000003"); d != "one" {
			t.Fatalf("after a refused create the object is %q, want %q", d, "one")
		}
	})
	t.Run("CreateOnlyRace", func(t *testing.T) {
		var wins, losses int
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := put("inc/00000004", fmt.Sprint(i), driver.PutOptions{IfNoneMatch: true})
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					wins++
				} else if b.ErrorCode(err) == driver.CodePrecondition {
					losses++
				} else {
					t.Errorf("create: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 || losses != 7 {
			t.Fatalf("8 racing creates: %d won, %d lost; want 1 and 7", wins, losses)
		}
	})
	t.Run("CompareAndSwap", func(t *testing.T) {
		v1, err := put("inc/00000005", "v1", driver.PutOptions{})
		wantErr(t, "Put", err, nil)
		v2, err := put("inc/00000005", "v2", driver.PutOptions{IfMatch: v1})
		wantErr(t, "CAS with the current version", err, nil)
		if v2 == v1 {
			t.Fatalf("CAS kept version %q", v1)
		}
		_, err = put("inc/00000005", "v3", driver.PutOptions{IfMatch: v1})
		code("CAS with a stale version", err, driver.CodePrecondition)
		if d, _, _ := get("inc/00000005"); d != "v2" {
			t.Fatalf("after a refused CAS the object is %q, want v2", d)
		}
		_, err = put("inc/00000006", "x", driver.PutOptions{IfMatch: v2})
		if err == nil {
			t.Fatal("CAS on a missing key succeeded")
		}
		c := b.ErrorCode(err)
		want := e.h.Capabilities().IfMatchMissing
		if c != driver.CodeNotFound && c != driver.CodePrecondition || want != 0 && c != want {
			t.Fatalf("CAS on a missing key: code %d (%v)", c, err)
		}
		if _, _, err := b.Get(ctx, "inc/00000006"); b.ErrorCode(err) != driver.CodeNotFound {
			t.Fatalf("a refused CAS on a missing key created it: %v", err)
		}
	})
	t.Run("CompareAndSwapRace", func(t *testing.T) {
		// Of writers that swap the same version, exactly one wins, round
		// after round.
		for round := range 3 {
			v, err := put("inc/00000009", "v0", driver.PutOptions{})
			wantErr(t, "Put", err, nil)
			var wins, losses atomic.Int32
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() {
					_, err := put("inc/00000009", fmt.Sprint("w", i), driver.PutOptions{IfMatch: v})
					switch {
					case err == nil:
						wins.Add(1)
					case b.ErrorCode(err) == driver.CodePrecondition:
						losses.Add(1)
					default:
						t.Errorf("CAS: %v (code %d)", err, b.ErrorCode(err))
					}
				})
			}
			wg.Wait()
			if wins.Load() != 1 || losses.Load() != 7 {
				t.Fatalf("round %d, 8 racing CAS: %d won, %d lost; want 1 and 7", round, wins.Load(), losses.Load())
			}
		}
	})
	t.Run("PutBrokenReader", func(t *testing.T) {
		// A body that breaks off, as a network body does, is not an
		// object: nothing may be stored. The error is the reader's own
		// io.ErrUnexpectedEOF, which io.ReadFull cannot tell from an end.
		for _, size := range []int64{-1, 8} { // unknown, or more than arrives
			r := io.MultiReader(strings.NewReader("part"), brokenReader{})
			_, err := b.Put(ctx, "inc/00000008", r, &driver.PutOptions{IfNoneMatch: true, Size: size})
			if err == nil {
				t.Fatalf("Put from a reader that broke off (size %d) succeeded", size)
			}
			if _, _, err := b.Get(ctx, "inc/00000008"); b.ErrorCode(err) != driver.CodeNotFound {
				t.Fatalf("Put from a reader that broke off (size %d) stored something: %v", size, err)
			}
		}
	})
	t.Run("Delete", func(t *testing.T) {
		_, err := put("inc/00000007", "x", driver.PutOptions{})
		wantErr(t, "Put", err, nil)
		wantErr(t, "Delete", b.Delete(ctx, "inc/00000007"), nil)
		_, _, err = b.Get(ctx, "inc/00000007")
		code("Get after Delete", err, driver.CodeNotFound)
		wantErr(t, "Delete missing", b.Delete(ctx, "inc/00000007"), nil)
	})
	t.Run("DeleteMulti", func(t *testing.T) {
		// Through driver.DeleteMulti, which a backend without the
		// capability serves one key at a time: every key goes, and
		// missing ones are no error.
		keys := []string{"own/multi/0000000000000001", "own/multi/0000000000000002", "own/multi/0000000000000003"}
		for _, k := range keys[:2] {
			_, err := put(k, "x", driver.PutOptions{})
			wantErr(t, "Put", err, nil)
		}
		wantErr(t, "DeleteMulti", driver.DeleteMulti(ctx, b, keys), nil)
		for _, k := range keys {
			_, _, err := b.Get(ctx, k)
			code("Get after DeleteMulti", err, driver.CodeNotFound)
		}
	})
	t.Run("DeleteIfMatch", func(t *testing.T) {
		v1, err := put("inc/0000000b", "v1", driver.PutOptions{})
		wantErr(t, "Put", err, nil)
		v2, err := put("inc/0000000b", "v2", driver.PutOptions{IfMatch: v1})
		wantErr(t, "CAS", err, nil)
		err = driver.DeleteIfMatch(ctx, b, "inc/0000000b", v1)
		if errors.Is(err, errors.ErrUnsupported) {
			// Wrappers say so for a Backend without the capability.
			t.Log("no driver.ConditionalDeleter: fenced deletes take a tombstone and a delete")
			return
		}
		code("DeleteIfMatch with a stale version", err, driver.CodePrecondition)
		if d, _, _ := get("inc/0000000b"); d != "v2" {
			t.Fatalf("after a refused DeleteIfMatch the object is %q, want v2", d)
		}
		wantErr(t, "DeleteIfMatch with the current version", driver.DeleteIfMatch(ctx, b, "inc/0000000b", v2), nil)
		_, _, err = b.Get(ctx, "inc/0000000b")
		code("Get after DeleteIfMatch", err, driver.CodeNotFound)
		code("DeleteIfMatch of a missing key", driver.DeleteIfMatch(ctx, b, "inc/0000000b", v2), driver.CodeNotFound)
		// Of a swap and a delete conditioned on the same version, at
		// most one wins, round after round.
		for round := range 3 {
			v, err := put("inc/0000000c", "v0", driver.PutOptions{})
			wantErr(t, "Put", err, nil)
			var wins atomic.Int32
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Go(func() {
					var err error
					if i%2 == 0 {
						err = driver.DeleteIfMatch(ctx, b, "inc/0000000c", v)
					} else {
						_, err = put("inc/0000000c", fmt.Sprint("w", i), driver.PutOptions{IfMatch: v})
					}
					switch c := b.ErrorCode(err); {
					case err == nil:
						wins.Add(1)
					case c != driver.CodePrecondition && c != driver.CodeNotFound:
						t.Errorf("racing DeleteIfMatch and CAS: %v (code %d)", err, c)
					}
				})
			}
			wg.Wait()
			if wins.Load() != 1 {
				t.Fatalf("round %d: %d of 4 deletes and 4 swaps on one version won, want 1", round, wins.Load())
			}
		}
	})
	t.Run("List", func(t *testing.T) {
		var want []string
		for i := range 25 {
			k := fmt.Sprintf("own/lister/%016x", i+1)
			want = append(want, k)
			if _, err := put(k, "x", driver.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		// Keys whose byte order differs from a path order, and keys just
		// outside the prefix on either side.
		want = append(want, "own/lister/0-", "own/lister/0.a", "own/lister/0_b", "own/lister/0/x", "own/lister/x")
		for _, k := range want[25:] {
			if _, err := put(k, "x", driver.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		slices.Sort(want)
		for _, k := range []string{"own/listeq/z", "own/lister0/x", "own/listers"} {
			if _, err := put(k, "x", driver.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		after := ""
		for range 100 {
			keys, more, err := b.List(ctx, "own/lister/", after, 7)
			wantErr(t, "List", err, nil)
			if len(keys) > 7 {
				t.Fatalf("List returned %d keys over a limit of 7", len(keys))
			}
			got = append(got, keys...)
			if !more {
				break
			}
			after = keys[len(keys)-1]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("paged List = %v, want %v", got, want)
		}
		keys, _, err := b.List(ctx, "own/lister/", want[22], 1000)
		wantErr(t, "List", err, nil)
		if !slices.Equal(keys, want[23:]) {
			t.Fatalf("List after %s = %v, want %v", want[22], keys, want[23:])
		}
		keys, _, err = b.List(ctx, "own/", "own/lister0", 1000)
		wantErr(t, "List", err, nil)
		if want := []string{"own/lister0/x", "own/listers"}; !slices.Equal(keys, want) {
			t.Fatalf("List of own/ after own/lister0 = %v, want %v", keys, want)
		}
		keys, more, err := b.List(ctx, "nothing/", "", 10)
		if err != nil || len(keys) != 0 || more {
			t.Fatalf("List of an empty prefix = %q, more %v, %v", keys, more, err)
		}
	})
	t.Run("Ping", func(t *testing.T) {
		p, ok := b.(driver.Pinger)
		if !ok {
			t.Skip("not a Pinger")
		}
		wantErr(t, "Ping", p.Ping(ctx), nil)
	})
	t.Run("CancelledContext", func(t *testing.T) {
		// Once ctx is done, every method fails with ctx's error or one
		// that ErrorCode maps to CodeUnavailable.
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		check := func(op string, err error) {
			t.Helper()
			if !errors.Is(err, context.Canceled) && (err == nil || b.ErrorCode(err) != driver.CodeUnavailable) {
				t.Errorf("%s with a cancelled ctx: %v", op, err)
			}
		}
		_, err := b.Put(cctx, "inc/0000000a", strings.NewReader("x"), &driver.PutOptions{Size: 1})
		check("Put", err)
		_, err = b.Put(cctx, "inc/0000000a", strings.NewReader("x"), &driver.PutOptions{Size: 1, IfNoneMatch: true})
		check("Put create-only", err)
		_, _, err = b.Get(cctx, "inc/00000002")
		check("Get", err)
		_, _, err = b.List(cctx, "inc/", "", 10)
		check("List", err)
		check("Delete", b.Delete(cctx, "inc/00000002"))
		if st, ok := b.(driver.Stater); ok {
			_, err := st.Stat(cctx, "inc/00000002")
			check("Stat", err)
		}
		if p, ok := b.(driver.Pinger); ok {
			check("Ping", p.Ping(cctx))
		}
	})
}
