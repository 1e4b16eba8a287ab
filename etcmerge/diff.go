package etcmerge

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

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
//
// orig and modified are opened once; everything below them is read
// through their fds, no symlink followed (see tree).
func Diff(ctx context.Context, orig, modified string) (*Changes, error) {
	a, err := openTree(orig)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	b, err := openTree(modified)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	c := &Changes{}
	if err := diffDir(ctx, a, b, "", c); err != nil {
		return nil, err
	}
	return c, nil
}

func diffDir(ctx context.Context, a, b *tree, rel string, c *Changes) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	namesA, err := a.readNames(rel)
	if err != nil {
		return err
	}
	for _, name := range namesA {
		p := joinRel(rel, name)
		sa, okA, err := a.stat(p)
		if err != nil {
			return err
		}
		if !okA {
			// Vanished between readdir and lstat: GIO's enumerator would
			// have failed the same way.
			return fmt.Errorf("%s: %w", a.name(p), os.ErrNotExist)
		}
		sb, okB, err := b.stat(p)
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
	namesB, err := b.readNames(rel)
	if err != nil {
		return err
	}
	for _, name := range namesB {
		p := joinRel(rel, name)
		_, okA, err := a.stat(p)
		if err != nil {
			return err
		}
		if okA {
			continue
		}
		sb, okB, err := b.stat(p)
		if err != nil {
			return err
		}
		if !okB {
			return fmt.Errorf("%s: %w", b.name(p), os.ErrNotExist)
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

func addRecurse(ctx context.Context, b *tree, rel string, c *Changes) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	names, err := b.readNames(rel)
	if err != nil {
		return err
	}
	for _, name := range names {
		p := joinRel(rel, name)
		st, ok, err := b.stat(p)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s: %w", b.name(p), os.ErrNotExist)
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
// content. Callers have checked that the types are equal. It only
// compares: a copy reads what it copies from its own opened fd.
func sameEntry(a, b *tree, rel string, sa, sb *unix.Stat_t) (bool, error) {
	if sa.Mode != sb.Mode || sa.Uid != sb.Uid || sa.Gid != sb.Gid {
		return false, nil
	}
	switch sa.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if sa.Size != sb.Size {
			return false, nil
		}
		return sameContent(a, b, rel)
	case unix.S_IFLNK:
		ta, err := a.readlink(rel)
		if err != nil {
			return false, err
		}
		tb, err := b.readlink(rel)
		if err != nil {
			return false, err
		}
		return ta == tb, nil
	}
	return true, nil
}

// openReader opens rel of t for reading: O_PATH without following, fstat,
// then a reopen of that inode; anything but a regular file is ErrUnsafe
// (a fifo or a device is never opened for I/O).
func (t *tree) openReader(rel string) (*os.File, error) {
	e, ok, err := t.open(rel)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &os.PathError{Op: "open", Path: t.name(rel), Err: os.ErrNotExist}
	}
	defer e.Close()
	return e.reader()
}

func sameContent(a, b *tree, rel string) (bool, error) {
	fa, err := a.openReader(rel)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := b.openReader(rel)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	return sameReaders(fa, fb)
}

func sameReaders(fa, fb *os.File) (bool, error) {
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
			return false, fmt.Errorf("reading %s: %w", fa.Name(), ea)
		}
		if eb != nil && !bEOF {
			return false, fmt.Errorf("reading %s: %w", fb.Name(), eb)
		}
		if aEOF || bEOF {
			return aEOF && bEOF, nil
		}
	}
}
