package etcmerge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// randTree builds a small etc-like tree.
func randTree(t *testing.T, r *rand.Rand, root string) {
	for d := 0; d < 3; d++ {
		dir := fmt.Sprintf("d%d", d)
		mkdir(t, root, dir, 0755)
		for f := 0; f < 3; f++ {
			mkfile(t, root, fmt.Sprintf("%s/f%d", dir, f), fmt.Sprintf("content %d %d\n", d, f), 0644, 0, 0)
		}
		for s := 0; s < 2; s++ {
			sub := fmt.Sprintf("%s/s%d", dir, s)
			mkdir(t, root, sub, 0755)
			mkfile(t, root, sub+"/g", "g\n", 0644, 0, 0)
			if r.Intn(2) == 0 {
				mklink(t, root, sub+"/l", "g")
			}
		}
	}
	mkfile(t, root, "top", "top\n", 0644, 0, 0)
	mklink(t, root, "toplink", "top")
}

// entries lists every path below root (not root), sorted, with its lstat.
func entries(t *testing.T, root string) ([]string, map[string]unix.Stat_t) {
	var out []string
	sts := map[string]unix.Stat_t{}
	var walk func(rel string)
	walk = func(rel string) {
		ents, err := os.ReadDir(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			p := joinRel(rel, e.Name())
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(root, p), &st); err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
			sts[p] = st
			if isDir(&st) {
				walk(p)
			}
		}
	}
	walk("")
	sort.Strings(out)
	return out, sts
}

func pick(r *rand.Rand, paths []string, sts map[string]unix.Stat_t, ok func(*unix.Stat_t) bool) (string, bool) {
	var c []string
	for _, p := range paths {
		st := sts[p]
		if ok(&st) {
			c = append(c, p)
		}
	}
	if len(c) == 0 {
		return "", false
	}
	return c[r.Intn(len(c))], true
}

func anyDir(paths []string, sts map[string]unix.Stat_t, r *rand.Rand) string {
	if d, ok := pick(r, paths, sts, isDir); ok && r.Intn(4) != 0 {
		return d
	}
	return ""
}

