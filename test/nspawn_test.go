package test

// The units under a real systemd: a Debian root (test/roots/build.sh, with
// the root's own ostree: bookworm's 2022.7 and trixie's 2025.x) committed
// into a sysroot with our `make install` tree and booted under
// systemd-nspawn as an ostree deployment. Staging, the watcher, the seal at
// poweroff, ostree's own ostree-finalize-staged.service, the drop-in's
// finalize --post and the next boot's cleanup timer all run under the
// deployment's PID 1. The oracles are a boot of the same root without our
// units (the new /etc) and `ostree admin cleanup` on a copy (the objects).

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

const (
	unitWatch = "ostree-prefinalize-watch.service"
	unitSeal  = "ostree-prefinalize-seal.service"
	unitStage = "ostree-prefinalize-stage.service"
	unitClean = "ostree-prefinalize-cleanup.service"
	unitOstFS = "ostree-finalize-staged.service"
	bootLimit = 3 * time.Minute
)

// The versions: /usr/etc defaults of v0, v1 and the update v2, which also
// has a new kernel (so its finalization writes /boot: a new bootconfig).
var bootVersions = []map[string]string{
	{"usr/etc/opf/up.conf": "v0\n"},
	{"usr/etc/opf/up.conf": "v1\n", "usr/etc/opf/keep.conf": "default 1\n", "usr/etc/opf/mode.conf": "m1\n"},
	{"usr/etc/opf/up.conf": "v2\n", "usr/etc/opf/keep.conf": "default 2\n", "usr/etc/opf/mode.conf": "m2\n", "usr/etc/opf/new.conf": "new in v2\n",
		"usr/lib/modules/6.1.0-test/vmlinuz": "kernel v2\n"},
}

// Admin edits of the booted /etc: before staging, and while the watcher
// runs (or, for the ostree-only run, at the same point).
const (
	bootEditsBefore = `set -e
echo local > /etc/opf/keep.conf
echo added > /etc/opf/added.conf
rm -f /etc/issue.net
`
	bootEditsAfter = `set -e
echo later >> /etc/opf/added.conf
chmod 0600 /etc/opf/mode.conf
mkdir -p /etc/opf/dir/sub && echo x > /etc/opf/dir/sub/f && ln -s ../added.conf /etc/opf/dir/link
echo changed >> /etc/hostname
rm -f /etc/opf/up.conf
`
)

// bootSuites are the oracles: Debian roots and their ostree;
// OSTREE_PREFINALIZE_ORACLE (make test ORACLE=...) narrows them to a
// comma-separated list ("all" or unset: both).
func bootSuites() []string {
	o := os.Getenv("OSTREE_PREFINALIZE_ORACLE")
	if o == "" || o == "all" {
		return []string{"bookworm", "trixie"}
	}
	return strings.Split(o, ",")
}

// ourInstall is `make install DESTDIR=` (static binary: it runs against
// the root's libc) plus the test's cleanup timer override.
func ourInstall(t *testing.T) string {
	t.Helper()
	dest := t.TempDir()
	root, _ := filepath.Abs("..")
	cmd := exec.Command("make", "-C", root, "--no-print-directory", "install", "DESTDIR="+dest,
		"BIN="+filepath.Join(t.TempDir(), "ostree-prefinalize"))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install DESTDIR: %v\n%s", err, out)
	}
	// The test's override: the cleanup 2 s after boot instead of 10-30 min.
	dropin := filepath.Join(dest, "usr/lib/systemd/system/ostree-prefinalize-cleanup.timer.d")
	if err := os.MkdirAll(dropin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dropin, "test.conf"),
		[]byte("[Timer]\nOnBootSec=\nOnBootSec=2s\nRandomizedDelaySec=0\nAccuracySec=1s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dest
}

// bootEnv is one oracle: the image with our units and the one without.
type bootEnv struct {
	suite      string
	ours, base *harness.BootImage
	// baseEtc is the new deployment's /etc after the ostree-only run.
	baseEtc harness.Manifest
}

