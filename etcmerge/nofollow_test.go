package etcmerge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Issue 11: every operation of the merge engine, read or write, refuses to
// go through a symlink. Each case first runs on a tree where d is a real
// directory (the operation reaches d's entries: the control), then d is
// swapped for a symlink to a directory outside the tree holding entries of
// the same names, and the operation must refuse (ErrUnsafe) or see
// nothing, and never return or write anything of the outside directory.

const secret = "SECRET outside the tree\n"

// swapTree is etc with d (and a/d) holding secret, link -> secret, sub/f;
// outside has the same names with the secret content.
type swapTree struct {
	etc, outside string
}

func newSwapTree(t *testing.T) swapTree {
	t.Helper()
	root := t.TempDir()
	s := swapTree{filepath.Join(root, "etc"), filepath.Join(root, "outside")}
	for _, top := range []string{s.outside, filepath.Join(s.etc, "d"), filepath.Join(s.etc, "a", "d")} {
		content := "inside\n"
		if top == s.outside {
			content = secret
		}
		mkfile(t, top, "secret", content, 0644, 0, 0)
		setxattr(t, top, "secret", "trusted.tag", content)
		mklink(t, top, "link", "secret")
		mkfile(t, top, "sub/f", content, 0644, 0, 0)
	}
	return s
}

// swap replaces rel (a directory of etc) by a symlink to outside.
func (s swapTree) swap(t *testing.T, rel string) {
	t.Helper()
	p := filepath.Join(s.etc, rel)
	if err := os.Rename(p, p+".real"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(s.outside, p); err != nil {
		t.Fatal(err)
	}
}

func (s swapTree) outsideSum(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	filepath.Walk(s.outside, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %v %d\n", p, fi.Mode(), fi.Size())
		if fi.Mode().IsRegular() {
			c, _ := os.ReadFile(p)
			b.Write(c)
		}
		return nil
	})
	return b.String()
}

func TestTreeReadOpsRefuseSymlinks(t *testing.T) {
	requireRoot(t)
	t.Run("openat2", testTreeReadOps)
	// Kernels without openat2: the O_NOFOLLOW walk.
	defer func(f func(int, string, *unix.OpenHow) (int, error)) { openat2 = f }(openat2)
	openat2 = func(int, string, *unix.OpenHow) (int, error) { return -1, unix.ENOSYS }
	t.Run("walk", testTreeReadOps)
	t.Run("write side walk", TestTargetWriteOpsRefuseSymlinks)
}

