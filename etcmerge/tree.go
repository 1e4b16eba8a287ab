package etcmerge

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// tree is a directory the merge reads or writes (the booted etc, the
// booted usr/etc, the staged deployment's usr/etc, the staged etc), held
// open by fd from the moment an operation starts. Every path below it is
// resolved relative to that fd with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) (an O_NOFOLLOW walk where
// the kernel has no openat2), so no symlink is ever followed and nothing
// outside the tree can be reached, however the tree changes under us: the
// booted etc may hold directories that unprivileged users write, and the
// watcher runs as root for days while they do (issue 11).
//
// Identity comes from the opened fd: an entry is opened (O_PATH, no
// follow) first and then fstat'ed, and its content, xattrs and symlink
// target are read through that same fd, so what is copied is what was
// checked. A stat by name (fstatat below an opened parent) is used only
// to compare, never to decide what to copy.
type tree struct {
	root *os.File
	// users: unprivileged users may write below (the booted etc): a
	// privileged file copied from it is checked by plantedPrivilege.
	users bool
}

func openTree(path string) (*tree, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open directory", Path: path, Err: err}
	}
	return &tree{root: os.NewFile(uintptr(fd), path)}, nil
}

func (t *tree) Close() error { return t.root.Close() }

// name is rel's path for messages only: it is never opened.
func (t *tree) name(rel string) string { return filepath.Join(t.root.Name(), rel) }

// checkLen fails with ENAMETOOLONG where rel's whole path would not fit in
// PATH_MAX, as ostree's merge does: it reads both etcs through GFile
// paths (g_file_query_info of the full path), so an /etc path longer than
// that makes its diff, and its finalization, fail; ours must fail too
// (and fall back) rather than take over a merge that ostree cannot make.
// The reads here go by fd and would not fail by themselves. (ostree's
// prefix is /proc/self/fd/N/etc, ours the deployment's real path: the
// limit is the one the path-based reads of earlier versions had.)
func (t *tree) checkLen(rel string) error {
	if len(t.root.Name())+1+len(rel) >= unix.PathMax {
		return &os.PathError{Op: "lstat", Path: t.name(rel), Err: unix.ENAMETOOLONG}
	}
	return nil
}

// openat2 is unix.Openat2; tests replace it to run the ENOSYS walk.
var openat2 = unix.Openat2

var beneathNoLinks = uint64(unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS)

