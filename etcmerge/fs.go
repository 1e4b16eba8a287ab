package etcmerge

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Sentinels of the /etc merge. Every error of this package that is not an
// I/O error of the named file wraps one of these (or ostree.ErrCorrupt for
// bytes read from disk).
var (
	// ErrUnsafe: an operation would follow a symbolic link or leave the
	// target directory. ostree would follow such links; we refuse and let
	// the caller fall back to ostree's own behaviour ("do less").
	ErrUnsafe = errors.New("unsafe path")
	// ErrNewDefaultDir is ostree's "Modified config file newly defaults to
	// directory" error: the new etc has a directory where the booted etc
	// has a modified non-directory. ostree's finalization fails on it.
	ErrNewDefaultDir = errors.New("modified config file newly defaults to directory")
	// ErrNotCopyable is libglnx's "Cannot copy non-regular/non-symlink
	// file": a fifo, socket or device inside a directory that the merge
	// copies whole. ostree's finalization fails on it.
	ErrNotCopyable = errors.New("cannot copy non-regular/non-symlink file")
	// ErrBadPath: a relative path given to us is not a clean path inside etc.
	ErrBadPath = errors.New("bad path")
	// ErrPlanted: a privileged file (setuid, setgid, file capabilities)
	// that an unprivileged user may have planted in /etc (see
	// plantedPrivilege). It wraps ErrUnsafe: the callers fall back and
	// ostree's merge at shutdown copies what is there then.
	ErrPlanted = fmt.Errorf("privileged file that a user may have planted, left to ostree: %w", ErrUnsafe)
)

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Attr is the metadata the merge gives a written entry.
type Attr struct {
	Mode     uint32 // permission bits (07777); ignored for symlinks
	UID, GID uint32
	// Xattrs are set in this order. For directories, ExactXattrs removes
	// any other attribute the directory already has.
	Xattrs      []Xattr
	ExactXattrs bool
	// Times: regular files get Atime/Mtime when SetTimes (libglnx's
	// glnx_file_copy_at preserves them; directories and symlinks it does not).
	Atime, Mtime unix.Timespec
	SetTimes     bool
}

// FS is the only way the merge writes. Every function receives a directory
// fd that was opened beneath the target etc without following any symlink
// (see target.openDir) and a single name component, never a path: nothing
// handed to an FS can address a file outside the target directory, which is
// how the booted etc and usr/etc are structurally never written.
//
// Tests copy RealFS() and replace one field to inject a failure.
type FS struct {
	// WriteFileAtomic writes src as name in dir, whole: a temporary file in
	// dir gets the content, owner, xattrs, mode, times and an fsync, and is
	// then renamed over name. A reader (or a crash) sees the old entry or
	// the complete new one, never a truncated file.
	WriteFileAtomic func(dir *os.File, name string, src io.Reader, a Attr) error
	// SymlinkAtomic creates a symlink to target as a temporary name in dir,
	// sets xattrs and owner (no-follow), and renames it over name.
	SymlinkAtomic func(dir *os.File, name, target string, a Attr) error
	// Mkdir creates name in dir with mode (attributes are set afterwards
	// through SetDirAttr, as ostree does with its 0700 mkdirat).
	Mkdir func(dir *os.File, name string, mode uint32) error
	// SetDirAttr sets xattrs, then owner, then mode on an open directory, in
	// the order of ostree's dirfd_copy_attributes_and_xattrs.
	SetDirAttr func(d *os.File, a Attr) error
	// Remove unlinks a non-directory entry.
	Remove func(dir *os.File, name string) error
	// RemoveAll removes name recursively without following symlinks; a
	// missing name is not an error (glnx_shutil_rm_rf_at).
	RemoveAll func(dir *os.File, name string) error
	// Fsync flushes one open file or directory. The merge engine never
	// calls it (see Syncfs); it is here for callers that need one file
	// durable.
	Fsync func(f *os.File) error
	// Syncfs flushes the whole filesystem holding f. Only the seal calls
	// it (SyncEtc, once, before `finalize --pre` records "sealed"); stage
	// (Merge, MergePaths), the watcher's batches (MergePaths) and Reset
	// issue no syncfs and no fsync, so that a watcher running for days
	// adds no flushes of the whole sysroot filesystem. This is safe
	// because:
	//   - each written file is whole before its rename, so any reader
	//     (ostree included) sees the old entry or the complete new one;
	//   - ostree reads the staged etc only at shutdown, after the seal,
	//     and the seal's one syncfs flushes every write made before it
	//     (by stage and every batch too: syncfs covers the filesystem, not
	//     just the files of this call);
	//   - a crash before the seal loses /run, and with it the staged
	//     deployment (ostree stages in /run): a staged etc whose writes
	//     did not reach the disk can never be booted; and a restart of
	//     ours before the seal re-checks the booted etc against the
	//     baseline (or falls back and resets), so nothing is trusted that
	//     was not written in this boot's page cache.
	Syncfs func(f *os.File) error

	// SkipSpecialInDirs is not a filesystem function but the merge's one
	// version-dependent choice (ostree.Choices.EtcMergeSkipsSpecialInDirs,
	// set by the lifecycle from the installed ostree): a fifo, socket or
	// device inside a directory that the merge copies whole is skipped, as
	// copy_dir_recurse does from ostree 2024.2, instead of failing with
	// ErrNotCopyable as 2022.7 does. false (the zero value) is 2022.7.
	SkipSpecialInDirs bool
}