func testTreeReadOps(t *testing.T) {
	ops := []struct {
		name string
		rel  string // below d (or a/d)
		op   func(tr *tree, rel string) (string, error)
	}{
		{"stat", "secret", func(tr *tree, rel string) (string, error) {
			st, ok, err := tr.stat(rel)
			if err == nil && !ok {
				err = os.ErrNotExist
			}
			return fmt.Sprint(st.Size, st.Ino), err
		}},
		{"readNames", "sub", func(tr *tree, rel string) (string, error) {
			ns, err := tr.readNames(rel)
			return strings.Join(ns, ","), err
		}},
		{"readlink", "link", func(tr *tree, rel string) (string, error) { return tr.readlink(rel) }},
		{"openReader", "secret", func(tr *tree, rel string) (string, error) {
			f, err := tr.openReader(rel)
			if err != nil {
				return "", err
			}
			defer f.Close()
			b, err := io.ReadAll(f)
			return string(b), err
		}},
		{"xattrsOf", "secret", func(tr *tree, rel string) (string, error) {
			xs, err := tr.xattrsOf(rel)
			if err == nil && len(xs) == 0 {
				err = errors.New("no xattrs")
			}
			var b strings.Builder
			for _, x := range xs {
				b.Write(x.Value)
			}
			return b.String(), err
		}},
		{"dirAttr", "sub", func(tr *tree, rel string) (string, error) {
			a, err := dirAttr(tr, rel)
			return fmt.Sprint(a), err
		}},
		{"openDir", "sub", func(tr *tree, rel string) (string, error) {
			d, err := tr.openDir(rel)
			if err != nil {
				return "", err
			}
			defer d.Close()
			ns, err := d.Readdirnames(-1)
			return strings.Join(ns, ","), err
		}},
		{"copyEntry", "secret", func(tr *tree, rel string) (string, error) {
			st, ok, err := tr.stat(rel)
			if err != nil || !ok {
				// The copy is reached only after a stat; feign one of
				// a regular file to test copyEntry's own open.
				st = unix.Stat_t{Mode: unix.S_IFREG | 0644}
			}
			out := t.TempDir()
			d, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if err := copyEntry(RealFS(), tr, rel, &st, d, "copy", true); err != nil {
				return "", err
			}
			b, err := os.ReadFile(filepath.Join(out, "copy"))
			return string(b), err
		}},
	}
	for _, top := range []string{"d", "a/d"} {
		for _, o := range ops {
			t.Run(strings.ReplaceAll(top, "/", "_")+"/"+o.name, func(t *testing.T) {
				s := newSwapTree(t)
				tr, err := openTree(s.etc)
				if err != nil {
					t.Fatal(err)
				}
				defer tr.Close()
				rel := top + "/" + o.rel
				got, err := o.op(tr, rel)
				if err != nil {
					t.Fatalf("control: %s(%q) on a real directory: %v", o.name, rel, err)
				}
				if strings.Contains(got, "SECRET") {
					t.Fatalf("control read the outside: %q", got)
				}
				s.swap(t, top)
				got, err = o.op(tr, rel)
				if err == nil {
					t.Fatalf("%s(%q) through a symlink succeeded: %q", o.name, rel, got)
				}
				if !errors.Is(err, ErrUnsafe) {
					t.Fatalf("%s(%q) through a symlink: want ErrUnsafe, got %v", o.name, rel, err)
				}
				if strings.Contains(got, "SECRET") {
					t.Fatalf("%s read the outside: %q", o.name, got)
				}
			})
		}
	}
}

// The last component: a regular file swapped for a symlink between the
// caller's stat and the copy is refused, and a symlink is copied as a
// symlink (its target string), never read through.
func TestCopyEntryLastComponentSwapped(t *testing.T) {
	requireRoot(t)
	s := newSwapTree(t)
	tr, err := openTree(s.etc)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	st, ok, err := tr.stat("d/secret")
	if err != nil || !ok {
		t.Fatal(err)
	}
	p := filepath.Join(s.etc, "d", "secret")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(s.outside, "secret"), p); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	d, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := copyEntry(RealFS(), tr, "d/secret", &st, d, "copy", true); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("copy of a file swapped for a symlink: want ErrUnsafe, got %v", err)
	}
	if _, err := os.Lstat(filepath.Join(out, "copy")); !os.IsNotExist(err) {
		t.Fatalf("something was written: %v", err)
	}
	// Copied as what it now is, a symlink: the target string only.
	lst, _, err := tr.stat("d/secret")
	if err != nil {
		t.Fatal(err)
	}
	if err := copyEntry(RealFS(), tr, "d/secret", &lst, d, "copy", true); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(filepath.Join(out, "copy")); err != nil || got != filepath.Join(s.outside, "secret") {
		t.Fatalf("copy: %q %v", got, err)
	}
	// And a reader never opens a symlink, a fifo or a device.
	mkfifo(t, s.etc, "d/fifo")
	for _, rel := range []string{"d/link", "d/fifo"} {
		if f, err := tr.openReader(rel); !errors.Is(err, ErrUnsafe) {
			if f != nil {
				f.Close()
			}
			t.Fatalf("openReader(%s): want ErrUnsafe, got %v", rel, err)
		}
	}
}

// Scan does not descend through a directory swapped for a symlink.
func TestScanRefusesSymlinks(t *testing.T) {
	requireRoot(t)
	s := newSwapTree(t)
	b, err := Scan(context.Background(), s.etc)
	if err != nil {
		t.Fatal(err)
	}
	has := func(b *Baseline, p string) bool {
		for _, e := range b.Entries {
			if e.Path == p {
				return true
			}
		}
		return false
	}
	if !has(b, "d/sub/f") {
		t.Fatal("control: d/sub/f not scanned")
	}
	s.swap(t, "d")
	b, err = Scan(context.Background(), s.etc)
	if err != nil {
		t.Fatal(err)
	}
	if has(b, "d/sub/f") || has(b, "d/secret") {
		t.Fatalf("scanned through the symlink: %v", b.Entries)
	}
	if !has(b, "d") || !has(b, "d.real/sub/f") {
		t.Fatalf("entries: %v", b.Entries)
	}
}

