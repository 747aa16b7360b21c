// Package file keeps the queue in a local directory, laid out like
// OpenSMTPD's queue_fs in hashed buckets. It is the embedded default of
// the mxq command. Any number of processes on one host may share the
// directory: every write that must be exclusive is done under a lock on
// its bucket directory, and every replacement is atomic.
//
// # URLs
//
// file:///abs/path opens the queue in the directory /abs/path, creating
// it if it does not exist. The host must be empty or "localhost", and no
// query parameters are accepted. See URLOpener.
//
// # Keys
//
// A key's first component is a directory (inc, msg, evp, ...). When the
// second component is a two-hex-digit bucket, as in msg/ab/... and
// evp/ab/..., it is a directory too. The rest of the key becomes the file
// name with every "/" replaced by ",", so evp/ab/ab12cd34/ab12cd3400000001
// is the file evp/ab/ab12cd34,ab12cd3400000001. The number of directories
// is therefore bounded and none is ever removed. Keys consist of
// [a-z0-9._-/] only, so no other escaping is needed. Files being written
// live in .tmp until they are renamed into place.
//
// # Writes
//
// A Put writes a temporary file, fsyncs it, then, holding an exclusive
// flock on the bucket directory, checks the condition, renames (or, for a
// create-only write, links) the file into place and fsyncs the directory.
// Deletes take the same lock. Reads take no lock: renames are atomic.
// The version of a file is its inode number, modification time and size.
//
// # Errors
//
// A missing file is driver.CodeNotFound, a refused condition
// driver.CodePrecondition. Other errors are the operating system's, as
// *fs.PathError, and are not classified.
package file

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/mxqueue/mxq/queue"
	"github.com/mxqueue/mxq/queue/driver"
)

// Options are the options of Open.
type Options struct {
	// Queue are the options of the Store.
	Queue queue.Options
}

// Open returns a Store over the queue in the directory root, which must be
// an absolute path. The directory is created if it does not exist; if the
// path exists but is not a directory, the error wraps queue.ErrInvalid.
// opts may be nil.
func Open(ctx context.Context, root string, opts *Options) (*queue.Store, error) {
	if opts == nil {
		opts = new(Options)
	}
	b, err := openBackend(root)
	if err != nil {
		return nil, err
	}
	return queue.New(b, &opts.Queue)
}

type backend struct {
	root string
}

var _ driver.Backend = (*backend)(nil)
var _ driver.Stater = (*backend)(nil)
var _ driver.ConditionalDeleter = (*backend)(nil)
var _ driver.MultiDeleter = (*backend)(nil)

var errPrecondition = errors.New("file: precondition failed")

func openBackend(root string) (*backend, error) {
	if !filepath.IsAbs(root) {
		return nil, &queue.Error{Op: "open", ID: root, Kind: queue.ErrInvalid, Err: errors.New("the queue directory must be an absolute path")}
	}
	root = filepath.Clean(root)
	if fi, err := os.Stat(root); err == nil && !fi.IsDir() {
		return nil, &queue.Error{Op: "open", ID: root, Kind: queue.ErrInvalid, Err: errors.New("exists and is not a directory")}
	}
	if err := os.MkdirAll(filepath.Join(root, ".tmp"), 0o700); err != nil {
		return nil, &queue.Error{Op: "open", ID: root, Err: err}
	}
	return &backend{root: root}, nil
}

func isShard(s string) bool {
	return len(s) == 2 && strings.Trim(s, "0123456789abcdef") == ""
}

// path maps a key to its directory and file name.
func (b *backend) path(key string) (dir, name string, err error) {
	// The shared rule keeps ",", the separator below, and leading dots,
	// the temporary files, out of keys.
	if err := driver.ValidKey(key); err != nil {
		return "", "", fmt.Errorf("file: %w", err)
	}
	comps := strings.Split(key, "/")
	d := comps[0]
	rest := comps[1:]
	if len(rest) >= 2 && isShard(rest[0]) {
		d += "/" + rest[0]
		rest = rest[1:]
	}
	return filepath.Join(b.root, filepath.FromSlash(d)), strings.Join(rest, ","), nil
}