func TestNspawnBoot(t *testing.T) {
	for _, s := range bootSuites() {
		harness.RequireNspawn(t, s)
	}
	inst := ourInstall(t)
	for _, suite := range bootSuites() {
		t.Run(suite, func(t *testing.T) {
			root := harness.RequireNspawn(t, suite)
			e := &bootEnv{suite: suite}
			e.base = harness.NewBootImage(t, suite, root, harness.BootImageOptions{Versions: bootVersions})
			e.ours = harness.NewBootImage(t, suite, root, harness.BootImageOptions{Versions: bootVersions,
				Layers: []string{inst},
				Enable: map[string][]string{
					"multi-user.target": {"ostree-prefinalize.path"},
					"timers.target":     {"ostree-prefinalize-cleanup.timer"},
				}})
			if !t.Run("ostree-only", e.ostreeOnly) {
				t.FailNow()
			}
			t.Run("lifecycle", e.lifecycle)
			t.Run("watcher-killed", e.watcherKilled)
			t.Run("watcher-hung", e.watcherHung)
			t.Run("finalize-fails", e.finalizeFails)
			t.Run("stage-then-poweroff", e.stageThenPoweroff)
		})
	}
}

// bootRun is one boot of a copy of an image up to the staged update with
// every edit made.
type bootRun struct {
	s      *harness.Sysroot
	m      *harness.Machine
	update string
}

// stage boots a copy of img, edits /etc, stages the update; with ours, it
// waits for stage and the watcher (Type=notify: active only once it is
// watching) before the second edits.
func (e *bootEnv) stage(t *testing.T, img *harness.BootImage, ours bool) *bootRun {
	t.Helper()
	r := &bootRun{s: img.Sysroot.Copy(t)}
	r.m = r.s.NspawnBoot(t, r.s.Deployments()[0])
	r.m.MustShell(bootEditsBefore)
	r.update = img.CommitUpdate(r.s)
	r.m.MustRun("ostree", "admin", "deploy", "--stage", "--os="+harness.NspawnOS, img.Branch)
	if ours {
		r.m.WaitUnit(unitWatch, "active/running", time.Minute)
		if st := r.m.UnitState(unitStage); st != "inactive/dead/success" {
			t.Fatalf("%s: %s", unitStage, st)
		}
		if st := r.m.UnitState(unitSeal); !strings.HasPrefix(st, "active/exited") {
			t.Fatalf("%s: %s", unitSeal, st)
		}
		// The seal unit is active before stage starts, so at shutdown it
		// stops (seals) after stage stopped, whatever stage had done:
		// a poweroff right after staging must not leave a takeover
		// unsealed (stage-then-poweroff hits that window only by chance).
		sealUp := r.m.MustRun("systemctl", "show", "--value", "--property=ActiveEnterTimestampMonotonic", unitSeal)
		stageUp := r.m.MustRun("systemctl", "show", "--value", "--property=InactiveExitTimestampMonotonic", unitStage)
		if a, b := atoiT(t, sealUp), atoiT(t, stageUp); a == 0 || a > b {
			t.Fatalf("%s active at %d µs, after %s started at %d µs", unitSeal, a, unitStage, b)
		}
	}
	r.m.MustShell(bootEditsAfter)
	return r
}

// finalized checks that the update is the default deployment now.
func (r *bootRun) finalized(t *testing.T) harness.Deployment {
	t.Helper()
	ds := r.s.Deployments()
	if len(ds) != 2 || ds[0].Checksum != r.update {
		t.Fatalf("after poweroff: want the update %s first of 2 deployments:\n%s", r.update, r.s.Status())
	}
	return ds[0]
}