// The write side: the target's directory opens refuse a symlinked
// component, and the FS primitives replace a symlink named as their target
// instead of writing through it.
func TestTargetWriteOpsRefuseSymlinks(t *testing.T) {
	requireRoot(t)
	s := newSwapTree(t)
	before := s.outsideSum(t)
	tg, err := openTarget(s.etc, RealFS())
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	if d, err := tg.openDir("a/d/sub"); err != nil {
		t.Fatalf("control: %v", err)
	} else {
		d.Close()
	}
	s.swap(t, "a/d")
	if d, err := tg.openDir("a/d/sub"); !errors.Is(err, ErrUnsafe) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("openDir through a symlink: want ErrUnsafe, got %v", err)
	}
	if _, _, err := tg.lstat("a/d/secret"); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("lstat through a symlink: want ErrUnsafe, got %v", err)
	}
	if d, _, err := tg.parent("a/d/secret"); !errors.Is(err, ErrUnsafe) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("parent through a symlink: want ErrUnsafe, got %v", err)
	}
	// Names that are symlinks to the outside, in a real directory.
	a, err := tg.openDir("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	mklink(t, s.etc, "a/tofile", filepath.Join(s.outside, "secret"))
	mklink(t, s.etc, "a/tolink", filepath.Join(s.outside, "secret"))
	mklink(t, s.etc, "a/todir", s.outside)
	fs := RealFS()
	if err := fs.WriteFileAtomic(a, "tofile", bytes.NewReader([]byte("overwritten\n")), Attr{Mode: 0644, SetTimes: true, Mtime: fixedTime, Atime: fixedTime}); err != nil {
		t.Fatal(err)
	}
	if err := fs.SymlinkAtomic(a, "tolink", "elsewhere", Attr{Xattrs: []Xattr{{"trusted.x", []byte("v")}}}); err != nil {
		t.Fatal(err)
	}
	if err := fs.RemoveAll(a, "todir"); err != nil {
		t.Fatal(err)
	}
	if err := fs.RemoveAll(a, "d"); err != nil { // the swapped symlink
		t.Fatal(err)
	}
	if err := fs.Mkdir(a, "tolink", 0700); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("mkdir over a symlink: %v", err)
	}
	if after := s.outsideSum(t); after != before {
		t.Fatalf("the outside changed:\n%s\nwas\n%s", after, before)
	}
	if c, err := os.ReadFile(filepath.Join(s.etc, "a/tofile")); err != nil || string(c) != "overwritten\n" {
		t.Fatalf("tofile: %q %v", c, err)
	}
	if l, err := os.Readlink(filepath.Join(s.etc, "a/tolink")); err != nil || l != "elsewhere" {
		t.Fatalf("tolink: %q %v", l, err)
	}
	if v, err := pathXattrs(filepath.Join(s.etc, "a/tolink")); err != nil || len(v) != 1 || string(v[0].Value) != "v" {
		t.Fatalf("tolink xattrs: %v %v", v, err)
	}
	if v, err := pathXattrs(filepath.Join(s.outside, "secret")); err != nil || len(v) != 1 || string(v[0].Value) != secret {
		t.Fatalf("outside secret xattrs changed: %v %v", v, err)
	}
}

