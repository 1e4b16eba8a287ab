package etcmerge

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// requireRoot: the unit tests chown and create devices-free special files
// on t.TempDir(); they need root. Same switch as test/harness (not imported
// here, so that the harness may import this package without a cycle):
// skipped when the switch is off, a failure when it is on.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("OSTREE_PREFINALIZE_E2E") == "1" {
		t.Fatal("OSTREE_PREFINALIZE_E2E=1 but not running as root")
	}
	t.Skip("needs root: set OSTREE_PREFINALIZE_E2E=1 and run as root")
}

// fixedTime makes mtimes reproducible.
var fixedTime = unix.NsecToTimespec(1_600_000_000_123_456_789)

func mkfile(t testing.TB, root, rel, content string, mode uint32, uid, gid int) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0755); err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(p)
	if err := os.WriteFile(p, []byte(content), 0600); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, os.FileMode(mode&0777)|modeBits(mode)); err != nil {
		t.Fatal(err)
	}
	if err := unix.UtimesNano(p, []unix.Timespec{fixedTime, fixedTime}); err != nil {
		t.Fatal(err)
	}
}

func modeBits(m uint32) os.FileMode {
	var fm os.FileMode
	if m&04000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&02000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&01000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

func mkdir(t testing.TB, root, rel string, mode uint32) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(p, 0755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func mklink(t testing.TB, root, rel, target string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0755); err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(p)
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func mkfifo(t testing.TB, root, rel string) {
	t.Helper()
	p := filepath.Join(root, rel)
	_ = os.RemoveAll(p)
	if err := unix.Mkfifo(p, 0644); err != nil {
		t.Fatal(err)
	}
}

func setxattr(t testing.TB, root, rel, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(filepath.Join(root, rel), name, []byte(value), 0); err != nil {
		t.Fatal(err)
	}
}

// trio is the three directories of a merge: orig (booted usr/etc),
// modified (booted etc), defaults (new usr/etc); newEtc starts as a copy
// of defaults.
type trio struct {
	orig, modified, defaults string
}

func newTrio(t testing.TB) trio {
	d := t.TempDir()
	tr := trio{filepath.Join(d, "orig"), filepath.Join(d, "modified"), filepath.Join(d, "defaults")}
	for _, p := range []string{tr.orig, tr.modified, tr.defaults} {
		if err := os.Mkdir(p, 0755); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

// freshNew is a fresh copy of defaults, as the staged etc is before any merge.
func (tr trio) freshNew(t testing.TB) string {
	t.Helper()
	n := filepath.Join(t.TempDir(), "new")
	copyTree(t, tr.defaults, n)
	return n
}
