package finalize

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"
)

// Changes is the result of ostree_diff_dirs (with OSTREE_DIFF_FLAGS_IGNORE_XATTRS,
// as merge_configuration_from calls it) between the booted usr/etc (orig)
// and the booted etc (modified). Paths are relative to etc.
//
// The lists have ostree's structure: a depth-first walk of orig finds
// Modified and Removed (a removed directory is listed once, its children
// not; a path whose type changed is listed once and not descended); after
// each directory's walk of orig, a walk of modified appends the entries
// missing from orig to Added, and an added directory is followed by all
// of its descendants (diff_add_dir_recurse lists them all, so ostree's
// "N added" counts them). Within a directory ostree follows readdir order,
// which depends on the filesystem; we sort names bytewise, which is one of
// the orders ostree could produce and makes our output reproducible.
type Changes struct {
	Modified []string
	Removed  []string
	Added    []string
}

// Message is ostree's journal line for these changes.
func (c *Changes) Message() string {
	return fmt.Sprintf("Copying /etc changes: %d modified, %d removed, %d added",
		len(c.Modified), len(c.Removed), len(c.Added))
}

// Diff compares orig and modified as ostree's merge does: a path differs
// when its st_mode (type and permission bits), uid or gid differ, or, for
// a regular file, its content, or for a symlink, its target. Xattrs are
// ignored; directories are compared on their own metadata and descended
// when both sides are directories. Fifos, sockets and devices compare on
// mode and owner only (ostree's checksum has no rdev). Symlinks are never
// followed.
func Diff(ctx context.Context, orig, modified string) (*Changes, error) {
	c := &Changes{}
	if err := diffDir(ctx, orig, modified, "", c); err != nil {
		return nil, err
	}
	return c, nil
}

func diffDir(ctx context.Context, a, b, rel string, c *Changes) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	namesA, err := readNames(a, rel)
	if err != nil {
		return err
	}
	for _, name := range namesA {
		p := joinRel(rel, name)
		sa, okA, err := lstatAt(a, p)
		if err != nil {
			return err
		}
		if !okA {
			// Vanished between readdir and lstat: GIO's enumerator would
			// have failed the same way.
			return fmt.Errorf("%s: %w", filepath.Join(a, p), os.ErrNotExist)
		}
		sb, okB, err := lstatAt(b, p)
		if err != nil {
			return err
		}
		if !okB {
			c.Removed = append(c.Removed, p)
			continue
		}
		if sa.Mode&unix.S_IFMT != sb.Mode&unix.S_IFMT {
			c.Modified = append(c.Modified, p)
			continue
		}
		same, err := sameEntry(a, b, p, &sa, &sb)
		if err != nil {
			return err
		}
		if !same {
			c.Modified = append(c.Modified, p)
		}
		if sa.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := diffDir(ctx, a, b, p, c); err != nil {
				return err
			}
		}
	}
	namesB, err := readNames(b, rel)
	if err != nil {
		return err
	}
	for _, name := range namesB {
		p := joinRel(rel, name)
		_, okA, err := lstatAt(a, p)
		if err != nil {
			return err
		}
		if okA {
			continue
		}
		sb, okB, err := lstatAt(b, p)
		if err != nil {
			return err
		}
		if !okB {
			return fmt.Errorf("%s: %w", filepath.Join(b, p), os.ErrNotExist)
		}
		c.Added = append(c.Added, p)
		if sb.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := addRecurse(ctx, b, p, c); err != nil {
				return err
			}
		}
	}
	return nil
}

func addRecurse(ctx context.Context, b, rel string, c *Changes) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	names, err := readNames(b, rel)
	if err != nil {
		return err
	}
	for _, name := range names {
		p := joinRel(rel, name)
		st, ok, err := lstatAt(b, p)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s: %w", filepath.Join(b, p), os.ErrNotExist)
		}
		c.Added = append(c.Added, p)
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := addRecurse(ctx, b, p, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// sameEntry is the equality of ostree's file checksums without xattrs:
// the header (uid, gid, mode, symlink target) and, for regular files, the
// content. Callers have checked that the types are equal.
func sameEntry(a, b, rel string, sa, sb *unix.Stat_t) (bool, error) {
	if sa.Mode != sb.Mode || sa.Uid != sb.Uid || sa.Gid != sb.Gid {
		return false, nil
	}
	switch sa.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if sa.Size != sb.Size {
			return false, nil
		}
		return sameContent(filepath.Join(a, rel), filepath.Join(b, rel))
	case unix.S_IFLNK:
		ta, err := os.Readlink(filepath.Join(a, rel))
		if err != nil {
			return false, err
		}
		tb, err := os.Readlink(filepath.Join(b, rel))
		if err != nil {
			return false, err
		}
		return ta == tb, nil
	}
	return true, nil
}

func openNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func sameContent(pa, pb string) (bool, error) {
	fa, err := openNoFollow(pa)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := openNoFollow(pb)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba := make([]byte, 64<<10)
	bb := make([]byte, 64<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		aEOF := ea == io.EOF || ea == io.ErrUnexpectedEOF
		bEOF := eb == io.EOF || eb == io.ErrUnexpectedEOF
		if ea != nil && !aEOF {
			return false, fmt.Errorf("reading %s: %w", pa, ea)
		}
		if eb != nil && !bEOF {
			return false, fmt.Errorf("reading %s: %w", pb, eb)
		}
		if aEOF || bEOF {
			return aEOF && bEOF, nil
		}
	}
}

// readNames lists root/rel sorted bytewise. A missing directory is an error:
// callers only descend into directories they just saw.
func readNames(root, rel string) ([]string, error) {
	full := filepath.Join(root, rel)
	fd, err := unix.Open(full, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open directory", Path: full, Err: err}
	}
	f := os.NewFile(uintptr(fd), full)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("reading directory %s: %w", full, err)
	}
	sort.Strings(names)
	return names, nil
}

// lstatAt lstats root/rel; ok is false when it does not exist (or a parent
// is not a directory, which for our walks means the same: not there).
func lstatAt(root, rel string) (st unix.Stat_t, ok bool, err error) {
	full := filepath.Join(root, rel)
	err = unix.Lstat(full, &st)
	if err == unix.ENOENT || err == unix.ENOTDIR {
		return st, false, nil
	}
	if err != nil {
		return st, false, &os.PathError{Op: "lstat", Path: full, Err: err}
	}
	return st, true, nil
}

// readXattrs returns path's xattrs as libglnx reads them: names sorted,
// attributes with empty values left out (glnx skips them), none when the
// filesystem has no xattr support.
func readXattrs(path string) ([]Xattr, error) {
	var names []string
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Llistxattr(path, buf)
		if err == unix.ERANGE && size < 1<<20 {
			continue
		}
		if err == unix.ENOTSUP {
			return nil, nil
		}
		if err != nil {
			return nil, &os.PathError{Op: "llistxattr", Path: path, Err: err}
		}
		names = splitNames(buf[:n])
		break
	}
	sort.Strings(names)
	var out []Xattr
	for _, n := range names {
		v, err := lgetxattr(path, n)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "lgetxattr " + n, Path: path, Err: err}
		}
		if len(v) == 0 {
			continue
		}
		out = append(out, Xattr{Name: n, Value: v})
	}
	return out, nil
}

func lgetxattr(path, name string) ([]byte, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Lgetxattr(path, name, buf)
		if err == unix.ERANGE && size < 1<<24 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}