// randEdit makes one random edit of a kind the issue lists and returns the
// paths whose own entry it changed.
func randEdit(t *testing.T, r *rand.Rand, orig, m string, allowErrors bool, serial *int) (string, []string) {
	paths, sts := entries(t, m)
	*serial++
	name := "n" + strconv.Itoa(*serial)
	notDir := func(st *unix.Stat_t) bool { return !isDir(st) }
	reg := func(st *unix.Stat_t) bool { return isReg(st) }
	switch r.Intn(15) {
	case 0:
		if p, ok := pick(r, paths, sts, reg); ok {
			mkfile(t, m, p, fmt.Sprintf("edit %d\n", *serial), sts[p].Mode&07777, int(sts[p].Uid), int(sts[p].Gid))
			return "content " + p, []string{p}
		}
	case 1:
		if p, ok := pick(r, paths, sts, func(st *unix.Stat_t) bool { return !isLnk(st) }); ok {
			modes := []uint32{0600, 0644, 0755, 0700, 0640, 0711}
			if err := unix.Chmod(filepath.Join(m, p), modes[r.Intn(len(modes))]); err != nil {
				t.Fatal(err)
			}
			return "chmod " + p, []string{p}
		}
	case 2:
		if len(paths) > 0 {
			p := paths[r.Intn(len(paths))]
			ids := []int{0, 1000, 1001}
			if err := os.Lchown(filepath.Join(m, p), ids[r.Intn(3)], ids[r.Intn(3)]); err != nil {
				t.Fatal(err)
			}
			return "chown " + p, []string{p}
		}
	case 3:
		p := joinRel(anyDir(paths, sts, r), name)
		mkfile(t, m, p, "added "+name+"\n", 0644, 0, 0)
		return "add file " + p, []string{p}
	case 4:
		p := joinRel(anyDir(paths, sts, r), name)
		mkfile(t, m, p+"/y/z", "z\n", 0600, 1000, 0)
		mklink(t, m, p+"/y/l", "z")
		mkfile(t, m, p+"/w", "w\n", 0644, 0, 0)
		if allowErrors && r.Intn(4) == 0 {
			mkfifo(t, m, p+"/fifo")
		}
		return "add tree " + p, []string{p}
	case 5:
		if p, ok := pick(r, paths, sts, notDir); ok {
			if err := os.Remove(filepath.Join(m, p)); err != nil {
				t.Fatal(err)
			}
			return "remove " + p, []string{p}
		}
	case 6:
		if p, ok := pick(r, paths, sts, isDir); ok {
			if err := os.RemoveAll(filepath.Join(m, p)); err != nil {
				t.Fatal(err)
			}
			return "remove dir " + p, []string{p}
		}
	case 7:
		if p, ok := pick(r, paths, sts, reg); ok {
			mklink(t, m, p, "target-"+name)
			return "file to symlink " + p, []string{p}
		}
	case 8:
		if p, ok := pick(r, paths, sts, isLnk); ok {
			mklink(t, m, p, "retarget-"+name)
			return "retarget " + p, []string{p}
		}
	case 9:
		dir := anyDir(paths, sts, r)
		if _, err := os.Lstat(filepath.Join(orig, dir)); err != nil && !allowErrors {
			return "fifo skipped", nil // in an added directory: ostree's merge fails
		}
		p := joinRel(dir, name)
		mkfifo(t, m, p)
		return "fifo " + p, []string{p}
	case 10:
		if p, ok := pick(r, paths, sts, func(st *unix.Stat_t) bool { return isReg(st) || isDir(st) }); ok {
			if isReg(ptr(sts[p])) && r.Intn(2) == 0 {
				mkfile(t, m, p, "with xattr "+name+"\n", 0644, 0, 0)
			}
			setxattr(t, m, p, "user.x", name)
			return "xattr " + p, []string{p}
		}
	case 11:
		if p, ok := pick(r, paths, sts, reg); ok && allowErrors {
			if err := os.Remove(filepath.Join(m, p)); err != nil {
				t.Fatal(err)
			}
			mkfile(t, m, p+"/inner", "inner\n", 0644, 0, 0)
			return "file to dir " + p, []string{p}
		}
	case 12, 13:
		// Revert a path to the original.
		op, osts := entries(t, orig)
		if p, ok := pick(r, op, osts, func(*unix.Stat_t) bool { return true }); ok {
			if _, err := os.Lstat(filepath.Dir(filepath.Join(m, p))); err != nil {
				return "revert skipped", nil
			}
			if err := os.RemoveAll(filepath.Join(m, p)); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("cp", "-a", filepath.Join(orig, p), filepath.Join(m, p)).CombinedOutput()
			if err != nil {
				t.Fatalf("revert %s: %v %s", p, err, out)
			}
			return "revert " + p, []string{p}
		}
	case 14:
		if p, ok := pick(r, paths, sts, reg); ok {
			ts := unix.NsecToTimespec(time.Now().UnixNano())
			if err := unix.UtimesNano(filepath.Join(m, p), []unix.Timespec{ts, ts}); err != nil {
				t.Fatal(err)
			}
			return "touch " + p, []string{p}
		}
	}
	return "no-op", nil
}

