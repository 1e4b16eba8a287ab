package etcmerge

import (
	"bytes"
	"context"
	"fmt"
	"sort"

	"golang.org/x/sys/unix"
)

// fixParent gives the region's parent the attributes of the full merge.
func (pl *planner) fixParent(ap *applier, r string, touched bool) error {
	parent, _ := splitRel(r)
	if parent == "" {
		return nil
	}
	if !touched {
		ns, err := pl.modified.readNames(parent)
		if err != nil {
			return err
		}
		for _, n := range ns {
			c := joinRel(parent, n)
			if c == r {
				continue
			}
			t, err := pl.touchedOnly(c)
			if err != nil {
				return err
			}
			if t {
				touched = true
				break
			}
		}
	}
	a, err := dirAttr(pl.base, parent)
	if err != nil {
		return err
	}
	if touched {
		ma, err := dirAttr(pl.modified, parent)
		if err != nil {
			return err
		}
		a.Mode, a.UID, a.GID = ma.Mode, ma.UID, ma.GID
		a.Xattrs = overlayXattrs(a.Xattrs, ma.Xattrs)
	}
	a.ExactXattrs = true
	return ap.setDirAttr(parent, a)
}

// applier reconciles the target with a want, writing only what differs.
type applier struct {
	ctx      context.Context
	t        *target
	modified *tree // entries copied from here keep their times
	n        int
}

func (ap *applier) apply(p string, w *want) error {
	if err := ap.ctx.Err(); err != nil {
		return err
	}
	switch w.kind {
	case wAbsent:
		return ap.ensureAbsent(p)
	case wCopy:
		return ap.syncCopy(p, w.src)
	}
	if p != "" {
		if err := ap.ensureDir(p); err != nil {
			return err
		}
	}
	names, err := ap.targetNames(p)
	if err != nil {
		return err
	}
	for _, n := range names {
		if _, ok := w.children[n]; !ok {
			if err := ap.ensureAbsent(joinRel(p, n)); err != nil {
				return err
			}
		}
	}
	keys := make([]string, 0, len(w.children))
	for n := range w.children {
		keys = append(keys, n)
	}
	sort.Strings(keys)
	for _, n := range keys {
		if err := ap.apply(joinRel(p, n), w.children[n]); err != nil {
			return err
		}
	}
	if p == "" {
		return nil
	}
	return ap.setDirAttr(p, w.attr)
}

func (ap *applier) targetNames(p string) ([]string, error) {
	d, err := ap.t.openDir(p)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ns, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", d.Name(), err)
	}
	sort.Strings(ns)
	return ns, nil
}

func (ap *applier) ensureAbsent(p string) error {
	_, ok, err := ap.t.lstat(p)
	if err != nil || !ok {
		return err
	}
	d, name, err := ap.t.parent(p)
	if err != nil {
		return err
	}
	defer d.Close()
	ap.n++
	if err := ap.t.fs.RemoveAll(d, name); err != nil {
		return fmt.Errorf("removing %s: %w", ap.t.name(p), err)
	}
	return nil
}

// ensureDir makes p a directory (mode 0700 until its attributes are set).
func (ap *applier) ensureDir(p string) error {
	st, ok, err := ap.t.lstat(p)
	if err != nil {
		return err
	}
	if ok && isDir(&st) {
		return nil
	}
	d, name, err := ap.t.parent(p)
	if err != nil {
		return err
	}
	defer d.Close()
	if ok {
		ap.n++
		if err := ap.t.fs.RemoveAll(d, name); err != nil {
			return fmt.Errorf("removing %s: %w", ap.t.name(p), err)
		}
	}
	ap.n++
	if err := ap.t.fs.Mkdir(d, name, 0700); err != nil {
		return fmt.Errorf("creating %s: %w", ap.t.name(p), err)
	}
	return nil
}

func (ap *applier) setDirAttr(p string, a Attr) error {
	st, ok, err := ap.t.lstat(p)
	if err != nil {
		return err
	}
	if !ok || !isDir(&st) {
		return fmt.Errorf("%s: not a directory: %w", ap.t.name(p), ErrUnsafe)
	}
	full := ap.t.name(p)
	have, err := ap.t.xattrsOf(p)
	if err != nil {
		return err
	}
	if st.Mode&07777 == a.Mode&07777 && st.Uid == a.UID && st.Gid == a.GID && sameXattrs(have, a.Xattrs) {
		return nil
	}
	d, err := ap.t.openDir(p)
	if err != nil {
		return err
	}
	defer d.Close()
	ap.n++
	if err := ap.t.fs.SetDirAttr(d, a); err != nil {
		return fmt.Errorf("setting attributes of %s: %w", full, err)
	}
	return nil
}

