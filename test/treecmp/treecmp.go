// Package treecmp is the one tree comparator of the parity tests: it records
// every path under a root (type, mode, owner, content, symlink target, inode
// flags, and on request xattrs, mtimes and hard links) and lists the
// differences between two such records. It imports nothing of this module,
// so every package's tests can use it (test/harness re-exports it as
// harness.TreeManifest; finalize's tests, which the harness imports, use it
// directly).
package treecmp

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Entry is what a Manifest records about one path.
type Entry struct {
	// Type is "file", "dir", "symlink", "fifo", "socket" or "special-<octal
	// type>".
	Type string
	// Mode is the permission bits plus setuid/setgid/sticky.
	Mode     fs.FileMode
	UID, GID uint32
	// Size and SHA256 are for regular files; Target for symlinks.
	Size   int64
	SHA256 string
	Target string
	// Flags are the immutable/append-only inode flags (files and dirs).
	Flags uint32
	// Xattrs ("k=v" sorted, hex values) when Options.Xattrs.
	Xattrs string
	// MTime in nanoseconds when Options.MTime (every entry) or
	// Options.FileMTime (regular files only).
	MTime int64
	// LinkTo is, when Options.Hardlinks, the first path in walk
	// (lexical) order that shares this inode; "" for the first one.
	LinkTo string
	// Rdev is the device number of a device node.
	Rdev uint64
}

// Options choose what Scan records beyond type, mode, owner, content, link
// target and inode flags.
type Options struct {
	MTime, Xattrs, Hardlinks bool
	// FileMTime records the mtime of regular files only (glnx_file_copy_at
	// keeps it; directories' mtimes change with every write inside).
	FileMTime bool
	// IgnoreXattr leaves out xattrs whose names start with one of these.
	IgnoreXattr []string
	// Skip leaves out rel (slash path relative to the root) and, for a
	// directory, everything below it.
	Skip func(rel string) bool
}

// Manifest maps slash paths relative to a root ("." is the root) to entries.
type Manifest map[string]Entry

// Scan describes every path under root, for comparing two trees (a sysroot
// and its copy, ostree's merged etc and ours). It walks with directory
// descriptors (openat, fstatat, never a full path), so paths longer than
// PATH_MAX are described too and no symlink inside the tree is followed;
// entries are visited in lexical order (which LinkTo refers to).
func Scan(root string, o Options) (Manifest, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", root, &fs.PathError{Op: "open", Path: root, Err: err})
	}
	sc := scanner{o: o, m: Manifest{}, inodes: map[[2]uint64]string{}}
	err = sc.dir(fd, ".", "")
	if err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", root, err)
	}
	return sc.m, nil
}

type scanner struct {
	o      Options
	m      Manifest
	inodes map[[2]uint64]string
}

// dir records the open directory fd (at rel) and everything below it; it
// closes fd. prefix is rel + "/" ("" for the root).
func (sc *scanner) dir(fd int, rel, prefix string) error {
	d := os.NewFile(uintptr(fd), rel)
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: rel, Err: err}
	}
	if err := sc.record(rel, fd, -1, "", &st); err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return &fs.PathError{Op: "readdir", Path: rel, Err: err}
	}
	sort.Strings(names)
	for _, n := range names {
		p := prefix + n
		if sc.o.Skip != nil && sc.o.Skip(p) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &fs.PathError{Op: "fstatat", Path: p, Err: err}
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			sub, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return &fs.PathError{Op: "open", Path: p, Err: err}
			}
			if err := sc.dir(sub, p, p+"/"); err != nil {
				return err
			}
		case unix.S_IFREG:
			f, err := unix.Openat(fd, n, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
			if err != nil {
				return &fs.PathError{Op: "open", Path: p, Err: err}
			}
			err = sc.record(p, f, fd, n, &st)
			unix.Close(f)
			if err != nil {
				return err
			}
		default:
			if err := sc.record(p, -1, fd, n, &st); err != nil {
				return err
			}
		}
	}
	return nil
}