// newCommitRandom: the new commit changes some of the defaults.
func newCommitRandom(t *testing.T, r *rand.Rand, d string, allowErrors bool) {
	paths, sts := entries(t, d)
	for i := 0; i < 4; i++ {
		p := paths[r.Intn(len(paths))]
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(d, p), &st); err != nil {
			continue
		}
		sts[p] = st // earlier changes of this loop may have changed it
		switch r.Intn(5) {
		case 0:
			if isReg(ptr(sts[p])) {
				mkfile(t, d, p, "new commit "+p+"\n", 0644, 0, 0)
			}
		case 1:
			if err := os.RemoveAll(filepath.Join(d, p)); err != nil {
				t.Fatal(err)
			}
		case 2:
			if isDir(ptr(sts[p])) {
				mkfile(t, d, joinRel(p, "fromcommit"), "c\n", 0644, 0, 0)
			}
		case 3:
			if isDir(ptr(sts[p])) {
				if err := unix.Chmod(filepath.Join(d, p), 0750); err != nil {
					t.Fatal(err)
				}
			}
		case 4:
			if allowErrors && isReg(ptr(sts[p])) {
				if err := os.Remove(filepath.Join(d, p)); err != nil {
					t.Fatal(err)
				}
				mkfile(t, d, p+"/now-a-dir", "d\n", 0644, 0, 0)
			}
		}
	}
}

func ptr(st unix.Stat_t) *unix.Stat_t { return &st }

// TestMergePathsRandom: for random edit sequences, MergePaths applied after
// each batch keeps the new etc equal to a full Merge into a fresh copy of
// the new defaults.
func TestMergePathsRandom(t *testing.T) {
	requireRoot(t)
	seed := time.Now().UnixNano()
	if s := os.Getenv("FINALIZE_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("seed %d (rerun with FINALIZE_SEED=%d)", seed, seed)
	iters := 12
	if testing.Short() {
		iters = 3
	}
	ctx := context.Background()
	for it := 0; it < iters; it++ {
		r := rand.New(rand.NewSource(seed + int64(it)))
		allowErrors := it%3 == 2
		tr := newTrio(t)
		randTree(t, r, tr.orig)
		copyTree(t, tr.orig, tr.modified)
		copyTree(t, tr.orig, tr.defaults)
		newCommitRandom(t, r, tr.defaults, allowErrors)
		inc := tr.freshNew(t)
		serial := 0
		var log []string
		for batch := 0; batch < 10; batch++ {
			var touched []string
			for k := r.Intn(4) + 1; k > 0; k-- {
				what, ps := randEdit(t, r, tr.orig, tr.modified, allowErrors, &serial)
				log = append(log, what)
				touched = append(touched, ps...)
			}
			_, incErr := MergePaths(ctx, RealFS(), tr.orig, tr.modified, inc, tr.defaults, touched)
			full := tr.freshNew(t)
			_, fullErr := Merge(ctx, RealFS(), tr.orig, tr.modified, full)
			if fullErr != nil || incErr != nil {
				if fullErr == nil || incErr == nil || sentinel(fullErr) != sentinel(incErr) {
					t.Fatalf("seed %d iter %d batch %d: full merge error %v, per-path error %v\nedits: %q",
						seed, it, batch, fullErr, incErr, log)
				}
				t.Logf("iter %d batch %d: both fail: %v", it, batch, fullErr)
				break
			}
			if d := diffSnapshots(snapTree(t, inc, snapOpts{noMtime: true}), snapTree(t, full, snapOpts{noMtime: true})); len(d) > 0 {
				t.Fatalf("seed %d iter %d batch %d: per-path merge differs from full merge:\n%q\nedits: %q",
					seed, it, batch, d, log)
			}
			// mtimes: equal for every file the full merge copied from the
			// booted etc (a default's mtime is the checkout's: not compared).
			si, sf := snapTree(t, inc, snapOpts{}), snapTree(t, full, snapOpts{})
			sm, sd := snapTree(t, tr.modified, snapOpts{}), snapTree(t, tr.defaults, snapOpts{})
			for p, f := range sf {
				if f.Type == "file" && f.Mtime == sm[p].Mtime && sm[p].Mtime != sd[p].Mtime && si[p].Mtime != f.Mtime {
					t.Fatalf("seed %d iter %d batch %d: %q mtime %d, full merge %d\nedits: %q", seed, it, batch, p, si[p].Mtime, f.Mtime, log)
				}
			}
		}
	}
}

func sentinel(err error) error {
	for _, s := range []error{ErrNewDefaultDir, ErrNotCopyable, ErrUnsafe} {
		if errors.Is(err, s) {
			return s
		}
	}
	return err
}

// statSnap is a stat-and-content snapshot of a tree, for the never-written
// check (atime left out: reading may move it).
func statSnap(t testing.TB, root string) map[string]string {
	out := map[string]string{}
	var walk func(rel string)
	walk = func(rel string) {
		ents, err := os.ReadDir(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			p := joinRel(rel, e.Name())
			fp := filepath.Join(root, p)
			var st unix.Stat_t
			if err := unix.Lstat(fp, &st); err != nil {
				t.Fatal(err)
			}
			s := fmt.Sprintf("%o %d %d %d %d %d %d", st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Nano(), st.Ctim.Nano(), st.Ino)
			if isReg(&st) {
				b, err := os.ReadFile(fp)
				if err != nil {
					t.Fatal(err)
				}
				s += " " + string(b)
			}
			out[p] = s
			if isDir(&st) {
				walk(p)
			}
		}
	}
	walk("")
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		t.Fatal(err)
	}
	out["."] = fmt.Sprintf("%o %d %d %d %d", st.Mode, st.Uid, st.Gid, st.Mtim.Nano(), st.Ctim.Nano())
	return out
}