// SyncEtc makes the staged etc durable: one Syncfs on its filesystem. The
// seal calls it after its last write and before recording "sealed"; it
// also flushes what stage and the watcher wrote earlier (see FS.Syncfs).
func SyncEtc(fs FS, newEtc string) error {
	t, err := openTree(newEtc)
	if err != nil {
		return err
	}
	defer t.Close()
	return fs.Syncfs(t.root)
}

// RealFS is the FS on the real disk.
func RealFS() FS {
	return FS{
		WriteFileAtomic: realWriteFileAtomic,
		SymlinkAtomic:   realSymlinkAtomic,
		Mkdir: func(dir *os.File, name string, mode uint32) error {
			if err := unix.Mkdirat(int(dir.Fd()), name, mode); err != nil {
				return &os.PathError{Op: "mkdirat", Path: name, Err: err}
			}
			return nil
		},
		SetDirAttr: realSetDirAttr,
		Remove: func(dir *os.File, name string) error {
			if err := unix.Unlinkat(int(dir.Fd()), name, 0); err != nil {
				return &os.PathError{Op: "unlinkat", Path: name, Err: err}
			}
			return nil
		},
		RemoveAll: realRemoveAll,
		Fsync:     func(f *os.File) error { return f.Sync() },
		Syncfs: func(f *os.File) error {
			if err := unix.Syncfs(int(f.Fd())); err != nil {
				return &os.PathError{Op: "syncfs", Path: f.Name(), Err: err}
			}
			return nil
		},
	}
}

var tmpCounter atomic.Uint64

// tmpName is a name in dir that does not exist yet; O_EXCL/symlinkat
// catch the rare collision and the caller retries.
func tmpName() string {
	return ".prefinalize-tmp-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(tmpCounter.Add(1), 36)
}

// fdPath is the /proc/self/fd link of fd: a call through it reaches the
// fd's own inode, whatever happens to names meanwhile.
func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