// openAt opens rel below the root with flags, following no symlink on the
// way (a symlink as the last component is opened itself when flags hold
// O_PATH|O_NOFOLLOW). On ENOSYS (no openat2) it walks with O_NOFOLLOW at
// every component.
//
// A symlink on the way is ELOOP (or EXDEV), a non-directory parent
// ENOTDIR: RESOLVE_NO_SYMLINKS covers the last component too, so O_NOFOLLOW
// is passed only with O_PATH (with O_DIRECTORY it would turn a symlink's
// ELOOP into ENOTDIR, hiding it among the non-directories).
func (t *tree) openAt(rel string, flags int) (int, error) {
	f := flags | unix.O_CLOEXEC
	if flags&unix.O_PATH != 0 {
		f |= unix.O_NOFOLLOW
	}
	how := unix.OpenHow{Flags: uint64(f), Resolve: beneathNoLinks}
	fd, err := openat2(int(t.root.Fd()), rel, &how)
	if err != unix.ENOSYS {
		return fd, err
	}
	cur, err := unix.Openat(int(t.root.Fd()), ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	parts := strings.Split(rel, "/")
	for i, c := range parts {
		f := unix.O_PATH | unix.O_DIRECTORY
		if i == len(parts)-1 {
			f = flags
		}
		fd, err := unix.Openat(cur, c, f|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err == unix.ENOTDIR {
			var st unix.Stat_t
			if unix.Fstatat(cur, c, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && isLnk(&st) {
				err = unix.ELOOP
			}
		}
		unix.Close(cur)
		if err != nil {
			return -1, err
		}
		cur = fd
	}
	return cur, nil
}

// openDir opens rel (a directory below the root) for reading. A symlink
// or a non-directory on the way is ErrUnsafe (a non-directory also wraps
// ENOTDIR, which readers take as "not there").
func (t *tree) openDir(rel string) (*os.File, error) {
	if err := checkRel(rel); err != nil {
		return nil, err
	}
	if rel == "" {
		// A new open file description (not a dup, which would share the
		// directory offset with the root and with every earlier listing).
		fd, err := unix.Openat(int(t.root.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, &os.PathError{Op: "open directory", Path: t.root.Name(), Err: err}
		}
		return os.NewFile(uintptr(fd), t.root.Name()), nil
	}
	fd, err := t.openAt(rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, t.dirErr(rel, err)
	}
	return os.NewFile(uintptr(fd), t.name(rel)), nil
}

func (t *tree) dirErr(rel string, err error) error {
	switch err {
	case unix.ENOTDIR:
		return fmt.Errorf("%s: a component is not a directory: %w (%w)", t.name(rel), ErrUnsafe, err)
	case unix.ELOOP, unix.EXDEV:
		return fmt.Errorf("%s: a component is a symlink (%v): %w", t.name(rel), err, ErrUnsafe)
	}
	return &os.PathError{Op: "open directory", Path: t.name(rel), Err: err}
}

// parent opens the directory holding rel and returns it with rel's last
// component.
func (t *tree) parent(rel string) (*os.File, string, error) {
	if rel == "" {
		return nil, "", fmt.Errorf("the etc root itself has no parent: %w", ErrBadPath)
	}
	if err := checkRel(rel); err != nil {
		return nil, "", err
	}
	dir, name := splitRel(rel)
	d, err := t.openDir(dir)
	if err != nil {
		return nil, "", err
	}
	return d, name, nil
}

// stat is the lstat of rel for comparisons: fstatat(AT_SYMLINK_NOFOLLOW)
// below its parent opened without symlinks. ok is false when rel does not
// exist or a parent is not a directory (for our walks: not there); a
// symlink among the parents is ErrUnsafe.
func (t *tree) stat(rel string) (st unix.Stat_t, ok bool, err error) {
	if rel != "" {
		if err := t.checkLen(rel); err != nil {
			return st, false, err
		}
	}
	return t.lstatBelow(rel, true)
}

// lstatBelow is fstatat(AT_SYMLINK_NOFOLLOW) of rel in its parent opened
// without symlinks; ok is false when rel does not exist. A non-directory
// among the parents reads as "not there" when notDirMissing, else it is
// an error (ErrUnsafe from the open: ostree would fail or follow there).
func (t *tree) lstatBelow(rel string, notDirMissing bool) (st unix.Stat_t, ok bool, err error) {
	if rel == "" {
		err = unix.Fstat(int(t.root.Fd()), &st)
		return st, err == nil, err
	}
	d, name, err := t.parent(rel)
	if errors.Is(err, os.ErrNotExist) || (notDirMissing && errors.Is(err, unix.ENOTDIR)) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	defer d.Close()
	err = unix.Fstatat(int(d.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == unix.ENOENT {
		return st, false, nil
	}
	if err != nil {
		return st, false, &os.PathError{Op: "lstat", Path: t.name(rel), Err: err}
	}
	return st, true, nil
}

// readNames lists rel sorted bytewise. A missing directory is an error:
// callers only descend into directories they just saw.
func (t *tree) readNames(rel string) ([]string, error) {
	if err := t.checkLen(rel); err != nil {
		return nil, err
	}
	d, err := t.openDir(rel)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("reading directory %s: %w", t.name(rel), err)
	}
	sort.Strings(names)
	return names, nil
}

// entry is one opened entry of a tree: an O_PATH fd (which opens nothing:
// no device is ever opened for I/O, no fifo blocks) and its fstat.
type entry struct {
	f  *os.File
	st unix.Stat_t
}

// open opens rel itself, without following it if it is a symlink, and
// fstats it. ok is false when it does not exist.
func (t *tree) open(rel string) (e *entry, ok bool, err error) {
	var fd int
	if rel == "" {
		fd, err = unix.Openat(int(t.root.Fd()), ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	} else {
		if err := checkRel(rel); err != nil {
			return nil, false, err
		}
		if err := t.checkLen(rel); err != nil {
			return nil, false, err
		}
		fd, err = t.openAt(rel, unix.O_PATH)
	}
	switch err {
	case nil:
	case unix.ENOENT, unix.ENOTDIR:
		return nil, false, nil
	case unix.ELOOP, unix.EXDEV:
		return nil, false, fmt.Errorf("%s: a parent is a symlink (%v): %w", t.name(rel), err, ErrUnsafe)
	default:
		return nil, false, &os.PathError{Op: "open", Path: t.name(rel), Err: err}
	}
	e = &entry{f: os.NewFile(uintptr(fd), t.name(rel))}
	if err := unix.Fstat(fd, &e.st); err != nil {
		e.Close()
		return nil, false, &os.PathError{Op: "fstat", Path: t.name(rel), Err: err}
	}
	return e, true, nil
}

func (e *entry) Close() error { return e.f.Close() }

// proc is the /proc/self/fd link of the O_PATH fd: opening or getxattr
// through it reaches exactly the opened inode (the magic link is not
// resolved by name), a symlink included.
func (e *entry) proc() string { return fdPath(int(e.f.Fd())) }

// reader reopens a regular file for reading through its O_PATH fd and
// checks that it is still the same inode.
func (e *entry) reader() (*os.File, error) {
	if !isReg(&e.st) {
		return nil, fmt.Errorf("%s: not a regular file: %w", e.f.Name(), ErrUnsafe)
	}
	fd, err := unix.Open(e.proc(), unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "reopen", Path: e.f.Name(), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Ino != e.st.Ino || st.Dev != e.st.Dev {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: changed identity on reopen: %w", e.f.Name(), ErrUnsafe)
	}
	return os.NewFile(uintptr(fd), e.f.Name()), nil
}

// readlink is the target of the opened symlink.
func (e *entry) readlink() (string, error) {
	t, err := readlinkFd(int(e.f.Fd()))
	if err != nil {
		return "", &os.PathError{Op: "readlink", Path: e.f.Name(), Err: err}
	}
	return t, nil
}

// readlinkFd reads the target of the symlink an O_PATH fd holds
// (readlinkat with an empty name).
func readlinkFd(fd int) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < size || size >= 1<<16 {
			return string(buf[:n]), nil
		}
	}
}

// xattrs returns the opened entry's xattrs as libglnx reads them: names
// sorted, attributes with empty values left out (glnx skips them), none
// when the filesystem has no xattr support.
//
// fgetxattr does not work on O_PATH fds, and lgetxattr on a
// /proc/self/fd link reads the proc link itself. getxattr and listxattr
// that follow /proc/self/fd/N land on exactly the inode the fd holds, a
// symlink included (the magic link jumps to the opened dentry and the
// trailing symlink is not followed again), so one safe way serves every
// type: nothing is resolved by name.
func (e *entry) xattrs() ([]Xattr, error) {
	p := e.proc()
	var names []string
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Listxattr(p, buf)
		if err == unix.ERANGE && size < 1<<20 {
			continue
		}
		if err == unix.ENOTSUP {
			return nil, nil
		}
		if err != nil {
			return nil, &os.PathError{Op: "listxattr", Path: e.f.Name(), Err: err}
		}
		names = splitNames(buf[:n])
		break
	}
	sort.Strings(names)
	var out []Xattr
	for _, n := range names {
		v, err := getxattr(p, n)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "getxattr " + n, Path: e.f.Name(), Err: err}
		}
		if len(v) == 0 {
			continue
		}
		out = append(out, Xattr{Name: n, Value: v})
	}
	return out, nil
}

func getxattr(path, name string) ([]byte, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Getxattr(path, name, buf)
		if err == unix.ERANGE && size < 1<<24 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// readlink is rel's symlink target, read below its opened parent.
func (t *tree) readlink(rel string) (string, error) {
	e, ok, err := t.open(rel)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", &os.PathError{Op: "readlink", Path: t.name(rel), Err: os.ErrNotExist}
	}
	defer e.Close()
	if !isLnk(&e.st) {
		return "", &os.PathError{Op: "readlink", Path: t.name(rel), Err: unix.EINVAL}
	}
	return e.readlink()
}

// xattrsOf is rel's xattrs, through an O_PATH fd of rel.
func (t *tree) xattrsOf(rel string) ([]Xattr, error) {
	e, ok, err := t.open(rel)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &os.PathError{Op: "listxattr", Path: t.name(rel), Err: os.ErrNotExist}
	}
	defer e.Close()
	return e.xattrs()
}