// TestNeverWritesBooted: with an FS that snapshots the booted etc and
// usr/etc around every single write, Merge, MergePaths and Reset never
// change them.
func TestNeverWritesBooted(t *testing.T) {
	requireRoot(t)
	tr := setupKinds(t)
	// The booted etc is not writable through us even by accident: check
	// it before and after every operation.
	want := map[string]map[string]string{}
	for _, root := range []string{tr.orig, tr.modified, tr.defaults} {
		want[root] = statSnap(t, root)
	}
	ops := 0
	verify := func() {
		ops++
		for root, w := range want {
			if g := statSnap(t, root); fmt.Sprint(g) != fmt.Sprint(w) {
				t.Fatalf("after operation %d, %s changed", ops, root)
			}
		}
	}
	real := RealFS()
	fs := FS{
		WriteFileAtomic: func(d *os.File, n string, s io.Reader, a Attr) error {
			verify()
			defer verify()
			return real.WriteFileAtomic(d, n, s, a)
		},
		SymlinkAtomic: func(d *os.File, n, tg string, a Attr) error {
			verify()
			defer verify()
			return real.SymlinkAtomic(d, n, tg, a)
		},
		Mkdir: func(d *os.File, n string, m uint32) error {
			verify()
			defer verify()
			return real.Mkdir(d, n, m)
		},
		SetDirAttr: func(d *os.File, a Attr) error { verify(); defer verify(); return real.SetDirAttr(d, a) },
		Remove:     func(d *os.File, n string) error { verify(); defer verify(); return real.Remove(d, n) },
		RemoveAll:  func(d *os.File, n string) error { verify(); defer verify(); return real.RemoveAll(d, n) },
		Fsync:      func(f *os.File) error { verify(); defer verify(); return real.Fsync(f) },
		Syncfs:     func(f *os.File) error { verify(); defer verify(); return real.Syncfs(f) },
	}
	ctx := context.Background()
	n := tr.freshNew(t)
	if _, err := Merge(ctx, fs, tr.orig, tr.modified, n); err != nil {
		t.Fatal(err)
	}
	n2 := tr.freshNew(t)
	if _, err := MergePaths(ctx, fs, tr.orig, tr.modified, n2, tr.defaults, []string{""}); err != nil {
		t.Fatal(err)
	}
	if _, err := Reset(ctx, fs, n2, tr.defaults); err != nil {
		t.Fatal(err)
	}
	if ops < 20 {
		t.Fatalf("only %d operations checked", ops)
	}
	t.Logf("%d operations checked", ops)
}