// Get implements driver.Backend.Get.
func (b *backend) Get(ctx context.Context, key string) (io.ReadCloser, driver.Attrs, error) {
	if err := ctx.Err(); err != nil {
		return nil, driver.Attrs{}, err
	}
	dir, name, err := b.path(key)
	if err != nil {
		return nil, driver.Attrs{}, err
	}
	f, err := openFile(filepath.Join(dir, name), syscall.O_RDONLY, 0)
	if err != nil {
		return nil, driver.Attrs{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, driver.Attrs{}, err
	}
	return struct {
		io.Reader
		io.Closer
	}{driver.ContextReader(ctx, f), f}, attrs(fi), nil
}

func attrs(fi fs.FileInfo) driver.Attrs {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return driver.Attrs{
		Version: driver.Version(fmt.Sprintf("%x.%x.%x", ino, fi.ModTime().UnixNano(), fi.Size())),
		Size:    fi.Size(),
	}
}

// Stat implements driver.Stater.
func (b *backend) Stat(ctx context.Context, key string) (driver.Attrs, error) {
	if err := ctx.Err(); err != nil {
		return driver.Attrs{}, err
	}
	dir, name, err := b.path(key)
	if err != nil {
		return driver.Attrs{}, err
	}
	fi, err := os.Stat(filepath.Join(dir, name))
	if err != nil {
		return driver.Attrs{}, err
	}
	return attrs(fi), nil
}

// Put implements driver.Backend.Put.
func (b *backend) Put(ctx context.Context, key string, r io.Reader, opts *driver.PutOptions) (driver.Version, error) {
	dir, name, err := b.path(key)
	if err != nil {
		return "", err
	}
	tmp, fi, err := b.writeTemp(ctx, r)
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp)
	if err := ctx.Err(); err != nil {
		return "", err
	}
	target := filepath.Join(dir, name)
	err = b.locked(dir, func(d *os.File) error {
		if opts.IfMatch != "" {
			cur, err := os.Stat(target)
			if err != nil {
				return err
			}
			if attrs(cur).Version != opts.IfMatch {
				return errPrecondition
			}
		}
		if opts.IfNoneMatch {
			if err := os.Link(tmp, target); err != nil {
				if errors.Is(err, fs.ErrExist) {
					return errPrecondition
				}
				return err
			}
		} else if err := os.Rename(tmp, target); err != nil {
			return err
		}
		return syncFile(d)
	})
	if err != nil {
		return "", err
	}
	return attrs(fi).Version, nil
}

// writeTemp copies r into a new file under .tmp and fsyncs it.
func (b *backend) writeTemp(ctx context.Context, r io.Reader) (string, fs.FileInfo, error) {
	var rnd [12]byte
	rand.Read(rnd[:])
	path := filepath.Join(b.root, ".tmp", hex.EncodeToString(rnd[:]))
	f, err := openFile(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o600)
	if err != nil {
		return "", nil, err
	}
	fail := func(err error) (string, fs.FileInfo, error) {
		f.Close()
		os.Remove(path)
		return "", nil, err
	}
	if _, err := io.Copy(f, driver.ContextReader(ctx, r)); err != nil {
		return fail(err)
	}
	fsyncs.Add(1)
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", nil, err
	}
	return path, fi, nil
}

