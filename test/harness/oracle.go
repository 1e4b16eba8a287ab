package harness

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// OracleEnv selects the ostree the tests compare with: a Debian suite name
// (bookworm, trixie), a comma-separated list of them, or "all" (the
// default, and what make test and CI use).
const OracleEnv = "OSTREE_PREFINALIZE_ORACLE"

// RootsEnv is the directory holding the Debian roots test/roots/build.sh
// builds (default DefaultRoots).
const RootsEnv = "OSTREE_PREFINALIZE_ROOTS"

// DefaultRoots is where test/roots/build.sh puts its roots.
const DefaultRoots = "/var/cache/ostree-prefinalize/roots"

// AllOracles are the oracles "all" means, oldest ostree first: bookworm's
// 2022.7 and trixie's 2025.2.
var AllOracles = []string{"bookworm", "trixie"}

// Oracle is one real ostree the tests compare with: the ostree of a Debian
// suite. The suite the host itself runs is the host's own /usr (the ostree
// make deps installs); any other suite runs from its root built by
// test/roots/build.sh: its /usr replaces the host's, both in the booted
// namespace and, in a private mount namespace, for the fixture's host-side
// ostree commands. A merged-/usr root is a whole userland (ostree, its
// libraries, the dynamic loader, bwrap, sh, coreutils), so nothing of the
// host's mixes in except the kernel, /etc and the files the test binds.
type Oracle struct {
	// Name is the Debian suite.
	Name string
	// Root is the suite's root directory; "" means the host.
	Root string
}

// Usr is the directory bound on /usr for this oracle.
func (o Oracle) Usr() string {
	if o.Root == "" {
		return "/usr"
	}
	return filepath.Join(o.Root, "usr")
}

// Version is the oracle's ostree version ("2025.2"): what the root
// recorded when it was built (test/roots/build.sh writes `ostree --version`
// to .ostree-version), or what the host's ostree says; "unknown" when
// neither can be read.
func (o Oracle) Version() string {
	var b []byte
	if o.Root == "" {
		b = hostVersion()
	} else {
		b, _ = os.ReadFile(filepath.Join(o.Root, ".ostree-version"))
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Version:"); ok {
			return strings.Trim(strings.TrimSpace(v), "'\"")
		}
	}
	return "unknown"
}

var hostVersion = sync.OnceValue(func() []byte {
	b, _ := exec.Command("ostree", "--version").Output()
	return b
})

// AtLeast reports whether the oracle's ostree is version year.release or
// newer (false when the version is unknown).
func (o Oracle) AtLeast(year, release int) bool {
	var y, r int
	if _, err := fmt.Sscanf(o.Version(), "%d.%d", &y, &r); err != nil {
		return false
	}
	return y > year || y == year && r >= release
}

// KeepsSysAdmin reports whether the booted namespace keeps CAP_SYS_ADMIN
// for this oracle: since 2025.1 ostree refuses to change a booted sysroot
// unless CAP_SYS_ADMIN is in its bounding set (ot_util_process_privileged),
// so the booted namespace cannot drop it to make FIFREEZE fail; the nofreeze
// command's seccomp filter makes that one ioctl fail with EPERM instead
// (see its doc). A user namespace would not do: ostree could not clear the
// immutable flag of a deployment it removes.
func (o Oracle) KeepsSysAdmin() bool { return o.AtLeast(2025, 1) }

var noFreeze struct {
	once sync.Once
	bin  []byte
	err  error
}

// noFreezeCommand writes the nofreeze command (built once per test binary)
// into a temporary directory of t and returns its path.
func noFreezeCommand(t testing.TB) string {
	t.Helper()
	noFreeze.once.Do(func() { noFreeze.bin, noFreeze.err = buildStatic("nofreeze") })
	if noFreeze.err != nil {
		t.Fatalf("building nofreeze: %v", noFreeze.err)
	}
	p := filepath.Join(t.TempDir(), "nofreeze")
	if err := os.WriteFile(p, noFreeze.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// check reports why the oracle cannot run (its root is not built).
func (o Oracle) check() error {
	if o.Root == "" {
		return nil
	}
	if _, err := os.Stat(filepath.Join(o.Root, ".complete")); err != nil {
		return fmt.Errorf("oracle %s: no finished root at %s (make deps builds it: test/roots/build.sh %s)", o.Name, o.Root, o.Name)
	}
	return nil
}

// hostSuite is VERSION_CODENAME from /etc/os-release.
var hostSuite = sync.OnceValue(func() string {
	f, err := os.Open("/etc/os-release")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VERSION_CODENAME="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
})

// OracleNamed is the oracle of a Debian suite.
func OracleNamed(name string) Oracle {
	if name == hostSuite() {
		return Oracle{Name: name}
	}
	base := os.Getenv(RootsEnv)
	if base == "" {
		base = DefaultRoots
	}
	return Oracle{Name: name, Root: filepath.Join(base, name)}
}

// SelectedOracles are the oracles OracleEnv selects (all when unset).
func SelectedOracles() []Oracle {
	v := strings.TrimSpace(os.Getenv(OracleEnv))
	names := AllOracles
	if v != "" && v != "all" {
		names = strings.Split(v, ",")
	}
	var out []Oracle
	for _, n := range names {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, OracleNamed(n))
		}
	}
	return out
}

// DefaultOracle is the first selected oracle: the one tests that do not
// compare with ostree, and programs such as the demo, run against.
func DefaultOracle() Oracle { return SelectedOracles()[0] }

// oracleOfTest maps the name of each running ForEachOracle subtest to its
// oracle.
var oracleOfTest sync.Map

// ForEachOracle runs fn as one subtest per selected oracle, named by it
// (TestParityPinned/trixie). Sysroots made inside (NewSysroot with t or a
// subtest of it) use that oracle's ostree, and so do the booted namespaces
// and copies made from them. With the end-to-end switch on, a root that is
// not built fails the subtest.
func ForEachOracle(t *testing.T, fn func(t *testing.T)) {
	t.Helper()
	for _, o := range SelectedOracles() {
		o := o
		t.Run(o.Name, func(t *testing.T) {
			if Enabled() {
				if err := o.check(); err != nil {
					t.Fatal(err)
				}
			}
			oracleOfTest.Store(t.Name(), o)
			t.Cleanup(func() { oracleOfTest.Delete(t.Name()) })
			fn(t)
		})
	}
}

// OracleOf is the oracle of t: that of the innermost ForEachOracle around
// it, else DefaultOracle.
func OracleOf(t testing.TB) Oracle {
	name := t.Name()
	for {
		if o, ok := oracleOfTest.Load(name); ok {
			return o.(Oracle)
		}
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			return DefaultOracle()
		}
		name = name[:i]
	}
}

// oracleArgv wraps an ostree command line (already wrapped by ostreeArgv)
// so it runs the oracle's ostree: for a root, in a private mount namespace
// with the root's /usr on /usr and its loader cache on /etc/ld.so.cache
// (the host's names library paths the root may not have). Everything else,
// the sysroot under the test's temporary directory included, stays where
// it is. The mounts need CAP_SYS_ADMIN, so they come before ostreeArgv's
// setpriv, which then runs from the root's /usr.
func (o Oracle) oracleArgv(argv []string) []string {
	if o.Root == "" {
		return argv
	}
	const script = `set -e
mount --rbind "$0/usr" /usr
if [ -e "$0/etc/ld.so.cache" ] && [ -e /etc/ld.so.cache ]; then mount --bind "$0/etc/ld.so.cache" /etc/ld.so.cache; fi
exec "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, o.Root}, argv...)
}
