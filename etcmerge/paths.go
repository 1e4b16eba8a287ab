package etcmerge

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// The per-path merge computes, for a part of the tree, the state that a
// full merge would give (the "desired state") directly from the three
// inputs, and then brings the target to it. It is written apart from the
// literal port in merge.go on purpose: the tests check one against the
// other.
//
// Desired state F of a path p, with O = orig, Mo = modified and B = the
// base the merge starts from (the pristine new defaults):
//
//   - p removed (in O, not in Mo): absent.
//   - p in the copy set (added, or differs from O): if Mo(p) is a
//     directory and B(p) is a directory, B's directory is kept (ostree
//     "assumes the parent was copied") and its children follow these rules
//     (all of Mo's children count as added when p was added; when only
//     p's type changed, B(p) stays whole: the diff did not descend); if Mo(p) is a directory and B(p) is not,
//     an exact copy of Mo(p)'s subtree; a non-directory Mo(p) over a
//     directory B(p) is ErrNewDefaultDir; a regular file or symlink is a
//     copy of Mo(p); a fifo, socket or device leaves p absent.
//   - otherwise B(p), except that a directory of B whose child is in the
//     copy set gets Mo's owner and mode and Mo's xattrs set over B's (only
//     the direct parent: ensure_directory_from_template walks up only
//     through missing directories), and a directory missing from B is
//     created, with Mo's attributes, when something below it is copied.

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

// MergePaths brings newEtc to the state a full merge would give now, for
// the given paths of the booted etc (modified), and returns how many
// entries it wrote or removed.
//
// "What a full merge would give now" means: the result of Merge(orig,
// modified) applied to a fresh, exact copy of defaults (the staged
// deployment's pristine usr/etc), with orig and modified as they are when
// MergePaths runs. The contract: newEtc equalled that result for an
// earlier state of modified, and paths names every path of modified whose
// own entry changed since (created, removed, type, mode, owner, content,
// symlink target, xattrs); a path naming a directory stands for its whole
// subtree. orig and defaults do not change (they are deployment trees).
// Then afterwards newEtc equals, entry by entry (type, mode, uid, gid,
// xattrs, content, symlink target, and the mtime of regular files copied
// from the booted etc), that full merge. The mtime of a file taken from the
// defaults is not part of the equality: in ostree's staged etc it is the
// time of the checkout, which usr/etc does not record; a default that
// MergePaths writes back gets the time of the write. A path reverted to its original gets the new default back, a
// removed path is removed, a new directory is copied whole.
//
// How: for each path P, the region recomputed is P's subtree, or the
// subtree of P's highest ancestor that is not a directory in all of orig,
// modified and defaults (a change there can change everything below).
// Within the region the desired state is planned from the three inputs and
// newEtc is reconciled to it (only differing entries are written, each one
// whole); then the region's parent gets the attributes the full merge
// would give it (Mo's when any child is copied, the default's otherwise).
// Higher ancestors cannot change: their status depends only on their own
// entries, which would be in paths had they changed.
//
// Errors are those of the full merge (ErrNewDefaultDir, ErrNotCopyable,
// ErrUnsafe) and are found before the region is written.
func MergePaths(ctx context.Context, fs FS, orig, modified, newEtc, defaults string, paths []string) (int, error) {
	roots, err := normalizePaths(paths)
	if err != nil {
		return 0, err
	}
	trees, err := openTrees(orig, modified, defaults)
	if err != nil {
		return 0, err
	}
	defer closeTrees(trees)
	trees[1].users = true
	pl := &planner{ctx: ctx, orig: trees[0], modified: trees[1], base: trees[2], skipSpecial: fs.SkipSpecialInDirs}
	var regions []string
	for _, p := range roots {
		r, err := pl.region(p)
		if err != nil {
			return 0, err
		}
		regions = append(regions, r)
	}
	regions, _ = normalizePaths(regions)

	t, err := openTarget(newEtc, fs)
	if err != nil {
		return 0, err
	}
	defer t.Close()
	ap := &applier{ctx: ctx, t: t, modified: pl.modified}
	for _, r := range regions {
		w, err := pl.plan(r, false)
		if err != nil {
			return ap.n, err
		}
		if err := ap.apply(r, w); err != nil {
			return ap.n, err
		}
		if r == "" {
			continue
		}
		if err := pl.fixParent(ap, r, w.touched); err != nil {
			return ap.n, err
		}
	}
	return ap.n, nil
}

// Reset brings newEtc to a copy of defaults (the state ostree's own merge
// expects to start from): exact but for the times of rewritten files, which
// are the time of the rewrite, as in ostree's checkout of etc. For a fallback to ostree after a
// precomputed merge: ostree's merge on top of our result would keep stale
// entries (it never removes what it does not list).
func Reset(ctx context.Context, fs FS, newEtc, defaults string) (int, error) {
	t, err := openTarget(newEtc, fs)
	if err != nil {
		return 0, err
	}
	defer t.Close()
	ap := &applier{ctx: ctx, t: t}
	d, err := openTree(defaults)
	if err != nil {
		return 0, fmt.Errorf("defaults: %w", err)
	}
	defer d.Close()
	if err := ap.syncCopyChildren("", d); err != nil {
		return ap.n, err
	}
	return ap.n, nil
}

func normalizePaths(paths []string) ([]string, error) {
	set := map[string]bool{}
	for _, p := range paths {
		p = strings.TrimPrefix(p, "./")
		if p == "." {
			p = ""
		}
		if err := checkRel(p); err != nil {
			return nil, err
		}
		set[p] = true
	}
	var out []string
	for p := range set {
		covered := false
		for q := p; q != ""; {
			q, _ = splitRel(q)
			if set[q] && q != p {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
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

// openTrees opens every path as a tree.
func openTrees(paths ...string) ([]*tree, error) {
	var ts []*tree
	for _, p := range paths {
		t, err := openTree(p)
		if err != nil {
			closeTrees(ts)
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, nil
}

func closeTrees(ts []*tree) {
	for _, t := range ts {
		t.Close()
	}
}
