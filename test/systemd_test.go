package test

// The units of dist/systemd, installed with `make install` and checked by
// systemd's own `systemd-analyze verify`, plus the properties DESIGN.md
// fixes for them (ordering at shutdown, idle cleanup, the drop-in).

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// requireSystemdAnalyze gates on the E2E switch (make deps installs the
// systemd package that has systemd-analyze).
func requireSystemdAnalyze(t *testing.T) {
	t.Helper()
	if !harness.Enabled() {
		t.Skipf("end-to-end test: set %s=1 (make test does)", harness.E2EEnv)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatalf("%s=1 but systemd-analyze is missing: %v (run make deps)", harness.E2EEnv, err)
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make is missing: %v", err)
	}
}

func makeInstall(t *testing.T, vars ...string) {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", append([]string{"-C", root, "--no-print-directory", "install"}, vars...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install %v: %v\n%s", vars, err, out)
	}
}

// unitFile is a unit as key -> values (in order), "Section.Key".
type unitFile map[string][]string

func readUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	sec := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || l[0] == '#' || l[0] == ';':
		case l[0] == '[':
			sec = strings.Trim(l, "[]")
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Fatalf("%s: bad line %q", path, l)
			}
			u[sec+"."+k] = append(u[sec+"."+k], v)
		}
	}
	return u
}

func (u unitFile) has(key, want string) bool {
	for _, v := range u[key] {
		for _, f := range strings.Fields(v) {
			if f == want {
				return true
			}
		}
		if v == want {
			return true
		}
	}
	return false
}

func TestSystemdInstallDestdir(t *testing.T) {
	requireSystemdAnalyze(t)
	dest := t.TempDir()
	makeInstall(t, "DESTDIR="+dest)
	var got []string
	filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(dest, p)
			got = append(got, rel)
		}
		return nil
	})
	sort.Strings(got)
	all := strings.Join(got, "\n")
	for _, want := range []string{
		"usr/bin/ostree-prefinalize",
		"usr/lib/systemd/system/ostree-prefinalize.path",
		"usr/lib/systemd/system/ostree-prefinalize-stage.service",
		"usr/lib/systemd/system/ostree-prefinalize-watch.service",
		"usr/lib/systemd/system/ostree-prefinalize-cleanup.service",
		"usr/lib/systemd/system/ostree-prefinalize-cleanup.timer",
		"usr/lib/systemd/system/ostree-finalize-staged.service.d/ostree-prefinalize.conf",
		"usr/share/man/man8/ostree-prefinalize.8",
		"usr/share/man/man8/ostree-prefinalize-cleanup.8",
		"usr/share/bash-completion/completions/ostree-prefinalize",
	} {
		if !strings.Contains("\n"+all+"\n", "\n"+want+"\n") {
			t.Errorf("make install DESTDIR: %s missing; installed:\n%s", want, all)
		}
	}
	for _, p := range got {
		if strings.HasSuffix(p, ".tmp") {
			t.Errorf("leftover %s", p)
		}
	}
	// DESTDIR only relocates: the units still name /usr/bin.
	u := readUnit(t, filepath.Join(dest, "usr/lib/systemd/system/ostree-prefinalize-watch.service"))
	if got := u["Service.ExecStart"]; len(got) != 1 || got[0] != "/usr/bin/ostree-prefinalize watch" {
		t.Errorf("watch ExecStart %q", got)
	}
	if fi, err := os.Stat(filepath.Join(dest, "usr/bin/ostree-prefinalize")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("binary: %v %v", fi, err)
	}
}

// TestSystemdVerify installs with PREFIX in a temporary directory (so the
// units name a binary that exists: `systemd-analyze verify` checks every
// Exec command) and verifies every unit and the drop-in. Any output is a
// warning and fails the test (verify exits 0 on e.g. unknown keys).
func TestSystemdVerify(t *testing.T) {
	requireSystemdAnalyze(t)
	prefix := filepath.Join(t.TempDir(), "usr")
	makeInstall(t, "PREFIX="+prefix)
	dir := filepath.Join(prefix, "lib/systemd/system")

	// A stand-in for ostree's ostree-finalize-staged.service (the Debian
	// ostree package does not ship it) with no ExecStop of its own, so the
	// drop-in's ExecStop is the first and verify checks its command.
	standIn := `[Unit]
Description=stand-in for ostree's unit
DefaultDependencies=no
Conflicts=final.target
Before=final.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
`
	if err := os.WriteFile(filepath.Join(dir, "ostree-finalize-staged.service"), []byte(standIn), 0o644); err != nil {
		t.Fatal(err)
	}
	units, _ := filepath.Glob(filepath.Join(dir, "*.*"))
	var names []string
	for _, u := range units {
		if fi, err := os.Stat(u); err == nil && !fi.IsDir() {
			names = append(names, filepath.Base(u))
		}
	}
	if len(names) != 9 {
		t.Fatalf("units installed: %v", names)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, names...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify %v: %v\n%s", names, err, out)
	}

	// The verification catches a wrong command in the drop-in (so the
	// pass above means something).
	bad := filepath.Join(dir, "ostree-finalize-staged.service.d/ostree-prefinalize.conf")
	b, _ := os.ReadFile(bad)
	if err := os.WriteFile(bad, []byte(strings.ReplaceAll(string(b), prefix, "/nonexistent")), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command("systemd-analyze", "verify", "--man=no", "ostree-finalize-staged.service")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("verify passed a drop-in with a missing binary:\n%s", out)
	}
}