func sameXattrs(a, b []Xattr) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string][]byte{}
	for _, x := range a {
		m[x.Name] = x.Value
	}
	for _, x := range b {
		v, ok := m[x.Name]
		if !ok || !bytes.Equal(v, x.Value) {
			return false
		}
	}
	return true
}

// syncCopy makes target p an exact copy of src/p (absent when src/p is).
func (ap *applier) syncCopy(p string, src *tree) error {
	if err := ap.ctx.Err(); err != nil {
		return err
	}
	s, ok, err := src.stat(p)
	if err != nil {
		return err
	}
	if !ok {
		return ap.ensureAbsent(p)
	}
	if isDir(&s) {
		if err := ap.ensureDir(p); err != nil {
			return err
		}
		if err := ap.syncCopyChildren(p, src); err != nil {
			return err
		}
		a, err := dirAttr(src, p)
		if err != nil {
			return err
		}
		a.ExactXattrs = true
		return ap.setDirAttr(p, a)
	}
	if !isReg(&s) && !isLnk(&s) {
		if ap.t.fs.SkipSpecialInDirs {
			// copy_dir_recurse (2024.2) skips it in the directory it
			// creates afresh: nothing is there.
			return ap.ensureAbsent(p)
		}
		return fmt.Errorf("copying %s: %w", src.name(p), ErrNotCopyable)
	}
	same, err := ap.sameAsSource(p, src, &s)
	if err != nil || same {
		return err
	}
	tst, tok, err := ap.t.lstat(p)
	if err != nil {
		return err
	}
	d, name, err := ap.t.parent(p)
	if err != nil {
		return err
	}
	defer d.Close()
	if tok && isDir(&tst) {
		// rename cannot replace a directory with a file.
		ap.n++
		if err := ap.t.fs.RemoveAll(d, name); err != nil {
			return fmt.Errorf("removing %s: %w", ap.t.name(p), err)
		}
	}
	ap.n++
	return copyEntry(ap.t.fs, src, p, &s, d, name, src == ap.modified)
}

func (ap *applier) syncCopyChildren(p string, src *tree) error {
	want, err := src.readNames(p)
	if err != nil {
		return err
	}
	have, err := ap.targetNames(p)
	if err != nil {
		return err
	}
	in := map[string]bool{}
	for _, n := range want {
		in[n] = true
	}
	for _, n := range have {
		if !in[n] {
			if err := ap.ensureAbsent(joinRel(p, n)); err != nil {
				return err
			}
		}
	}
	for _, n := range want {
		if err := ap.syncCopy(joinRel(p, n), src); err != nil {
			return err
		}
	}
	return nil
}

// sameAsSource: target p already equals src/p (type, mode, owner, xattrs,
// symlink target, or content, and the mtime of files copied from the
// booted etc; a default's mtime is the checkout's, not usr/etc's).
func (ap *applier) sameAsSource(p string, src *tree, s *unix.Stat_t) (bool, error) {
	t, ok, err := ap.t.lstat(p)
	if err != nil || !ok {
		return false, err
	}
	if t.Mode != s.Mode || t.Uid != s.Uid || t.Gid != s.Gid {
		return false, nil
	}
	if isReg(s) {
		if t.Size != s.Size || (src == ap.modified && t.Mtim != s.Mtim) {
			return false, nil
		}
		same, err := sameContent(src, ap.t.tree, p)
		if err != nil || !same {
			return false, err
		}
	} else {
		a, err := src.readlink(p)
		if err != nil {
			return false, err
		}
		b, err := ap.t.readlink(p)
		if err != nil {
			return false, err
		}
		if a != b {
			return false, nil
		}
	}
	xa, err := src.xattrsOf(p)
	if err != nil {
		return false, err
	}
	xb, err := ap.t.xattrsOf(p)
	if err != nil {
		return false, err
	}
	return sameXattrs(xa, xb), nil
}
