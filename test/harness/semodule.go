package harness

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var fakeSemodule struct {
	once sync.Once
	bin  []byte
	err  error
}

// FakeSemodule returns the fake semodule (package fakesemodule next to this
// file; its doc says what it models), built once per test binary with
// CGO_ENABLED=0 so that it runs in test trees, which have no libc. The
// bytes are kept in memory and shared by all tests of the binary (the build
// directory is not any test's TempDir, and is removed at once).
func FakeSemodule(t testing.TB) []byte {
	t.Helper()
	fakeSemodule.once.Do(func() {
		fakeSemodule.bin, fakeSemodule.err = buildFakeSemodule()
	})
	if fakeSemodule.err != nil {
		t.Fatalf("building the fake semodule: %v", fakeSemodule.err)
	}
	return fakeSemodule.bin
}

func buildFakeSemodule() ([]byte, error) { return buildStatic("fakesemodule") }

// buildStatic builds the command in the package directory dir next to this
// file with CGO_ENABLED=0 and returns its bytes.
func buildStatic(dir string) ([]byte, error) {
	// From the source directory when this file's path is known (the test
	// binary may run anywhere), else (a -trimpath build) by import path
	// from the working directory, which go test puts inside the module.
	src, pkg := "", "github.com/ostree-prefinalize/ostree-prefinalize/test/harness/"+dir
	if _, self, _, ok := runtime.Caller(0); ok && filepath.IsAbs(self) {
		src, pkg = filepath.Join(filepath.Dir(self), dir), "."
	}
	out, err := os.MkdirTemp("", "harness-"+dir+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out) // the bytes are kept in memory
	bin := filepath.Join(out, dir)
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, pkg)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build %s (in %q): %w\n%s", pkg, src, err, b)
	}
	// A dynamically linked binary would fail inside the tree with a
	// misleading "no such file or directory" (its missing interpreter).
	f, err := elf.Open(bin)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s is dynamically linked", bin)
		}
	}
	return os.ReadFile(bin)
}

// WithFakeSemodule puts the fake semodule at usr/bin/semodule (mode 0755)
// of tree and returns tree. With noFlag it also adds
// usr/share/fake-semodule/no-rebuild-flag, which makes it model a semodule
// without --rebuild-if-modules-changed/--refresh (ostree then skips the
// policy refresh); without, that marker is removed. It also adds the sys
// directory, where the booted namespace binds the host's /sys: ostree's
// bubblewrap sandbox for semodule binds /sys/block and its siblings and
// fails without them. The SELinux configuration (usr/etc/selinux/config,
// without which ostree does not run semodule at all, and the module store
// usr/etc/selinux/TYPE/active/modules) is the test's to add.
//
// ostree refreshes the policy whenever it finalizes a deployment with a
// merge deployment, and that includes a non-staged `ostree admin deploy`:
// Sysroot.Deploy of such a tree into a stateroot that already has a
// deployment runs bwrap on the host without CAP_SYS_ADMIN and fails
// ("bwrap: Creating new namespace failed"). Deploy the first such tree with
// Sysroot.Deploy and later ones with BootedHost.Stage and FinalizeStaged
// under BootOptions.UserNS.
func WithFakeSemodule(t testing.TB, tree *Tree, noFlag bool) *Tree {
	t.Helper()
	tree.Set("usr/bin/semodule", Bytes(FakeSemodule(t)).WithMode(0o755))
	tree.Set("sys", Dir())
	const marker = "usr/share/fake-semodule/no-rebuild-flag"
	if noFlag {
		tree.Set(marker, Text(""))
	} else {
		tree.Remove(marker)
	}
	return tree
}