// locked runs fn holding an exclusive flock on dir, creating dir first if
// needed, and hands it the open directory, which fn fsyncs to make a change
// durable. Directories are never removed, so the lock always guards the
// directory that paths resolve to.
func (b *backend) locked(dir string, fn func(d *os.File) error) error {
	d, err := openFile(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		mkdirs.Add(1)
		syncDir(filepath.Dir(dir))
		d, err = openFile(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	}
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		err = syscall.Flock(int(d.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return &fs.PathError{Op: "flock", Path: dir, Err: err}
	}
	defer syscall.Flock(int(d.Fd()), syscall.LOCK_UN)
	return fn(d)
}

// fsyncs counts the fsyncs of this process's file backends, mkdirs the
// directories they created and opens the files and directories they
// opened, for the tests that hold the number of each per operation down.
var fsyncs, mkdirs, opens atomic.Int64

// openFile opens path as os.OpenFile does, but not for the runtime's
// poller: os.OpenFile offers every file it opens to epoll, which refuses
// regular files and directories, and that costs five system calls per open
// (the file made non-blocking, the refusal, and blocking again). These are
// on the commit's path.
func openFile(path string, flag int, perm uint32) (*os.File, error) {
	for {
		fd, err := syscall.Open(path, flag|syscall.O_CLOEXEC, perm)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		opens.Add(1)
		return os.NewFile(uintptr(fd), path), nil
	}
}

// syncFile fsyncs f, an open file or directory.
func syncFile(f *os.File) error {
	fsyncs.Add(1)
	return f.Sync()
}

// syncDir fsyncs the directory dir.
func syncDir(dir string) error {
	d, err := openFile(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		fsyncs.Add(1)
		return err
	}
	defer d.Close()
	return syncFile(d)
}

// Delete implements driver.Backend.Delete.
func (b *backend) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, name, err := b.path(key)
	if err != nil {
		return err
	}
	return b.locked(dir, func(*os.File) error {
		err := os.Remove(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	})
}

// DeleteMulti implements driver.MultiDeleter: the keys of one directory
// are removed under one hold of its lock, and a directory that does not
// exist holds nothing to remove. Like Delete, it does not fsync.
func (b *backend) DeleteMulti(ctx context.Context, keys []string) error {
	byDir := make(map[string][]string)
	var dirs []string
	for _, k := range keys {
		dir, name, err := b.path(k)
		if err != nil {
			return err
		}
		if _, seen := byDir[dir]; !seen {
			dirs = append(dirs, dir)
		}
		byDir[dir] = append(byDir[dir], name)
	}
	for _, dir := range dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		err := b.locked(dir, func(*os.File) error {
			for _, name := range byDir[dir] {
				if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// DeleteIfMatch implements driver.ConditionalDeleter: under the
// directory's lock, the file is removed if its version is v, and the
// removal is made durable with an fsync of the directory, as a write is.
func (b *backend) DeleteIfMatch(ctx context.Context, key string, v driver.Version) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, name, err := b.path(key)
	if err != nil {
		return err
	}
	target := filepath.Join(dir, name)
	return b.locked(dir, func(d *os.File) error {
		cur, err := os.Stat(target)
		if err != nil {
			return err
		}
		if attrs(cur).Version != v {
			return errPrecondition
		}
		if err := os.Remove(target); err != nil {
			return err
		}
		return syncFile(d)
	})
}

// List implements driver.Backend.List. It reads the directories that may
// hold keys under prefix, in key order, and stops once it has limit keys.
func (b *backend) List(ctx context.Context, prefix, startAfter string, limit int) ([]string, bool, error) {
	var out []string
	tops, err := readNames(b.root)
	if err != nil {
		return nil, false, err
	}
	emit := func(keys []string) bool {
		slices.Sort(keys)
		for _, k := range keys {
			if !strings.HasPrefix(k, prefix) || k <= startAfter {
				continue
			}
			if len(out) == limit {
				return true
			}
			out = append(out, k)
		}
		return false
	}
	for _, top := range tops {
		if strings.HasPrefix(top, ".") || !mayMatch(top+"/", prefix, startAfter) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		subs, err := readEntries(filepath.Join(b.root, top))
		if err != nil {
			return nil, false, err
		}
		// A top directory holds files and shard directories. The keys of
		// a shard all lie between top/<shard>/ and top/<shard>0, apart
		// from any file's key, so taking the entries in the order of
		// their keys, and reading a shard only when its turn comes, lists
		// in key order and stops early.
		type entry struct {
			key   string // the file's key, or top/<shard>/ for a shard
			shard bool
		}
		var entries []entry
		for _, sub := range subs {
			name := sub.Name()
			if sub.IsDir() && isShard(name) {
				entries = append(entries, entry{top + "/" + name + "/", true})
				continue
			}
			entries = append(entries, entry{top + "/" + strings.ReplaceAll(name, ",", "/"), false})
		}
		slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.key, b.key) })
		var files []string
		for _, e := range entries {
			if !e.shard {
				files = append(files, e.key)
				continue
			}
			if emit(files) {
				return out, true, nil
			}
			files = files[:0]
			if !mayMatch(e.key, prefix, startAfter) {
				continue
			}
			names, err := readNames(filepath.Join(b.root, filepath.FromSlash(e.key)))
			if err != nil {
				return nil, false, err
			}
			keys := make([]string, len(names))
			for i, n := range names {
				keys[i] = e.key + strings.ReplaceAll(n, ",", "/")
			}
			if emit(keys) {
				return out, true, nil
			}
		}
		if emit(files) {
			return out, true, nil
		}
	}
	return out, false, nil
}

// mayMatch reports whether keys starting with dirKey may start with prefix
// and sort after startAfter.
func mayMatch(dirKey, prefix, startAfter string) bool {
	if !strings.HasPrefix(dirKey, prefix) && !strings.HasPrefix(prefix, dirKey) {
		return false
	}
	// Every key in dirKey sorts below dirKey with its last byte raised.
	if startAfter != "" {
		upper := dirKey[:len(dirKey)-1] + string(rune(dirKey[len(dirKey)-1]+1))
		if upper <= startAfter {
			return false
		}
	}
	return true
}

// readEntries reads a directory's entries with their types; a missing
// directory has none.
func readEntries(dir string) ([]os.DirEntry, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return entries, err
}

func readNames(dir string) ([]string, error) {
	d, err := openFile(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// ErrorCode implements driver.Backend.ErrorCode.
func (b *backend) ErrorCode(err error) driver.Code {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return driver.CodeNotFound
	case errors.Is(err, errPrecondition):
		return driver.CodePrecondition
	case errors.Is(err, queue.ErrInvalid):
		return driver.CodeInvalid
	}
	return driver.CodeUnknown
}

// Close implements driver.Backend.Close. There is nothing to release.
func (b *backend) Close() error { return nil }