// TestSystemdUnitsDesign checks what DESIGN.md fixes for the units.
func TestSystemdUnitsDesign(t *testing.T) {
	d := "../dist/systemd/"
	path := readUnit(t, d+"ostree-prefinalize.path")
	if !path.has("Path.PathChanged", "/run/ostree/staged-deployment") || !path.has("Path.Unit", "ostree-prefinalize-stage.service") {
		t.Errorf("path unit: %v", path)
	}
	stage := readUnit(t, d+"ostree-prefinalize-stage.service")
	if !stage.has("Service.ExecStart", "stage") || !stage.has("Unit.Wants", "ostree-prefinalize-watch.service") {
		t.Errorf("stage unit: %v", stage)
	}
	w := readUnit(t, d+"ostree-prefinalize-watch.service")
	for _, c := range []struct{ k, v string }{
		{"Service.Type", "notify"},
		{"Unit.After", "ostree-finalize-staged.service"}, // stops before it at shutdown
		{"Unit.Conflicts", "final.target"},               // stopped in the same transaction as ostree's unit
		{"Service.ExecStart", "watch"},
	} {
		if !w.has(c.k, c.v) {
			t.Errorf("watch unit: %s lacks %s: %v", c.k, c.v, w[c.k])
		}
	}
	if got := w["Service.ExecStopPost"]; len(got) != 1 || !strings.HasSuffix(got[0], "ostree-prefinalize finalize --pre") {
		t.Errorf("watch ExecStopPost %q", got)
	}
	// The seal unit stops (seals) before ostree's finalization and after
	// the watcher, whether or not the watcher is still alive.
	if !w.has("Unit.After", "ostree-prefinalize-seal.service") || !stage.has("Unit.Wants", "ostree-prefinalize-seal.service") {
		t.Errorf("watch must be ordered after the seal unit, and stage must want it")
	}
	// ...and stage too, so the seal at shutdown follows a stopped stage
	// (TestNspawnBoot: a poweroff right after staging).
	if !stage.has("Unit.After", "ostree-prefinalize-seal.service") {
		t.Errorf("stage must be ordered after the seal unit: %v", stage["Unit.After"])
	}
	seal := readUnit(t, d+"ostree-prefinalize-seal.service")
	if !seal.has("Unit.After", "ostree-finalize-staged.service") || !seal.has("Service.RemainAfterExit", "yes") {
		t.Errorf("seal unit: %v", seal)
	}
	if got := seal["Service.ExecStop"]; len(got) != 1 || !strings.HasSuffix(got[0], "ostree-prefinalize finalize --pre") {
		t.Errorf("seal ExecStop %q", got)
	}
	drop := readUnit(t, d+"ostree-finalize-staged.service.d/ostree-prefinalize.conf")
	if got := drop["Service.ExecStop"]; len(got) != 1 || !strings.HasSuffix(got[0], "ostree-prefinalize finalize --post") {
		t.Errorf("drop-in ExecStop %q (must append, not reset ostree's)", got)
	}
	timer := readUnit(t, d+"ostree-prefinalize-cleanup.timer")
	if len(timer["Timer.OnBootSec"]) != 1 || len(timer["Timer.RandomizedDelaySec"]) != 1 {
		t.Errorf("cleanup timer: %v", timer)
	}
	c := readUnit(t, d+"ostree-prefinalize-cleanup.service")
	for _, kv := range []struct{ k, v string }{
		{"Service.IOSchedulingClass", "idle"},
		{"Service.Nice", "19"},
		{"Unit.ConditionPathExists", "/ostree/prefinalize/cleanup.db"},
		{"Unit.Conflicts", "shutdown.target"},
		{"Service.ExecStart", "cleanup"},
	} {
		if !c.has(kv.k, kv.v) {
			t.Errorf("cleanup unit: %s lacks %s: %v", kv.k, kv.v, c[kv.k])
		}
	}
}