func realWriteFileAtomic(dir *os.File, name string, src io.Reader, a Attr) (err error) {
	dfd := int(dir.Fd())
	var tmp string
	var fd int
	for i := 0; ; i++ {
		tmp = tmpName()
		fd, err = unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0600)
		if err == unix.EEXIST && i < 100 {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "create temporary file for", Path: name, Err: err}
		}
		break
	}
	f := os.NewFile(uintptr(fd), tmp)
	defer func() {
		if err != nil {
			f.Close()
			// The temporary name is ours alone; removing it undoes the write.
			_ = unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	if _, err = io.Copy(f, src); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	// Order of glnx_file_copy_at: owner, xattrs, then mode (a 0400 file
	// still accepts fsetxattr through the open fd before fchmod), times.
	if err = unix.Fchown(fd, int(a.UID), int(a.GID)); err != nil {
		return &os.PathError{Op: "fchown", Path: name, Err: err}
	}
	for _, x := range a.Xattrs {
		if err = unix.Fsetxattr(fd, x.Name, x.Value, 0); err != nil {
			return &os.PathError{Op: "fsetxattr " + x.Name, Path: name, Err: err}
		}
	}
	if err = unix.Fchmod(fd, a.Mode&07777); err != nil {
		return &os.PathError{Op: "fchmod", Path: name, Err: err}
	}
	if a.SetTimes {
		ts := []unix.Timespec{a.Atime, a.Mtime}
		// Through the fd's /proc link, not the name: a directory of the
		// staged etc may belong to a user who could swap the name.
		if err = unix.UtimesNanoAt(unix.AT_FDCWD, fdPath(fd), ts, 0); err != nil {
			return &os.PathError{Op: "utimensat", Path: name, Err: err}
		}
	}
	// No fsync here: the rename makes the write whole for every reader, and
	// durability comes from the one syncfs that ends every merge and the
	// seal. Until that syncfs (and ostree's own sync when it writes the
	// bootloader entries) the staged deployment cannot become the booted
	// one: a crash before it loses /run and with it the staged state, so
	// a file whose data did not reach the disk can never be booted. An
	// fsync per file cost ~1ms each (133 in a 160-path seal).
	if err = f.Close(); err != nil {
		return &os.PathError{Op: "close", Path: name, Err: err}
	}
	if err = unix.Renameat(dfd, tmp, dfd, name); err != nil {
		return &os.PathError{Op: "rename", Path: name, Err: err}
	}
	return nil
}

func realSymlinkAtomic(dir *os.File, name, target string, a Attr) (err error) {
	dfd := int(dir.Fd())
	var tmp string
	for i := 0; ; i++ {
		tmp = tmpName()
		err = unix.Symlinkat(target, dfd, tmp)
		if err == unix.EEXIST && i < 100 {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "symlinkat", Path: name, Err: err}
		}
		break
	}
	defer func() {
		if err != nil {
			_ = unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	// copy_symlink_at: xattrs, then owner, both without following, on an
	// O_PATH fd of the link just made (checked to be ours: a symlink with
	// our target), not by name.
	lfd, err := unix.Openat(dfd, tmp, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open new symlink", Path: name, Err: err}
	}
	defer unix.Close(lfd)
	var st unix.Stat_t
	if err = unix.Fstat(lfd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: name, Err: err}
	}
	if got, _ := readlinkFd(lfd); !isLnk(&st) || got != target {
		return fmt.Errorf("%s: the new symlink was replaced: %w", name, ErrUnsafe)
	}
	for _, x := range a.Xattrs {
		// setxattr through /proc/self/fd/N reaches the symlink itself
		// (see entry.xattrs).
		if err = unix.Setxattr(fdPath(lfd), x.Name, x.Value, 0); err != nil {
			return &os.PathError{Op: "setxattr " + x.Name, Path: name, Err: err}
		}
	}
	if err = unix.Fchownat(lfd, "", int(a.UID), int(a.GID), unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "fchownat", Path: name, Err: err}
	}
	if err = unix.Renameat(dfd, tmp, dfd, name); err != nil {
		return &os.PathError{Op: "rename", Path: name, Err: err}
	}
	return nil
}

