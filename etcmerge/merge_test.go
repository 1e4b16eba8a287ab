package etcmerge

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// baseTree is a small usr/etc.
func baseTree(t *testing.T, root string) {
	mkfile(t, root, "hosts", "127.0.0.1 localhost\n", 0644, 0, 0)
	mkfile(t, root, "motd", "hello\n", 0644, 0, 0)
	mkfile(t, root, "shadow", "root:x\n", 0400, 0, 42)
	mkfile(t, root, "ssh/sshd_config", "Port 22\n", 0600, 0, 0)
	mkfile(t, root, "ssh/ssh_config", "Host *\n", 0644, 0, 0)
	mkfile(t, root, "conf.d/a.conf", "a\n", 0644, 0, 0)
	mkfile(t, root, "conf.d/b.conf", "b\n", 0644, 0, 0)
	mkfile(t, root, "gone/x", "x\n", 0644, 0, 0)
	mkfile(t, root, "gone/sub/y", "y\n", 0644, 0, 0)
	mkfile(t, root, "tochange", "file\n", 0644, 0, 0)
	mkfile(t, root, "todir", "file\n", 0644, 0, 0)
	mkfile(t, root, "both", "old default\n", 0644, 0, 0)
	mklink(t, root, "localtime", "../usr/share/zoneinfo/UTC")
	mklink(t, root, "retarget", "a")
	mkdir(t, root, "pam.d", 0755)
	mkfile(t, root, "pam.d/login", "auth\n", 0644, 0, 0)
	mkdir(t, root, "modedir", 0755)
	mkfile(t, root, "modedir/f", "f\n", 0644, 0, 0)
	mkdir(t, root, "modedir2", 0755)
	for _, d := range []string{"ssh", "conf.d", "gone", "gone/sub", "pam.d"} {
		mkdir(t, root, d, 0755)
	}
}

// everyKind edits modified with one change of each kind the issue lists.
func everyKind(t *testing.T, m string) {
	mkfile(t, m, "hosts", "127.0.0.1 localhost\n10.0.0.1 db\n", 0644, 0, 0) // content
	if err := os.Chmod(filepath.Join(m, "motd"), 0600); err != nil {        // chmod
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(m, "ssh/ssh_config"), 1000, 1000); err != nil { // chown
		t.Fatal(err)
	}
	mkfile(t, m, "newfile", "new\n", 0640, 0, 0)                  // add a file
	mkfile(t, m, "newdir/sub/deep.conf", "deep\n", 0600, 1001, 0) // nested dirs
	mkdir(t, m, "newdir", 0750)
	mkdir(t, m, "newdir/sub", 0700)
	mklink(t, m, "newdir/link", "sub/deep.conf")
	mklink(t, m, "newdir/dangling", "/nonexistent")
	mklink(t, m, "newdir/loop1", "loop2")
	mklink(t, m, "newdir/loop2", "loop1")
	if err := os.Remove(filepath.Join(m, "conf.d/b.conf")); err != nil { // remove a file
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(m, "gone")); err != nil { // remove a dir
		t.Fatal(err)
	}
	mklink(t, m, "tochange", "hosts")                                   // file -> symlink
	mklink(t, m, "retarget", "b")                                       // retarget
	mkfifo(t, m, "pam.d/fifo")                                          // a fifo
	if err := os.Chmod(filepath.Join(m, "modedir"), 0700); err != nil { // dir mode
		t.Fatal(err)
	}
	mkfile(t, m, "shadow", "root:y\n", 0400, 0, 42) // modified + xattr
	setxattr(t, m, "shadow", "user.label", "secret")
	if err := os.Remove(filepath.Join(m, "todir")); err != nil { // file -> dir
		t.Fatal(err)
	}
	mkfile(t, m, "todir/inside", "in\n", 0644, 0, 0)
	mkfile(t, m, "both", "local edit\n", 0644, 0, 0)  // also changed in the new commit
	mkfile(t, m, "modedir2/added", "x\n", 0644, 0, 0) // parent gets booted attrs
	if err := os.Chmod(filepath.Join(m, "modedir2"), 0711); err != nil {
		t.Fatal(err)
	}
	mkfile(t, m, "name\nwith newline", "nl\n", 0644, 0, 0)
	mkfile(t, m, "bad\xff\xfeutf8", "bin\n", 0644, 0, 0)
}