// record adds the entry rel; fd is the entry opened (a regular file or a
// directory) or -1, parent and name locate it otherwise.
func (sc *scanner) record(rel string, fd, parent int, name string, st *unix.Stat_t) error {
	e := Entry{Mode: fs.FileMode(st.Mode & 0o777), UID: st.Uid, GID: st.Gid}
	for bit, m := range map[uint32]fs.FileMode{unix.S_ISUID: fs.ModeSetuid, unix.S_ISGID: fs.ModeSetgid, unix.S_ISVTX: fs.ModeSticky} {
		if st.Mode&bit != 0 {
			e.Mode |= m
		}
	}
	var err error
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type, e.Size = "file", st.Size
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(fdReaderAt(fd), 0, st.Size+1)); err != nil {
			return fmt.Errorf("reading %s: %w", rel, err)
		}
		e.SHA256 = hex.EncodeToString(h.Sum(nil))
	case unix.S_IFDIR:
		e.Type = "dir"
	case unix.S_IFLNK:
		e.Type = "symlink"
		buf := make([]byte, unix.PathMax)
		k, err := unix.Readlinkat(parent, name, buf)
		if err != nil {
			return &fs.PathError{Op: "readlink", Path: rel, Err: err}
		}
		e.Target = string(buf[:k])
	case unix.S_IFIFO:
		e.Type = "fifo"
	case unix.S_IFSOCK:
		e.Type = "socket"
	default:
		e.Type = fmt.Sprintf("special-%o", st.Mode&unix.S_IFMT)
		e.Rdev = st.Rdev
	}
	if fd >= 0 {
		fl, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
		if err != nil {
			return &fs.PathError{Op: "FS_IOC_GETFLAGS", Path: rel, Err: err}
		}
		e.Flags = fl & (FlagImmutable | FlagAppend)
	}
	if sc.o.MTime || (sc.o.FileMTime && e.Type == "file") {
		e.MTime = st.Mtim.Nano()
	}
	if sc.o.Xattrs {
		// Through the open fd, or for the rest through
		// /proc/self/fd/PARENT/NAME: a short path whatever the depth, and
		// the l* calls do not follow the entry when it is a symlink.
		list := func(b []byte) (int, error) { return unix.Flistxattr(fd, b) }
		get := func(k string, b []byte) (int, error) { return unix.Fgetxattr(fd, k, b) }
		if fd < 0 {
			p := fmt.Sprintf("/proc/self/fd/%d/%s", parent, name)
			list = func(b []byte) (int, error) { return unix.Llistxattr(p, b) }
			get = func(k string, b []byte) (int, error) { return unix.Lgetxattr(p, k, b) }
		}
		if e.Xattrs, err = xattrString(list, get, sc.o.IgnoreXattr); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
	}
	if sc.o.Hardlinks && e.Type != "dir" && st.Nlink > 1 {
		k := [2]uint64{st.Dev, st.Ino}
		if first, ok := sc.inodes[k]; ok {
			e.LinkTo = first
		} else {
			sc.inodes[k] = rel
		}
	}
	sc.m[rel] = e
	return nil
}

type fdReaderAt int

func (fd fdReaderAt) ReadAt(b []byte, off int64) (int, error) {
	n, err := unix.Pread(int(fd), b, off)
	if err != nil {
		return 0, err
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func xattrString(list func([]byte) (int, error), get func(string, []byte) (int, error), ignore []string) (string, error) {
	sz, err := list(nil)
	if err != nil || sz == 0 {
		if err == unix.ENOTSUP {
			err = nil
		}
		return "", err
	}
	buf := make([]byte, sz)
	n, err := list(buf)
	if err != nil {
		return "", fmt.Errorf("listxattr: %w", err)
	}
	var kv []string
	for _, k := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if slices.ContainsFunc(ignore, func(pre string) bool { return strings.HasPrefix(k, pre) }) {
			continue
		}
		v := make([]byte, 64<<10)
		vn, err := get(k, v)
		if err != nil {
			return "", fmt.Errorf("getxattr %s: %w", k, err)
		}
		kv = append(kv, k+"="+hex.EncodeToString(v[:vn]))
	}
	sort.Strings(kv)
	return strings.Join(kv, ";"), nil
}

// Diff lists the differences from m to o, one line per path, sorted;
// nil when they are equal.
func (m Manifest) Diff(o Manifest) []string {
	var out []string
	for p, a := range m {
		b, ok := o[p]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("only in first: %s (%s)", p, a.Type))
		case a != b:
			out = append(out, fmt.Sprintf("differs: %s: %+v != %+v", p, a, b))
		}
	}
	for p, b := range o {
		if _, ok := m[p]; !ok {
			out = append(out, fmt.Sprintf("only in second: %s (%s)", p, b.Type))
		}
	}
	sort.Strings(out)
	return out
}

// Require fails t with every difference (the first 40) between the trees
// recorded in a and b.
func Require(t testing.TB, what string, a, b Manifest) {
	t.Helper()
	if d := a.Diff(b); len(d) > 0 {
		if len(d) > 40 {
			d = append(d[:40], fmt.Sprintf("... and %d more", len(d)-40))
		}
		t.Fatalf("%s:\n%s", what, strings.Join(d, "\n"))
	}
}

// Inode flags (chattr/lsattr) that Scan records.
const (
	FlagImmutable uint32 = 0x00000010
	FlagAppend    uint32 = 0x00000020
)

// Flags returns the inode flags (FS_IOC_GETFLAGS) of p, opened without
// following a symlink.
func Flags(p string) (uint32, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return 0, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	fl, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return 0, &fs.PathError{Op: "FS_IOC_GETFLAGS", Path: p, Err: err}
	}
	return fl, nil
}