func atoiT(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

func bootEtc(t *testing.T, d harness.Deployment) harness.Manifest {
	t.Helper()
	return etcManifest(t, d.EtcDir(), false)
}

// ostreeOnly: the same steps without our units; ostree merges at poweroff.
func (e *bootEnv) ostreeOnly(t *testing.T) {
	r := e.stage(t, e.base, false)
	r.m.Poweroff(bootLimit)
	d := r.finalized(t)
	e.baseEtc = bootEtc(t, d)
	if _, err := os.Stat(filepath.Join(r.s.Path, "ostree/prefinalize")); err == nil {
		t.Fatalf("the image without our units has ostree/prefinalize")
	}
	j := r.s.Journal(t)
	if i := journalFind(j, 0, func(x harness.JournalEntry) bool {
		return x.Unit == unitOstFS && strings.Contains(x.Message, "Copying /etc changes")
	}); i < 0 {
		t.Fatalf("ostree's finalization did not merge /etc:\n%s", journalText(j))
	}
}

// lifecycle: stage, watcher, edits, poweroff (seal, ostree's
// finalization, finalize --post, in that order), the /etc of the
// ostree-only run, next boot's cleanup = `ostree admin cleanup`.
func (e *bootEnv) lifecycle(t *testing.T) {
	r := e.stage(t, e.ours, true)
	r.m.Poweroff(bootLimit)
	// The watcher's ExecStopPost seals; journald may not attribute the
	// line to the unit (the process is gone when it looks), so any seal.
	d, j := e.sealedAndFinalized(t, r, "")

	// The oracle: ostree admin cleanup (the root's ostree) on a copy.
	oracle := r.s.Copy(t)
	ostreeCleanup(t, oracle, d)
	want := parityObjects(t, oracle.Repo)
	before := parityObjects(t, r.s.Repo)

	m := r.s.NspawnBoot(t, d)
	plan := filepath.Join(r.s.Path, "ostree/prefinalize/cleanup.db")
	m.Poll("the cleanup timer to run the cleanup", 2*time.Minute, func() bool {
		_, err := os.Stat(plan)
		return os.IsNotExist(err) && m.UnitState(unitClean) == "inactive/dead/success"
	})
	m.Poweroff(bootLimit)
	after := parityObjects(t, r.s.Repo)
	if len(before) == len(want) {
		t.Fatalf("ostree admin cleanup deleted nothing: the scenario checks nothing")
	}
	if d1, d2 := setMinus(after, want), setMinus(want, after); len(d1)+len(d2) > 0 {
		t.Fatalf("objects after the next boot's cleanup differ from ostree admin cleanup's: extra %v, missing %v\n%s", d1, d2, journalText(j))
	}
}

// sealedAndFinalized checks a poweroff with our units: the journal shows
// sealUnit's seal ("": any) before ostree's finalization and finalize
// --post after it, ostree did not merge, the new /etc is the ostree-only
// run's, and the plan is persisted. Lines are placed by PID 1's
// Stopping/Stopped messages of the unit, not by their own unit field:
// journald leaves that out when a short-lived process is gone before it
// looks.
func (e *bootEnv) sealedAndFinalized(t *testing.T, r *bootRun, sealUnit string) (harness.Deployment, []harness.JournalEntry) {
	t.Helper()
	d := r.finalized(t)
	j := r.s.Journal(t)
	t.Logf("journal (ostree units and ours):\n%s", journalText(j))
	ours := func(msg string) func(harness.JournalEntry) bool {
		return func(x harness.JournalEntry) bool {
			return x.Ident == "ostree-prefinalize" && strings.Contains(x.Message, msg)
		}
	}
	fs, fe := stopSpan(j, unitOstFS)
	fin := journalFind(j[:max(fe, 0)], max(fs, 0), func(x harness.JournalEntry) bool { return x.Ident == "ostree" })
	post := journalFind(j[:max(fe, 0)], max(fs, 0), ours("Plan persisted"))
	seal := journalFind(j[:max(fin, 0)], 0, ours("sealed the /etc merge"))
	if sealUnit != "" {
		ss, se := stopSpan(j, sealUnit)
		seal = journalFind(j[:max(se, 0)], max(ss, 0), ours("sealed the /etc merge"))
	}
	if seal < 0 || fin < 0 || post < 0 || !(seal < fin && fin < post) {
		t.Fatalf("want the seal (%q) < ostree's finalization < finalize --post in the journal, got %d %d %d:\n%s", sealUnit, seal, fin, post, journalText(j))
	}
	if i := journalFind(j, 0, func(x harness.JournalEntry) bool { return strings.Contains(x.Message, "Copying /etc changes") }); i >= 0 {
		t.Errorf("ostree merged /etc although we took over: %s", j[i])
	}
	if diff := bootEtc(t, d).Diff(e.baseEtc); diff != nil {
		t.Fatalf("new /etc differs from the ostree-only run:\n%s\n%s", strings.Join(diff, "\n"), journalText(j))
	}
	if _, err := os.Stat(filepath.Join(r.s.Path, "ostree/prefinalize/cleanup.db")); err != nil {
		t.Fatalf("no plan persisted: %v", err)
	}
	return d, j
}

// stopSpan is where unit stopped in the journal: from PID 1's "Stopping"
// to its "Stopped" (or failure); -1, -1 when it did not.
func stopSpan(j []harness.JournalEntry, unit string) (int, int) {
	pid1 := func(prefix string) func(harness.JournalEntry) bool {
		return func(x harness.JournalEntry) bool {
			return x.Ident == "systemd" && x.Unit == unit && strings.Contains(x.Message, prefix)
		}
	}
	s := journalFind(j, 0, pid1("Stopping "))
	if s < 0 {
		return -1, -1
	}
	e := journalFind(j, s, pid1("Stopped "))
	if f := journalFind(j, s, pid1("Failed with result")); f >= 0 && (e < 0 || f < e) {
		e = f
	}
	if e < 0 {
		return -1, -1
	}
	return s, e
}

// stageThenPoweroff: staging and powering off at once (as `bootc upgrade
// --apply` or `rpm-ostree upgrade --reboot` do): whatever stage managed
// before the shutdown, the new /etc is ostree's, and finalization succeeds.
func (e *bootEnv) stageThenPoweroff(t *testing.T) {
	r := &bootRun{s: e.ours.Sysroot.Copy(t)}
	r.m = r.s.NspawnBoot(t, r.s.Deployments()[0])
	r.m.MustShell(bootEditsBefore)
	r.m.MustShell(bootEditsAfter)
	r.update = e.ours.CommitUpdate(r.s)
	// Starting ostree's unit before the poweroff is what rpm-ostree and
	// bootc do (ostree ≥ 2025.2's deploy --stage does it itself; 2022.7
	// relies on its path unit, which a poweroff at once can beat).
	r.m.Run("/bin/sh", "-c", "ostree admin deploy --stage --os="+harness.NspawnOS+" "+e.ours.Branch+
		" && systemctl start "+unitOstFS+" && systemctl poweroff")
	r.m.Wait(bootLimit)
	j := r.s.Journal(t)
	t.Logf("journal (ostree units and ours):\n%s", journalText(j))
	d := r.finalized(t)
	if diff := bootEtc(t, d).Diff(e.baseEtc); diff != nil {
		t.Fatalf("new /etc differs from the ostree-only run:\n%s\n%s", strings.Join(diff, "\n"), journalText(j))
	}
	// The invariant: a takeover is always sealed before ostree finalizes
	// (else an /etc change after stage's merge would be lost). Which
	// window the poweroff hits varies; any takeover must be followed by
	// a seal.
	fs, _ := stopSpan(j, unitOstFS)
	took := journalFind(j, 0, func(x harness.JournalEntry) bool {
		return x.Ident == "ostree-prefinalize" && strings.Contains(x.Message, "took over the /etc merge")
	})
	if took >= 0 && journalFind(j[:max(fs, 0)], took, func(x harness.JournalEntry) bool {
		return x.Ident == "ostree-prefinalize" && strings.Contains(x.Message, "sealed the /etc merge")
	}) < 0 {
		t.Fatalf("stage took over the merge but nothing sealed it before ostree's finalization:\n%s", journalText(j))
	}
	t.Logf("stage took over before the shutdown: %v", took >= 0)
}

// stageOurs is stage for the image with our units.
func (e *bootEnv) stageOurs(t *testing.T) *bootRun { return e.stage(t, e.ours, true) }

// runtimeDropin adds a drop-in for unit under /run (body in printf's
// syntax) and reloads systemd.
func runtimeDropin(m *harness.Machine, unit, body string) {
	m.MustShell(`set -e
mkdir -p /run/systemd/system/` + unit + `.d
printf '` + body + `' > /run/systemd/system/` + unit + `.d/test.conf
systemctl daemon-reload`)
}

// watcherHung: the watcher hangs (stopped under ptrace, so not even the
// SIGCONT after SIGTERM resumes it): at poweroff systemd kills it after its
// TimeoutStopSec (3 s here, by a runtime drop-in, instead of 2 min) and the
// shutdown goes on: its ExecStopPost and the seal unit seal, ostree
// finalizes, --post runs, and the result is the same.
func (e *bootEnv) watcherHung(t *testing.T) {
	r := e.stageOurs(t)
	runtimeDropin(r.m, unitWatch, `[Service]\nTimeoutStopSec=3s\n`)
	r.m.Hang(unitWatch)
	r.m.Poweroff(bootLimit)
	_, j := e.sealedAndFinalized(t, r, unitSeal)
	if i := journalFind(j, 0, func(x harness.JournalEntry) bool {
		return x.Unit == unitWatch && strings.Contains(x.Message, "timed out")
	}); i < 0 {
		t.Fatalf("no stop timeout of the watcher in the journal:\n%s", journalText(j))
	}
}

// finalizeFails: ostree's finalization fails at poweroff (the sysroot's
// boot directory made immutable from outside, so the update's new
// bootloader configuration cannot be written; ostree remounts a read-only
// /boot itself): finalize --post does not run, no plan is persisted,
// nothing is deleted, and the update is not the default.
func (e *bootEnv) finalizeFails(t *testing.T) {
	r := e.stageOurs(t)
	before := parityObjects(t, r.s.Repo)
	boot := filepath.Join(r.s.Path, "boot")
	if out, err := exec.Command("chattr", "+i", boot).CombinedOutput(); err != nil {
		t.Fatalf("chattr +i %s: %v\n%s", boot, err, out)
	}
	defer exec.Command("chattr", "-i", boot).Run()
	r.m.Poweroff(bootLimit)
	exec.Command("chattr", "-i", boot).Run()
	j := r.s.Journal(t)
	t.Logf("journal (ostree units and ours):\n%s", journalText(j))
	if i := journalFind(j, 0, func(x harness.JournalEntry) bool {
		return x.Unit == unitOstFS && strings.Contains(x.Message, "Failed with result")
	}); i < 0 {
		t.Fatalf("ostree's finalization did not fail:\n%s", journalText(j))
	}
	if i := journalFind(j, 0, func(x harness.JournalEntry) bool { return strings.Contains(x.Message, "Plan persisted") }); i >= 0 {
		t.Fatalf("finalize --post ran after a failed finalization: %s", j[i])
	}
	if _, err := os.Stat(filepath.Join(r.s.Path, "ostree/prefinalize/cleanup.db")); !os.IsNotExist(err) {
		t.Fatalf("a plan was persisted after a failed finalization: %v", err)
	}
	if ds := r.s.Deployments(); len(ds) == 0 || ds[0].Checksum == r.update {
		t.Fatalf("the update became the default although finalization failed:\n%s", r.s.Status())
	}
	if after := parityObjects(t, r.s.Repo); len(setMinus(before, after)) > 0 {
		t.Fatalf("objects deleted after a failed finalization: %v", setMinus(before, after))
	}
}

// watcherKilled: the watcher dies for good (SIGKILL, no restart) before
// the second edits; at poweroff the seal unit alone seals them.
func (e *bootEnv) watcherKilled(t *testing.T) {
	r := &bootRun{s: e.ours.Sysroot.Copy(t)}
	r.m = r.s.NspawnBoot(t, r.s.Deployments()[0])
	r.m.MustShell(bootEditsBefore)
	r.update = e.ours.CommitUpdate(r.s)
	r.m.MustRun("ostree", "admin", "deploy", "--stage", "--os="+harness.NspawnOS, e.ours.Branch)
	r.m.WaitUnit(unitWatch, "active/running", time.Minute)
	// For good: no restart (a runtime drop-in), then SIGKILL.
	runtimeDropin(r.m, unitWatch, `[Service]\nRestart=no\n`)
	r.m.MustRun("systemctl", "kill", "--signal=SIGKILL", unitWatch)
	r.m.WaitUnit(unitWatch, "failed/failed/signal", time.Minute)
	r.m.MustShell(bootEditsAfter)
	r.m.Poweroff(bootLimit)
	e.sealedAndFinalized(t, r, unitSeal)
}

// ostreeCleanup runs the root's `ostree admin cleanup` on s (not booted),
// in a container of deployment d.
func ostreeCleanup(t *testing.T, s *harness.Sysroot, d harness.Deployment) {
	t.Helper()
	deploy := s.DeploymentDir(d.OS, d.Checksum, d.Serial)
	out, err := exec.Command("systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "--read-only", "--directory="+deploy,
		"--bind="+s.Path+":/sysroot", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
		"ostree", "admin", "cleanup", "--sysroot=/sysroot").CombinedOutput()
	if err != nil {
		t.Fatalf("ostree admin cleanup in %s: %v\n%s", deploy, err, out)
	}
}

func journalFind(j []harness.JournalEntry, from int, f func(harness.JournalEntry) bool) int {
	for i := from; i < len(j); i++ {
		if f(j[i]) {
			return i
		}
	}
	return -1
}

// journalText is the journal of our units, ostree's and PID 1's stopping
// messages, for failure messages.
func journalText(j []harness.JournalEntry) string {
	var b strings.Builder
	for _, e := range j {
		if strings.HasPrefix(e.Unit, "ostree") || strings.HasPrefix(e.Ident, "ostree") {
			b.WriteString(e.String())
			b.WriteByte('\n')
		}
	}
	return b.String()
}