func newCommit(t *testing.T, d string) {
	mkfile(t, d, "both", "new default\n", 0644, 0, 0)
	mkfile(t, d, "fromnew", "only in the new commit\n", 0644, 0, 0)
	if err := os.RemoveAll(filepath.Join(d, "pam.d/login")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(d, "ssh"), 0700); err != nil {
		t.Fatal(err)
	}
}

func setupKinds(t *testing.T) trio {
	tr := newTrio(t)
	baseTree(t, tr.orig)
	copyTree(t, tr.orig, tr.modified)
	copyTree(t, tr.orig, tr.defaults)
	everyKind(t, tr.modified)
	newCommit(t, tr.defaults)
	return tr
}

func TestDiffKinds(t *testing.T) {
	requireRoot(t)
	tr := setupKinds(t)
	c, err := Diff(context.Background(), tr.orig, tr.modified)
	if err != nil {
		t.Fatal(err)
	}
	want := &Changes{
		Modified: []string{"both", "hosts", "modedir", "modedir2", "motd", "retarget", "shadow", "ssh/ssh_config", "tochange", "todir"},
		Removed:  []string{"conf.d/b.conf", "gone"},
		Added: []string{"modedir2/added", "pam.d/fifo",
			"bad\xff\xfeutf8", "name\nwith newline", "newdir", "newdir/dangling", "newdir/link", "newdir/loop1", "newdir/loop2",
			"newdir/sub", "newdir/sub/deep.conf", "newfile"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("diff:\n got %q\nwant %q", c, want)
	}
	if got := c.Message(); got != "Copying /etc changes: 10 modified, 2 removed, 12 added" {
		t.Fatalf("message %q", got)
	}
}

func TestMergeKinds(t *testing.T) {
	requireRoot(t)
	tr := setupKinds(t)
	ctx := context.Background()
	n := tr.freshNew(t)
	rep, err := Merge(ctx, RealFS(), tr.orig, tr.modified, n)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(rep.Ignored, []string{"pam.d/fifo"}) {
		t.Fatalf("ignored %q", rep.Ignored)
	}
	got := snapTree(t, n, snapOpts{})
	mod := snapTree(t, tr.modified, snapOpts{})
	def := snapTree(t, tr.defaults, snapOpts{})
	check := func(p string, want node, ok bool) {
		t.Helper()
		g, gok := got[p]
		if gok != ok || (ok && !reflect.DeepEqual(g, want)) {
			t.Errorf("%q: got %v (present %v), want %v (present %v)", p, g, gok, want, ok)
		}
	}
	for _, p := range []string{"hosts", "motd", "ssh/ssh_config", "newfile", "newdir", "newdir/sub", "newdir/sub/deep.conf",
		"newdir/link", "newdir/dangling", "newdir/loop1", "tochange", "retarget", "shadow", "todir", "todir/inside", "both",
		"modedir2/added", "modedir2", "name\nwith newline", "bad\xff\xfeutf8"} {
		check(p, mod[p], true)
	}
	for _, p := range []string{"conf.d/b.conf", "gone", "pam.d/fifo", "pam.d/login"} {
		check(p, node{}, false)
	}
	// A changed directory mode is lost when the new etc has the directory
	// (ostree "assumes the parent was copied"); ssh gets the booted
	// attributes back because a child was modified.
	check("modedir", def["modedir"], true)
	check("ssh", mod["ssh"], true)
	check("fromnew", def["fromnew"], true)
	check("conf.d/a.conf", def["conf.d/a.conf"], true)

	// The per-path merge from a fresh copy, for all of etc and for the
	// changed paths only, gives the same tree.
	for _, paths := range [][]string{{""}, {"hosts", "motd", "ssh/ssh_config", "newfile", "newdir", "conf.d/b.conf", "gone",
		"tochange", "retarget", "pam.d/fifo", "modedir", "shadow", "todir", "both", "modedir2/added", "modedir2",
		"name\nwith newline", "bad\xff\xfeutf8"}} {
		n2 := tr.freshNew(t)
		if _, err := MergePaths(ctx, RealFS(), tr.orig, tr.modified, n2, tr.defaults, paths); err != nil {
			t.Fatal(err)
		}
		requireSameTree(t, "MergePaths vs Merge", snapTree(t, n2, snapOpts{}), got)
		// Idempotent: nothing left to write.
		k, err := MergePaths(ctx, RealFS(), tr.orig, tr.modified, n2, tr.defaults, paths)
		if err != nil || k != 0 {
			t.Fatalf("second MergePaths wrote %d entries, err %v", k, err)
		}
	}
	// Reset brings the merged etc back to the defaults.
	if _, err := Reset(ctx, RealFS(), n, tr.defaults); err != nil {
		t.Fatal(err)
	}
	requireSameTree(t, "Reset", snapTree(t, n, snapOpts{noMtime: true}), snapTree(t, tr.defaults, snapOpts{noMtime: true}))
}

func TestMergeNewDefaultDir(t *testing.T) {
	requireRoot(t)
	tr := newTrio(t)
	mkfile(t, tr.orig, "x", "a\n", 0644, 0, 0)
	mkfile(t, tr.modified, "x", "b\n", 0644, 0, 0)
	mkfile(t, tr.defaults, "x/inner", "dir now\n", 0644, 0, 0)
	mkfile(t, tr.orig, "y", "a\n", 0644, 0, 0)
	mkfile(t, tr.modified, "y", "b\n", 0644, 0, 0)
	n := tr.freshNew(t)
	before := snapTree(t, n, snapOpts{})
	_, err := Merge(context.Background(), RealFS(), tr.orig, tr.modified, n)
	if !errors.Is(err, ErrNewDefaultDir) {
		t.Fatalf("want ErrNewDefaultDir, got %v", err)
	}
	requireSameTree(t, "new etc after a failed merge", snapTree(t, n, snapOpts{}), before)
	if _, err := MergePaths(context.Background(), RealFS(), tr.orig, tr.modified, n, tr.defaults, []string{"x"}); !errors.Is(err, ErrNewDefaultDir) {
		t.Fatalf("MergePaths: want ErrNewDefaultDir, got %v", err)
	}
}

func TestMergeFifoInAddedDir(t *testing.T) {
	requireRoot(t)
	tr := newTrio(t)
	mkdir(t, tr.modified, "d", 0755)
	mkfile(t, tr.modified, "d/f", "f\n", 0644, 0, 0)
	mkfifo(t, tr.modified, "d/p")
	n := tr.freshNew(t)
	_, err := Merge(context.Background(), RealFS(), tr.orig, tr.modified, n)
	if !errors.Is(err, ErrNotCopyable) {
		t.Fatalf("want ErrNotCopyable, got %v", err)
	}
	if _, lerr := os.Lstat(filepath.Join(n, "d")); !os.IsNotExist(lerr) {
		t.Fatalf("new etc written before the error: %v (merge: %v)", lerr, err)
	}
}

// A fifo replacing a file: ostree unlinks the new default and copies nothing.
func TestMergeFifoReplacesFile(t *testing.T) {
	requireRoot(t)
	tr := newTrio(t)
	mkfile(t, tr.orig, "f", "a\n", 0644, 0, 0)
	mkfifo(t, tr.modified, "f")
	mkfile(t, tr.defaults, "f", "new\n", 0644, 0, 0)
	n := tr.freshNew(t)
	rep, err := Merge(context.Background(), RealFS(), tr.orig, tr.modified, n)
	if err != nil || !reflect.DeepEqual(rep.Ignored, []string{"f"}) {
		t.Fatalf("rep %+v err %v", rep, err)
	}
	if _, err := os.Lstat(filepath.Join(n, "f")); !os.IsNotExist(err) {
		t.Fatalf("f should be gone: %v", err)
	}
}

func TestMergeUnsafeSymlinkParent(t *testing.T) {
	requireRoot(t)
	tr := newTrio(t)
	outside := t.TempDir()
	mkfile(t, tr.orig, "ssh/config", "a\n", 0644, 0, 0)
	mkfile(t, tr.modified, "ssh/config", "b\n", 0644, 0, 0)
	mklink(t, tr.defaults, "ssh", outside)
	n := tr.freshNew(t)
	_, err := Merge(context.Background(), RealFS(), tr.orig, tr.modified, n)
	if !errors.Is(err, ErrUnsafe) {
		t.Fatalf("want ErrUnsafe, got %v", err)
	}
	if _, err := MergePaths(context.Background(), RealFS(), tr.orig, tr.modified, n, tr.defaults, []string{"ssh/config"}); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("MergePaths: want ErrUnsafe, got %v", err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("wrote outside etc: %v", ents)
	}
	// The target primitives refuse symlinks on the way, relative or not.
	tg, err := openTarget(n, RealFS())
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	for _, p := range []string{"ssh/config", "../x", "a/../../b", "/etc/passwd", "ssh"} {
		if d, err := tg.openDir(p); err == nil {
			d.Close()
			t.Errorf("openDir(%q) succeeded", p)
		}
	}
}

func TestMergeLongPath(t *testing.T) {
	requireRoot(t)
	tr := newTrio(t)
	// A relative path of more than 4096 bytes: built with *at calls.
	comp := strings.Repeat("d", 200)
	fd, err := unix.Open(tr.modified, unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 25; i++ {
		if err := unix.Mkdirat(fd, comp, 0755); err != nil {
			t.Fatal(err)
		}
		nfd, err := unix.Openat(fd, comp, unix.O_DIRECTORY|unix.O_RDONLY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = nfd
	}
	unix.Close(fd)
	n := tr.freshNew(t)
	_, err = Merge(context.Background(), RealFS(), tr.orig, tr.modified, n)
	if err == nil || !errors.Is(err, unix.ENAMETOOLONG) {
		t.Fatalf("want a clear ENAMETOOLONG error, got %v", err)
	}
	t.Logf("error: %.200s", err)
}

func TestMergeFaultInjection(t *testing.T) {
	requireRoot(t)
	tr := setupKinds(t)
	for _, field := range []string{"WriteFileAtomic", "SymlinkAtomic", "SetDirAttr", "Mkdir", "RemoveAll"} {
		for nth := 1; nth <= 3; nth++ {
			n := tr.freshNew(t)
			fs := RealFS()
			calls := 0
			boom := errors.New("injected")
			fail := func() bool { calls++; return calls == nth }
			switch field {
			case "WriteFileAtomic":
				real := fs.WriteFileAtomic
				fs.WriteFileAtomic = func(d *os.File, name string, src io.Reader, a Attr) error {
					if fail() {
						return boom
					}
					return real(d, name, src, a)
				}
			case "SymlinkAtomic":
				real := fs.SymlinkAtomic
				fs.SymlinkAtomic = func(d *os.File, name, target string, a Attr) error {
					if fail() {
						return boom
					}
					return real(d, name, target, a)
				}
			case "SetDirAttr":
				real := fs.SetDirAttr
				fs.SetDirAttr = func(d *os.File, a Attr) error {
					if fail() {
						return boom
					}
					return real(d, a)
				}
			case "Mkdir":
				real := fs.Mkdir
				fs.Mkdir = func(d *os.File, name string, mode uint32) error {
					if fail() {
						return boom
					}
					return real(d, name, mode)
				}
			case "RemoveAll":
				real := fs.RemoveAll
				fs.RemoveAll = func(d *os.File, name string) error {
					if fail() {
						return boom
					}
					return real(d, name)
				}
			}
			_, err := Merge(context.Background(), fs, tr.orig, tr.modified, n)
			if err == nil && calls < nth {
				continue // fewer calls than nth: nothing to inject
			}
			if !errors.Is(err, boom) {
				t.Fatalf("%s #%d: want the injected error, got %v", field, nth, err)
			}
			// Whatever was written is whole: every regular file equals the
			// default or the booted version, and no temporary file is left.
			got := snapTree(t, n, snapOpts{noMtime: true})
			mod := snapTree(t, tr.modified, snapOpts{noMtime: true})
			def := snapTree(t, tr.defaults, snapOpts{noMtime: true})
			for p, g := range got {
				if strings.Contains(p, ".prefinalize-tmp-") {
					t.Fatalf("%s #%d: temporary file left: %q", field, nth, p)
				}
				if g.Type != "file" {
					continue
				}
				if string(g.Content) != string(mod[p].Content) && string(g.Content) != string(def[p].Content) {
					t.Fatalf("%s #%d: %q has content %q, neither default nor booted", field, nth, p, g.Content)
				}
			}
			// And a second, unfaulted MergePaths over everything repairs it.
			if _, err := MergePaths(context.Background(), RealFS(), tr.orig, tr.modified, n, tr.defaults, []string{""}); err != nil {
				t.Fatal(err)
			}
			want := tr.freshNew(t)
			if _, err := Merge(context.Background(), RealFS(), tr.orig, tr.modified, want); err != nil {
				t.Fatal(err)
			}
			requireSameTree(t, field+" repaired", snapTree(t, n, snapOpts{}), snapTree(t, want, snapOpts{}))
		}
	}
}

// From ostree 2024.2 (FS.SkipSpecialInDirs) copy_dir_recurse skips fifos,
// sockets and devices instead of failing: the full merge and the per-path
// merge both leave them out and copy the rest of the directory.
func TestMergeSpecialInDirSkipped(t *testing.T) {
	requireRoot(t)
	tr := newTrio(t)
	mkdir(t, tr.modified, "d", 0755)
	mkfile(t, tr.modified, "d/f", "f\n", 0644, 0, 0)
	mkfifo(t, tr.modified, "d/p")
	mkdir(t, tr.modified, "d/sub", 0750)
	if err := unix.Mknod(filepath.Join(tr.modified, "d/sub/sock"), unix.S_IFSOCK|0644, 0); err != nil {
		t.Fatal(err)
	}
	mkfile(t, tr.modified, "d/sub/g", "g\n", 0600, 0, 0)
	fs := RealFS()
	fs.SkipSpecialInDirs = true
	n := tr.freshNew(t)
	rep, err := Merge(context.Background(), fs, tr.orig, tr.modified, n)
	if err != nil {
		t.Fatal(err)
	}
	// ostree lists an added directory's entries too, so each is ignored
	// twice: inside copy_dir_recurse, then as an added path of its own.
	if strings.Join(rep.Ignored, " ") != "d/p d/sub/sock d/p d/sub/sock" {
		t.Errorf("ignored %q", rep.Ignored)
	}
	for _, p := range []string{"d/p", "d/sub/sock"} {
		if _, err := os.Lstat(filepath.Join(n, p)); !os.IsNotExist(err) {
			t.Errorf("%s copied: %v", p, err)
		}
	}
	for _, p := range []string{"d/f", "d/sub/g"} {
		if _, err := os.Lstat(filepath.Join(n, p)); err != nil {
			t.Errorf("%s not copied: %v", p, err)
		}
	}
	full := snapTree(t, n, snapOpts{})
	n2 := tr.freshNew(t)
	if _, err := MergePaths(context.Background(), fs, tr.orig, tr.modified, n2, tr.defaults, []string{""}); err != nil {
		t.Fatal(err)
	}
	requireSameTree(t, "per-path merge vs full merge", snapTree(t, n2, snapOpts{}), full)
	// Without the choice (2022.7) the same trees fail, as before.
	if _, err := MergePaths(context.Background(), RealFS(), tr.orig, tr.modified, tr.freshNew(t), tr.defaults, []string{"d"}); !errors.Is(err, ErrNotCopyable) {
		t.Fatalf("2022.7 MergePaths: want ErrNotCopyable, got %v", err)
	}
}
