package etcmerge

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

type wantKind int

const (
	wAbsent wantKind = iota
	wCopy            // exact copy of src/p (a whole subtree for a directory)
	wDir             // a directory with attr and the given children
)

type want struct {
	kind     wantKind
	src      *tree // wCopy
	attr     Attr  // wDir (ExactXattrs set)
	children map[string]*want
	// touched: p is in the copy set, so ensure_directory_from_template
	// gives p's parent Mo's attributes (only the direct parent: an existing
	// grandparent is never touched, a missing one is created).
	touched bool
	// needed: something at or below p is copied, so a directory missing
	// from B is created here (with Mo's attributes).
	needed bool
}

type planner struct {
	ctx      context.Context
	orig     *tree
	modified *tree
	base     *tree // the state the merge starts from: new defaults (or newEtc for a preflight)
	// skipSpecial: FS.SkipSpecialInDirs.
	skipSpecial bool
}

type ent struct {
	st unix.Stat_t
	ok bool
}

func (e ent) dir() bool { return e.ok && isDir(&e.st) }

func (pl *planner) stat(root *tree, p string) (ent, error) {
	st, ok, err := root.stat(p)
	return ent{st, ok}, err
}

// plan computes the desired state of p. underAdded: an ancestor of p is in
// the copy set as an added directory (every entry of Mo below it is in
// ostree's added list); O is then irrelevant.
func (pl *planner) plan(p string, underAdded bool) (*want, error) {
	if err := pl.ctx.Err(); err != nil {
		return nil, err
	}
	var o ent
	var err error
	if !underAdded {
		if o, err = pl.stat(pl.orig, p); err != nil {
			return nil, err
		}
	}
	mo, err := pl.stat(pl.modified, p)
	if err != nil {
		return nil, err
	}
	b, err := pl.stat(pl.base, p)
	if err != nil {
		return nil, err
	}
	if p == "" {
		// The etc root itself: never copied nor given attributes.
		return pl.dirWant(p, b, o, mo, underAdded, false)
	}
	removed := o.ok && !mo.ok && !underAdded
	inCopy := false
	added := false
	switch {
	case underAdded:
		inCopy = mo.ok
		added = true
	case !o.ok && mo.ok:
		inCopy, added = true, true
	case o.ok && mo.ok:
		if o.st.Mode&unix.S_IFMT != mo.st.Mode&unix.S_IFMT {
			inCopy = true
		} else {
			same, err := sameEntry(pl.orig, pl.modified, p, &o.st, &mo.st)
			if err != nil {
				return nil, err
			}
			inCopy = !same
		}
	}
	switch {
	case removed:
		return &want{kind: wAbsent}, nil
	case inCopy && mo.dir():
		if b.dir() {
			if added || o.dir() {
				// Kept: children are compared (modified attrs) or all
				// added (added dir); attributes follow the children.
				w, err := pl.dirWant(p, b, o, mo, added, true)
				if err != nil {
					return nil, err
				}
				w.touched = true
				return w, nil
			}
			// Type changed from non-directory to directory over a
			// directory default: ostree does nothing and does not
			// descend (the diff did not), so B stays.
			return &want{kind: wCopy, src: pl.base, touched: true}, nil
		}
		if err := pl.checkCopyable(pl.modified, p); err != nil {
			return nil, err
		}
		return &want{kind: wCopy, src: pl.modified, touched: true}, nil
	case inCopy && b.dir():
		return nil, fmt.Errorf("%s: %w, cannot merge", p, ErrNewDefaultDir)
	case inCopy && (isReg(&mo.st) || isLnk(&mo.st)):
		return &want{kind: wCopy, src: pl.modified, touched: true}, nil
	case inCopy:
		return &want{kind: wAbsent, touched: true}, nil
	}
	// Not in any list.
	if o.dir() && mo.dir() {
		switch {
		case b.dir():
			return pl.dirWant(p, b, o, mo, false, true)
		case !b.ok:
			w, err := pl.dirWant(p, b, o, mo, false, true)
			if err != nil {
				return nil, err
			}
			if !w.needed {
				return &want{kind: wAbsent}, nil
			}
			return w, nil
		default:
			// A non-directory default where both booted sides have a
			// directory: any change below needs it as a directory, which
			// ostree fails on (or, for a symlink, follows).
			ch, err := pl.anyChange(p)
			if err != nil {
				return nil, err
			}
			if ch {
				return nil, fmt.Errorf("%s: parent of a changed path is not a directory in the new etc: %w", p, ErrUnsafe)
			}
			return &want{kind: wCopy, src: pl.base}, nil
		}
	}
	return &want{kind: wCopy, src: pl.base}, nil
}

