package harness

import (
	"strings"
	"testing"
)

// TestOracleRuns: the fixture's host-side ostree and the booted
// namespace's both are the oracle's (the version its root recorded), and
// so is the /usr the booted namespace sees.
func TestOracleRuns(t *testing.T) {
	ForEachOracle(t, func(t *testing.T) {
		RequireRoot(t)
		o := OracleOf(t)
		want := "Version: '" + o.Version() + "'"
		if o.Version() == "unknown" {
			t.Fatalf("oracle %s: version unknown", o.Name)
		}
		s := NewSysroot(t, Options{})
		if s.Oracle != o {
			t.Fatalf("sysroot made with %+v, want %+v", s.Oracle, o)
		}
		if out := s.Ostree("--version"); !strings.Contains(out, want) {
			t.Fatalf("host-side ostree --version:\n%s\nwant %s", out, want)
		}
		s.CommitWith("testos/main", NewTree(TreeOptions{Seed: 5}), CommitOptions{Timestamp: fixedTime})
		b := s.Boot(t, s.Deploy("testos", "testos/main", "root=LABEL=harness"), BootOptions{})
		if out := b.MustRun("ostree", "--version"); !strings.Contains(out, want) {
			t.Fatalf("booted ostree --version:\n%s\nwant %s", out, want)
		}
		if out := b.MustShell(`stat -c %d:%i /usr`); strings.TrimSpace(out) != hostUsr(t) {
			t.Fatalf("booted /usr is %s, want the oracle's %s (%s)", out, o.Usr(), hostUsr(t))
		}
	})
}
