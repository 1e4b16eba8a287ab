// Package durable is the one way ostree-prefinalize replaces a file whole:
// a temporary file beside the final name, written, fsynced, renamed over
// the final name, and the parent directory fsynced. Every writer outside
// the /etc merge (the persisted plan, tombstones, the metrics textfile)
// goes through [FS.Write], so one set of fsync rules holds everywhere and
// each step can be made to fail in a test.
//
// # Basics
//
// [Real] returns the filesystem of the running system; a test copies it,
// replaces one function field with a failing one, and checks that the old
// file is untouched and no temporary is left behind. [WriteFile] is the
// path-based form for callers that hold no directory descriptor.
//
// # Caveats
//
// Everything is done relative to a directory descriptor with single name
// components (never a path), and the temporary is created O_EXCL|O_NOFOLLOW:
// a symlink planted under the temporary's name is never followed. The
// directory itself must already be trusted by the caller.
package durable

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Sync says how far a write is made durable before Write returns.
type Sync int

const (
	// Full: fsync the file, rename it, fsync the directory. After Write
	// returns the new content survives a crash. The zero value.
	Full Sync = iota
	// FileOnly: fsync the file before the rename (so a crash can never
	// leave a torn file under the final name) but not the directory: the
	// caller makes the directory durable later, once after many writes
	// (the deleter's tombstones: its barrier fsyncs each changed directory).
	FileOnly
	// AtomicOnly: no fsync at all, only the rename. For files rewritten on
	// every run whose loss in a crash is harmless (the metrics textfile):
	// readers see the old file or the new one, never a partial one.
	AtomicOnly
)

// FS is the set of system calls Write makes, one field per step, so a test
// can make any single step fail on the real disk (see Real).
type FS struct {
	// CreateTemp creates name in dir, exclusively and without following a
	// symlink, for writing.
	CreateTemp func(dir int, dirPath, name string) (*os.File, error)
	// Chmod sets the final mode on the temporary through its descriptor
	// (whatever the umask was at creation).
	Chmod func(f *os.File, perm uint32) error
	// Fsync flushes the temporary's data and metadata: without it a crash
	// after the rename can leave the final name pointing at an empty or
	// torn file (the rename may reach the disk before the data does).
	Fsync func(f *os.File) error
	// Close closes the temporary; a late write error can surface here.
	Close func(f *os.File) error
	// Rename atomically replaces to with from in dir: a reader (or a
	// crash) sees the old file or the complete new one, never a mix.
	Rename func(dir int, from, to string) error
	// FsyncDir flushes the directory: the rename is a change of the
	// directory, not of the file, and is only durable once it is.
	FsyncDir func(dir int) error
	// Remove unlinks name in dir (stale or failed temporaries).
	Remove func(dir int, name string) error
}

// Real returns the FS of the running system.
func Real() FS {
	return FS{
		CreateTemp: func(dir int, dirPath, name string) (*os.File, error) {
			fd, err := unix.Openat(dir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
			if err != nil {
				return nil, err
			}
			return os.NewFile(uintptr(fd), filepath.Join(dirPath, name)), nil
		},
		Chmod:    func(f *os.File, perm uint32) error { return unix.Fchmod(int(f.Fd()), perm) },
		Fsync:    func(f *os.File) error { return f.Sync() },
		Close:    func(f *os.File) error { return f.Close() },
		Rename:   func(dir int, from, to string) error { return unix.Renameat(dir, from, dir, to) },
		FsyncDir: unix.Fsync,
		Remove:   func(dir int, name string) error { return unix.Unlinkat(dir, name, 0) },
	}
}

// Target names the file Write replaces.
type Target struct {
	// Dir is an open directory descriptor; the caller keeps ownership.
	Dir int
	// DirPath is Dir's path, for messages and for the temporary's
	// os.File name (what Fill sees as f.Name()).
	DirPath string
	// Name is the final name in Dir: one component, no slash.
	Name string
	// Perm is the final mode of the file (applied by fchmod, whatever the
	// umask).
	Perm uint32
	// Sync: how durable (zero value: Full).
	Sync Sync
	// Temp, when set, is the fixed temporary name; a stale one (left by a
	// crash) is removed first. Only for files that a lock already makes
	// single-writer. Empty: a fresh unique name "."+Name+".<random>.tmp" (never ending in
	// the final name's suffix, e.g. .prom, so no collector reads it).
	Temp string
}

// Write replaces t.Name in t.Dir with what fill writes into the temporary:
// create, fill, chmod, fsync (unless AtomicOnly), close, rename, fsync the
// directory (when Full). On any failure before the rename the temporary is
// removed and the old file is untouched. Errors are *os.PathError naming
// the step and the final path.
func (fs FS) Write(t Target, fill func(f *os.File) error) (err error) {
	final := filepath.Join(t.DirPath, t.Name)
	fail := func(op string, err error) error {
		return &os.PathError{Op: op, Path: final, Err: err}
	}
	tmp := t.Temp
	var f *os.File
	if tmp != "" {
		if err := fs.Remove(t.Dir, tmp); err != nil && !errors.Is(err, unix.ENOENT) {
			return fail("remove stale "+tmp, err)
		}
		if f, err = fs.CreateTemp(t.Dir, t.DirPath, tmp); err != nil {
			return fail("create temporary", err)
		}
	} else {
		for i := 0; ; i++ {
			tmp = "." + t.Name + "." + strconv.FormatUint(rand.Uint64(), 36) + ".tmp"
			f, err = fs.CreateTemp(t.Dir, t.DirPath, tmp)
			if errors.Is(err, unix.EEXIST) && i < 100 {
				continue
			}
			if err != nil {
				return fail("create temporary", err)
			}
			break
		}
	}
	renamed := false
	defer func() {
		if f != nil {
			f.Close() // after a failure only; the error that matters is err
		}
		if !renamed {
			// The temporary name is ours alone; removing it is safe, and
			// if it fails a stray temporary is inert.
			_ = fs.Remove(t.Dir, tmp)
		}
	}()
	if err := fill(f); err != nil {
		return fail("write", err)
	}
	if err := fs.Chmod(f, t.Perm); err != nil {
		return fail("chmod", err)
	}
	if t.Sync != AtomicOnly {
		if err := fs.Fsync(f); err != nil {
			return fail("fsync", err)
		}
	}
	cf := f
	f = nil
	if err := fs.Close(cf); err != nil {
		return fail("close", err)
	}
	if err := fs.Rename(t.Dir, tmp, t.Name); err != nil {
		return fail("rename", err)
	}
	renamed = true
	if t.Sync == Full {
		if err := fs.FsyncDir(t.Dir); err != nil {
			return fail("fsync directory", err)
		}
	}
	return nil
}

// WriteFile is Write for a path: it opens the parent directory (which must
// exist) and replaces the file there with fs.
func (fs FS) WriteFile(path string, perm uint32, sync Sync, fill func(f *os.File) error) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	dir = filepath.Clean(dir)
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open directory", Path: path, Err: err}
	}
	defer unix.Close(dfd)
	return fs.Write(Target{Dir: dfd, DirPath: dir, Name: name, Perm: perm, Sync: sync}, fill)
}

// Bytes is a fill function writing data.
func Bytes(data []byte) func(f *os.File) error {
	return func(f *os.File) error {
		_, err := f.Write(data)
		return err
	}
}