// dirWant plans a directory kept from B or created: children are the union
// of the names on every side; its attributes are B's, with Mo's owner and
// mode and Mo's xattrs set over B's when a child is touched; a directory
// absent from B is created with Mo's attributes.
func (pl *planner) dirWant(p string, b, o, mo ent, childrenAdded, attributable bool) (*want, error) {
	names := map[string]bool{}
	add := func(root *tree, e ent) error {
		if !e.dir() {
			return nil
		}
		ns, err := root.readNames(p)
		if err != nil {
			return err
		}
		for _, n := range ns {
			names[n] = true
		}
		return nil
	}
	if err := add(pl.base, b); err != nil {
		return nil, err
	}
	if !childrenAdded {
		if err := add(pl.orig, o); err != nil {
			return nil, err
		}
	}
	if err := add(pl.modified, mo); err != nil {
		return nil, err
	}
	w := &want{kind: wDir, children: map[string]*want{}}
	anyTouched, anyNeeded := false, false
	for n := range names {
		c := joinRel(p, n)
		cw, err := pl.plan(c, childrenAdded)
		if err != nil {
			return nil, err
		}
		w.children[n] = cw
		anyTouched = anyTouched || cw.touched
		anyNeeded = anyNeeded || cw.touched || cw.needed
	}
	if p == "" {
		return w, nil
	}
	switch {
	case !b.ok:
		// Created as a parent of something copied: Mo's attributes only.
		a, err := dirAttr(pl.modified, p)
		if err != nil {
			return nil, err
		}
		a.ExactXattrs = true
		w.attr = a
		w.needed = anyNeeded
	default:
		a, err := dirAttr(pl.base, p)
		if err != nil {
			return nil, err
		}
		if anyTouched && attributable {
			ma, err := dirAttr(pl.modified, p)
			if err != nil {
				return nil, err
			}
			a.Mode, a.UID, a.GID = ma.Mode, ma.UID, ma.GID
			a.Xattrs = overlayXattrs(a.Xattrs, ma.Xattrs)
		}
		a.ExactXattrs = true
		w.attr = a
	}
	return w, nil
}

func overlayXattrs(base, over []Xattr) []Xattr {
	m := map[string][]byte{}
	for _, x := range base {
		m[x.Name] = x.Value
	}
	for _, x := range over {
		m[x.Name] = x.Value
	}
	out := make([]Xattr, 0, len(m))
	for n, v := range m {
		out = append(out, Xattr{n, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// touchedOnly is want.touched without planning the subtree: is p in the
// copy set (added, or different from orig)?
func (pl *planner) touchedOnly(p string) (bool, error) {
	o, err := pl.stat(pl.orig, p)
	if err != nil {
		return false, err
	}
	mo, err := pl.stat(pl.modified, p)
	if err != nil {
		return false, err
	}
	switch {
	case !mo.ok:
		return false, nil
	case !o.ok:
		return true, nil
	case o.st.Mode&unix.S_IFMT != mo.st.Mode&unix.S_IFMT:
		return true, nil
	}
	same, err := sameEntry(pl.orig, pl.modified, p, &o.st, &mo.st)
	return !same, err
}

// anyChange: does the diff list anything (copy or removal) at or below p?
func (pl *planner) anyChange(p string) (bool, error) {
	ch := &Changes{}
	if err := diffDir(pl.ctx, pl.orig, pl.modified, p, ch); err != nil {
		return false, err
	}
	return len(ch.Modified)+len(ch.Removed)+len(ch.Added) > 0, nil
}

// checkCopyable fails with ErrNotCopyable when copy_dir_recurse of root/p
// would meet a fifo, socket or device.
func (pl *planner) checkCopyable(root *tree, p string) error {
	ns, err := root.readNames(p)
	if err != nil {
		return err
	}
	for _, n := range ns {
		c := joinRel(p, n)
		e, err := pl.stat(root, c)
		if err != nil {
			return err
		}
		switch {
		case e.dir():
			if err := pl.checkCopyable(root, c); err != nil {
				return err
			}
		case e.ok && !isReg(&e.st) && !isLnk(&e.st) && !pl.skipSpecial:
			return fmt.Errorf("copying %s: %w", root.name(c), ErrNotCopyable)
		}
	}
	return nil
}

// region is P, or P's highest ancestor that is not a directory in all of
// orig, modified and defaults.
func (pl *planner) region(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	parts := strings.Split(p, "/")
	for i := 1; i < len(parts); i++ {
		a := strings.Join(parts[:i], "/")
		for _, root := range []*tree{pl.orig, pl.modified, pl.base} {
			e, err := pl.stat(root, a)
			if err != nil {
				return "", err
			}
			if !e.dir() {
				return a, nil
			}
		}
	}
	return p, nil
}
