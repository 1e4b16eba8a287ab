package etcmerge

import (
	"context"
	"fmt"
	"sort"
	"strings"
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