// Privileged files a user may have planted are left to ostree: the merge
// stops with ErrPlanted and writes no privileged copy; the same file in a
// root-owned directory with one link, or without privilege, is copied as
// ostree copies it.
func TestMergePlantedPrivilege(t *testing.T) {
	requireRoot(t)
	cases := []struct {
		name    string
		setup   func(t *testing.T, mod string)
		planted bool
	}{
		{"setuid hard link", func(t *testing.T, mod string) {
			mkfile(t, mod, "svc/x", "binary\n", 04755, 0, 0)
			if err := os.Link(filepath.Join(mod, "svc/x"), filepath.Join(mod, "svc/y")); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"setgid, owner not the user directory's", func(t *testing.T, mod string) {
			mkfile(t, mod, "svc/x", "binary\n", 02755, 0, 0)
		}, true},
		{"capability, owner not the user directory's", func(t *testing.T, mod string) {
			mkfile(t, mod, "svc/x", "binary\n", 0755, 0, 0)
			// A v2 file capability (cap_net_raw, permitted).
			setxattr(t, mod, "svc/x", "security.capability", "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
		}, true},
		{"setuid in the user's directory, owned by the user", func(t *testing.T, mod string) {
			mkfile(t, mod, "svc/x", "binary\n", 04755, 1000, 1000)
		}, false},
		{"plain hard links", func(t *testing.T, mod string) {
			mkfile(t, mod, "svc/x", "conf\n", 0644, 0, 0)
			if err := os.Link(filepath.Join(mod, "svc/x"), filepath.Join(mod, "svc/y")); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := newTrio(t)
			mkdir(t, tr.modified, "svc", 0755)
			if err := os.Chown(filepath.Join(tr.modified, "svc"), 1000, 1000); err != nil {
				t.Fatal(err)
			}
			c.setup(t, tr.modified)
			n := tr.freshNew(t)
			_, err := Merge(context.Background(), RealFS(), tr.orig, tr.modified, n)
			n2 := tr.freshNew(t)
			_, err2 := MergePaths(context.Background(), RealFS(), tr.orig, tr.modified, n2, tr.defaults, []string{"svc"})
			for i, e := range []error{err, err2} {
				if c.planted != errors.Is(e, ErrPlanted) || (!c.planted && e != nil) {
					t.Fatalf("merge %d: planted %v, got %v", i, c.planted, e)
				}
				if c.planted && !errors.Is(e, ErrUnsafe) {
					t.Fatalf("ErrPlanted must be an ErrUnsafe (callers fall back): %v", e)
				}
			}
			for _, etc := range []string{n, n2} {
				var st unix.Stat_t
				err := unix.Lstat(filepath.Join(etc, "svc/x"), &st)
				if c.planted && err == nil {
					t.Fatalf("%s: planted file copied (mode %o)", etc, st.Mode)
				}
				if !c.planted && err != nil {
					t.Fatalf("%s: not copied: %v", etc, err)
				}
			}
		})
	}
}

// Stage's merge and the watcher's batches issue no fsync and no syncfs
// (issue 15): only the seal flushes (SyncEtc).
func TestMergeQuietIO(t *testing.T) {
	requireRoot(t)
	tr := setupKinds(t)
	ctx := context.Background()
	syncs := 0
	fs := RealFS()
	fs.Syncfs = func(f *os.File) error { syncs++; return unix.Syncfs(int(f.Fd())) }
	fs.Fsync = func(f *os.File) error { syncs++; return f.Sync() }
	n := tr.freshNew(t)
	if _, err := Merge(ctx, fs, tr.orig, tr.modified, n); err != nil {
		t.Fatal(err)
	}
	mkfile(t, tr.modified, "hosts", "changed again\n", 0644, 0, 0)
	if w, err := MergePaths(ctx, fs, tr.orig, tr.modified, n, tr.defaults, []string{"hosts"}); err != nil || w == 0 {
		t.Fatalf("MergePaths wrote %d: %v", w, err)
	}
	if w, err := MergePaths(ctx, fs, tr.orig, tr.modified, n, tr.defaults, []string{""}); err != nil {
		t.Fatalf("MergePaths wrote %d: %v", w, err)
	}
	if w, err := Reset(ctx, fs, n, tr.defaults); err != nil || w == 0 {
		t.Fatalf("Reset wrote %d: %v", w, err)
	}
	if syncs != 0 {
		t.Fatalf("%d fsync/syncfs calls in Merge, MergePaths and Reset", syncs)
	}
	if err := SyncEtc(fs, n); err != nil || syncs != 1 {
		t.Fatalf("SyncEtc: %d syncs, %v", syncs, err)
	}
}