func realSetDirAttr(d *os.File, a Attr) error {
	fd := int(d.Fd())
	if a.ExactXattrs {
		have, err := fdXattrNames(fd)
		if err != nil {
			return &os.PathError{Op: "flistxattr", Path: d.Name(), Err: err}
		}
		want := map[string]bool{}
		for _, x := range a.Xattrs {
			want[x.Name] = true
		}
		for _, n := range have {
			if !want[n] {
				if err := unix.Fremovexattr(fd, n); err != nil && err != unix.ENODATA {
					return &os.PathError{Op: "fremovexattr " + n, Path: d.Name(), Err: err}
				}
			}
		}
	}
	for _, x := range a.Xattrs {
		if err := unix.Fsetxattr(fd, x.Name, x.Value, 0); err != nil {
			return &os.PathError{Op: "fsetxattr " + x.Name, Path: d.Name(), Err: err}
		}
	}
	if err := unix.Fchown(fd, int(a.UID), int(a.GID)); err != nil {
		return &os.PathError{Op: "fchown", Path: d.Name(), Err: err}
	}
	if err := unix.Fchmod(fd, a.Mode&07777); err != nil {
		return &os.PathError{Op: "fchmod", Path: d.Name(), Err: err}
	}
	return nil
}

func fdXattrNames(fd int) ([]string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Flistxattr(fd, buf)
		if err == unix.ERANGE && size < 1<<20 {
			continue
		}
		if err == unix.ENOTSUP {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return splitNames(buf[:n]), nil
	}
}

func splitNames(b []byte) []string {
	var out []string
	for _, s := range strings.Split(string(b), "\x00") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// realRemoveAll is glnx_shutil_rm_rf_at on (dir, name): open without
// following; a directory is emptied depth-first, anything else unlinked.
func realRemoveAll(dir *os.File, name string) error {
	dfd := int(dir.Fd())
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	switch {
	case err == unix.ENOENT:
		return nil
	case err == unix.ENOTDIR || err == unix.ELOOP:
		if err := unix.Unlinkat(dfd, name, 0); err != nil && err != unix.ENOENT {
			return &os.PathError{Op: "unlinkat", Path: name, Err: err}
		}
		return nil
	case err != nil:
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	sub := os.NewFile(uintptr(fd), name)
	defer sub.Close()
	names, err := sub.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("reading %s: %w", name, err)
	}
	for _, n := range names {
		if err := realRemoveAll(sub, n); err != nil {
			return fmt.Errorf("%s/%w", name, err)
		}
	}
	if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "rmdir", Path: name, Err: err}
	}
	return nil
}

// target is the directory the merge writes (the new deployment's etc),
// held open by fd: a tree (every path below it opened component by
// component without following symlinks) and the FS that writes it.
type target struct {
	*tree
	fs FS
}

func openTarget(path string, fs FS) (*target, error) {
	t, err := openTree(path)
	if err != nil {
		return nil, fmt.Errorf("opening target etc: %w", err)
	}
	return &target{tree: t, fs: fs}, nil
}

// checkRel validates a path relative to etc: clean, no "..", no leading
// slash, no empty or "." components. Names may hold any other bytes
// (newlines, invalid UTF-8): Linux allows them and so does ostree.
func checkRel(rel string) error {
	if rel == "" {
		return nil
	}
	if strings.HasPrefix(rel, "/") || strings.HasSuffix(rel, "/") || strings.ContainsRune(rel, 0) {
		return fmt.Errorf("path %q: %w", rel, ErrBadPath)
	}
	for _, c := range strings.Split(rel, "/") {
		if c == "" || c == "." || c == ".." {
			return fmt.Errorf("path %q: %w", rel, ErrBadPath)
		}
		if len(c) > 255 {
			return fmt.Errorf("path %q: component longer than 255 bytes: %w", rel, ErrBadPath)
		}
	}
	return nil
}

// lstat of rel below the root; ok false when it does not exist. A symlink
// or a non-directory among the parents is ErrUnsafe: ostree would follow
// it (or fail), we do less.
func (t *target) lstat(rel string) (st unix.Stat_t, ok bool, err error) {
	return t.lstatBelow(rel, false)
}

func splitRel(rel string) (dir, name string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}
