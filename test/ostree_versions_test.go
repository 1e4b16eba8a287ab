package test

// Parity tests for the rows of the table of ostree-version-dependent
// choices (ostree/features.go): each runs against every oracle and expects
// what that oracle's version chooses, so that the wrong choice fails.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// oracleChoices are the choices of the ostree the booted host runs.
func oracleChoices(t *testing.T, h *harness.BootedHost) ostree.Choices {
	t.Helper()
	v, err := ostree.ParseVersion([]byte(h.MustShell("ostree --version")))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("oracle: ostree %s", v.Raw)
	return ostree.ChoicesFor(v)
}

// A fifo inside an added directory and a device inside a directory that
// replaced a file, made before or after staging, through the whole
// lifecycle (stage, seal, finalize-staged): from 2024.2 ostree skips them
// and our takeover must give its etc; 2022.7 fails the finalization, and
// we fall back (at stage, or at the seal for edits made after staging) so
// ostree fails the same way.
func TestEtcParitySpecialInCopiedDir(t *testing.T) {
	harness.ForEachOracle(t, testEtcParitySpecialInCopiedDir)
}

func testEtcParitySpecialInCopiedDir(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	skip := oracleChoices(t, e.base).EtcMergeSkipsSpecialInDirs
	const script = `mkdir -p /etc/fdir/sub && echo f > /etc/fdir/f && mkfifo /etc/fdir/sub/p && rm /etc/todir && mkdir /etc/todir && mknod /etc/todir/null c 1 3 && echo in > /etc/todir/inside`
	const ostreeFails = "Cannot copy non-regular/non-symlink file"
	t.Run("before", func(t *testing.T) {
		r := etcRun{before: script, wantTakeover: true}
		if !skip {
			r = etcRun{before: script, stageFails: "cannot copy non-regular/non-symlink file", finalizeFails: ostreeFails}
		}
		res := e.withT(t).run(t, r)
		if skip && res.stage.Etc.State != "precomputed" {
			t.Fatalf("stage: %+v", res.stage.Etc)
		}
	})
	t.Run("after", func(t *testing.T) {
		r := etcRun{after: script, wantTakeover: true}
		if !skip {
			r.preFallback, r.finalizeFails = true, ostreeFails
		}
		e.withT(t).run(t, r)
	})
}

// A host booted with a transient /etc (prepare-root.conf etc.transient;
// ostree-prepare-root records "transient-etc" in /run/ostree-booted): its
// /etc edits live in an overlay on /run and never reach the etc ostree
// merges, so there is nothing for us to precompute or take over. Stage
// steps aside (staged state and staged etc untouched), status says why, and
// ostree's finalization is its own. (The harness's /etc is the deployment's
// etc, not an overlay, so ostree does merge the edit here; the point is
// that we leave it to ostree.)
func TestTransientEtcStepsAside(t *testing.T) { harness.ForEachOracle(t, testTransientEtcStepsAside) }

func testTransientEtcStepsAside(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	meta, err := ostree.EncodeVardict([]ostree.VariantEntry{{Key: "transient-etc", Type: "s", Value: ostree.EncodeString("/run/ostree/transient-etc.Ab12Cd")}})
	if err != nil {
		t.Fatal(err)
	}
	var stagedEtc harness.Manifest
	var stagedDir string
	snap := func(t *testing.T) harness.Manifest {
		m, err := harness.TreeManifest(stagedDir, harness.ManifestOptions{MTime: true, Xattrs: true})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	r := e.run(t, etcRun{before: `echo edited >> /etc/hosts`, after: `echo new > /etc/newfile.conf`,
		wantReason: "/etc is transient",
		setup: func(t *testing.T, h *harness.BootedHost, s harness.Deployment) {
			if err := os.WriteFile(filepath.Join(h.RunDir, "ostree-booted"), meta, 0o644); err != nil {
				t.Fatal(err)
			}
			stagedDir = s.EtcDir()
			stagedEtc = snap(t)
		},
		afterStage: func(t *testing.T, h *harness.BootedHost) {
			requireSameManifest(t, "stage wrote the staged etc of a host with a transient /etc", stagedEtc, snap(t))
		}})
	if r.stage.Etc.State != "none" {
		t.Fatalf("stage: %+v", r.stage.Etc)
	}
}

// bootc's composefs-native backend stages through its own
// /run/composefs/staged-deployment and merges /etc in its own finalize
// unit: stage steps aside entirely (not even the plan), status says why.
func TestBootcComposefsStepsAside(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	r := e.run(t, etcRun{before: `echo edited >> /etc/hosts`,
		wantReason: "bootc's composefs backend",
		setup: func(t *testing.T, h *harness.BootedHost, s harness.Deployment) {
			if err := os.MkdirAll(filepath.Join(h.RunDir, "composefs"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(h.RunDir, "composefs", "staged-deployment"), []byte("0123abcd"), 0o644); err != nil {
				t.Fatal(err)
			}
		}})
	if r.stage.Etc.State != "none" || r.stage.Prune.State != "none" || r.stage.Staged != nil {
		t.Fatalf("stage did not step aside: %+v", r.stage)
	}
	st := statusOf(t, r.ours)
	if !strings.Contains(st.Prune.Reason, "bootc's composefs backend") {
		t.Fatalf("status: %+v", st.Prune)
	}
}

// status --json reports the installed ostree's version and the choices
// made from it (ostree.choices), here those of each oracle.
func TestStatusReportsOstreeChoices(t *testing.T) {
	harness.ForEachOracle(t, testStatusReportsOstreeChoices)
}

func testStatusReportsOstreeChoices(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	want := oracleChoices(t, e.base)
	st := statusOf(t, e.base)
	if st.Ostree == nil || st.Ostree.Error != "" || st.Ostree.Version == "" || st.Ostree.Choices != want {
		t.Fatalf("status ostree: %+v, want choices %+v", st.Ostree, want)
	}
}

// sysrootLayout lists what finalization and deployment removal manage
// outside the repository: the stateroot's deploy and backing directories
// (ostree 2024.1 creates backing/CSUM.SERIAL at finalization and removes
// it with the deployment), the boot directories and loader entries.
func sysrootLayout(t *testing.T, s *harness.Sysroot) []string {
	t.Helper()
	var out []string
	for _, d := range []string{"ostree/deploy/testos/deploy", "ostree/deploy/testos/backing", "boot/ostree", "boot/loader/entries"} {
		ents, err := os.ReadDir(filepath.Join(s.Path, d))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !strings.HasSuffix(e.Name(), ".origin") {
				out = append(out, d+"/"+e.Name())
			}
		}
	}
	return out
}

func requireSameLayout(t *testing.T, what string, a, b []string) {
	t.Helper()
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatalf("%s: sysroot layouts differ:\nours:\n  %s\nostree alone:\n  %s", what, strings.Join(a, "\n  "), strings.Join(b, "\n  "))
	}
}

// The lifecycle with a soft reboot (ostree 2025.3 prepare-soft-reboot:
// the next boot keeps /run, so our runtime store from before it is still
// there), and the sysroot layout beside the objects: on A
// ostree-prefinalize (stage, seal, finalize-staged, post, soft reboot,
// cleanup), on B ostree alone. Status after the soft reboot must call the
// old runtime state stale, cleanup must run as after a reboot, and the
// deployment and backing directories (2024.1) must be ostree's own at
// every step.
func TestLifecycleSoftRebootLayout(t *testing.T) {
	harness.ForEachOracle(t, testLifecycleSoftRebootLayout)
}

func testLifecycleSoftRebootLayout(t *testing.T) {
	e := newParityEnv(t)
	ctx := context.Background()
	tr := harness.NewTree(harness.TreeOptions{Seed: 5})
	e.commit("testos/main", tr)
	e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	tr2, _ := tr.Churn(0.2, 6)
	e.commit("testos/main", tr2)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	b := e.boot(d)
	choices := oracleChoices(t, b)
	tr3, _ := tr2.Churn(0.2, 7)
	e.commit("testos/main", tr3)
	b.MustShell(`echo changed >> /etc/hostname && echo new > /etc/added.conf`)
	staged := b.Stage("testos/main")
	ostreeOnly := b.Copy(t)
	b.MustRun("ostree-prefinalize", "stage")
	b.MustRun("ostree-prefinalize", "finalize", "--pre")
	if res, err := b.FinalizeStaged(ctx); err != nil || res.Merged {
		t.Fatalf("finalize-staged after ours: merged=%v err=%v", res.Merged, err)
	}
	b.MustRun("ostree-prefinalize", "finalize", "--post")
	if res, err := ostreeOnly.FinalizeStaged(ctx); err != nil || !res.Merged {
		t.Fatalf("finalize-staged alone: merged=%v err=%v", res.Merged, err)
	}
	requireSameLayout(t, "after finalization", sysrootLayout(t, e.s), sysrootLayout(t, ostreeOnly.Sysroot))
	backing := filepath.Join(e.s.Path, "ostree/deploy/testos/backing", staged.Name())
	if _, err := os.Stat(backing); (err == nil) != choices.DeploymentBacking {
		t.Fatalf("backing directory of the new deployment: %v, this ostree creates one: %v", err, choices.DeploymentBacking)
	}

	// The soft reboot: the same run directory, booted into the new deployment.
	soft := e.opts
	soft.RunDir = b.RunDir
	nextA := e.s.NextBoot(t, soft)
	nextB := ostreeOnly.Sysroot.NextBoot(t, e.opts)
	if nextA.Deployment.Checksum != staged.Checksum {
		t.Fatalf("soft reboot booted %s, want the finalized %s", nextA.Deployment.Name(), staged.Name())
	}
	st := statusOf(t, nextA)
	if st.Staged != nil || st.Etc.State != "none" || !strings.Contains(st.Etc.Reason, "stale") || !st.Cleanup.Pending {
		t.Fatalf("status after the soft reboot: %+v", st)
	}
	// The path unit would not fire (nothing staged); a stage run anyway
	// finds nothing to do and forgets the stale state.
	nextA.MustRun("ostree-prefinalize", "stage")
	if st := statusOf(t, nextA); st.Etc.State != "none" || strings.Contains(st.Etc.Reason, "stale") {
		t.Fatalf("status after stage on the soft-rebooted host: %+v", st.Etc)
	}

	out := nextA.MustRun("ostree-prefinalize", "cleanup", "--json", "--foreground")
	var cr lifecycle.CleanupResult
	if err := json.Unmarshal([]byte(out), &cr); err != nil || cr.Objects == 0 {
		t.Fatalf("cleanup after the soft reboot: %v\n%s", err, out)
	}
	requireSameLayout(t, "our cleanup touches no deployment", sysrootLayout(t, e.s), sysrootLayout(t, ostreeOnly.Sysroot))
	nextA.MustRun("ostree", "fsck")
	// ostree's own cleanup after ours (what its next operation does)
	// finds the same layout as ostree alone.
	nextA.MustRun("ostree", "admin", "cleanup")
	nextB.MustRun("ostree", "admin", "cleanup")
	requireSameLayout(t, "after ostree admin cleanup", sysrootLayout(t, e.s), sysrootLayout(t, ostreeOnly.Sysroot))
	if a, b := parityObjects(t, e.s.Repo), parityObjects(t, ostreeOnly.Sysroot.Repo); len(setMinus(a, b))+len(setMinus(b, a)) > 0 {
		t.Fatalf("objects differ: extra %v, missing %v", setMinus(a, b), setMinus(b, a))
	}
}

// separateBoot puts the sysroot's boot directory on a filesystem of its
// own of the given size (a tmpfs: another device than the repository's,
// with a hard size limit, which is what auto_early_prune_old_deployments
// checks), keeping its contents.
func separateBoot(t *testing.T, sysroot, size string) {
	t.Helper()
	boot := filepath.Join(sysroot, "boot")
	save := t.TempDir()
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	run("cp", "-a", boot+"/.", save+"/")
	ents, err := os.ReadDir(boot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(boot, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	run("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", boot)
	t.Cleanup(func() { exec.Command("umount", "-l", boot).Run() })
	run("cp", "-a", save+"/.", boot+"/")
}

// Automatic early prune (ostree 2023.3 opt-in, 2023.7 by default): with a
// separate /boot too small for the new kernel beside the old ones,
// finalization first writes the deployments whose boot directory survives
// (dropping the rollback's), then the new list. The final list is the one
// we predict (auto_early_prune_old_deployments only ever writes a subset
// of the old deployments before it), so the plan persisted by --post holds
// and the next-boot cleanup deletes what ostree alone leaves unreachable.
// ostree 2022.7 has no early prune: its finalization fails for lack of
// space, with and without us.
func TestEarlyPruneSmallBoot(t *testing.T) { harness.ForEachOracle(t, testEarlyPruneSmallBoot) }

func testEarlyPruneSmallBoot(t *testing.T) {
	const mib = 1 << 20
	kernel := func(n int) string {
		line := fmt.Sprintf("harness kernel %d\n", n)
		return strings.Repeat(line, 2*mib/len(line))
	}
	// Two 2 MiB kernels on /boot and 1.5 MiB free: the third needs 2 MiB
	// plus ostree's 1 MiB margin, which only fits once the rollback's
	// kernel is gone.
	const bootSize = "5632k"
	e := newParityEnv(t)
	ctx := context.Background()
	for i := 1; i <= 2; i++ {
		e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: int64(10 + i), Kernel: kernel(i)}))
		e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	}
	d := e.s.Deployments()[0]
	separateBoot(t, e.s.Path, bootSize)
	b := e.boot(d)
	choices := oracleChoices(t, b)
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 13, Kernel: kernel(3)}))
	b.MustShell(`echo changed >> /etc/hostname`)
	staged := b.Stage("testos/main")
	ostreeOnly := b.Copy(t)
	separateBoot(t, ostreeOnly.Sysroot.Path, bootSize)
	c := b.Copy(t)
	separateBoot(t, c.Sysroot.Path, bootSize)
	o := e.opts
	o.RunDir = c.RunDir
	o.Env = append(append([]string(nil), o.Env...), "OSTREE_SYSROOT_OPTS=skip-sync,no-early-prune")
	noEarly := c.Sysroot.Boot(t, d, o)

	b.MustRun("ostree-prefinalize", "stage")
	b.MustRun("ostree-prefinalize", "finalize", "--pre")
	resA, errA := b.FinalizeStaged(ctx)
	resB, errB := ostreeOnly.FinalizeStaged(ctx)
	if choices.AutoEarlyPrune != ostree.EarlyPruneAlways {
		if errA == nil || errB == nil || !strings.Contains(resB.Stderr, "No space left on device") || resA.Stderr != resB.Stderr {
			t.Fatalf("ostree %s has no early prune: finalization should fail for lack of space on /boot, with us (%v) and alone (%v)", choices.Version, errA, errB)
		}
		return
	}
	if errA != nil || errB != nil {
		t.Fatalf("finalize-staged: with us %v\n%s\nalone %v\n%s", errA, resA.Stderr, errB, resB.Stderr)
	}
	// The early prune is what made it fit: the same finalization with it
	// turned off (OSTREE_SYSROOT_OPTS=no-early-prune) fails.
	if res, err := noEarly.FinalizeStaged(ctx); err == nil || !strings.Contains(res.Stderr, "No space left on device") {
		t.Fatalf("finalize-staged with no-early-prune should fail for lack of space on /boot: %v\n%s", err, res.Stderr)
	}
	out := b.MustRun("ostree-prefinalize", "finalize", "--post")
	if !strings.Contains(out, "Plan persisted") {
		t.Fatalf("finalize --post after an early prune: %s", out)
	}
	requireSameLayout(t, "after finalization with an early prune", sysrootLayout(t, e.s), sysrootLayout(t, ostreeOnly.Sysroot))
	if ds := e.s.Deployments(); len(ds) != 2 || ds[0].Checksum != staged.Checksum || ds[1].Checksum != d.Checksum {
		t.Fatalf("deployments after finalization: %+v", ds)
	}
	nextA := e.s.NextBoot(t, e.opts)
	nextB := ostreeOnly.Sysroot.NextBoot(t, e.opts)
	nextA.MustRun("ostree-prefinalize", "cleanup", "--foreground")
	nextB.MustRun("ostree", "admin", "cleanup")
	if a, b := parityObjects(t, e.s.Repo), parityObjects(t, ostreeOnly.Sysroot.Repo); len(setMinus(a, b))+len(setMinus(b, a)) > 0 {
		t.Fatalf("objects differ: extra %v, missing %v", setMinus(a, b), setMinus(b, a))
	}
	nextA.MustRun("ostree", "fsck")
}

// The staged deployment's directory disappears after staging (removed by
// hand or by a broken tool). ostree 2025.3 and later fail to load the
// sysroot at all (_ostree_sysroot_new_deployment_object stats it); older
// ones fail at finalization. Either way finalization fails: with us it
// must fail exactly as without us, our stage must not take over (the staged
// state stays ostree's bytes) and status must still answer.
func TestMissingStagedDeploymentDir(t *testing.T) {
	harness.ForEachOracle(t, testMissingStagedDeploymentDir)
}

func testMissingStagedDeploymentDir(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	ctx := context.Background()
	ours := e.base.Copy(t)
	ours.MustShell(`echo edited >> /etc/hosts`)
	staged := ours.Stage("testos/main")
	dir := ours.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial)
	if out, err := exec.Command("chattr", "-i", dir).CombinedOutput(); err != nil {
		t.Fatalf("chattr: %v\n%s", err, out)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	theirs := ours.Copy(t)
	before, err := os.ReadFile(ours.StagedPath())
	if err != nil {
		t.Fatal(err)
	}
	choices := oracleChoices(t, ours)
	if _, stderr, err := ours.Run(ctx, "ostree-prefinalize", "stage", "--json"); err == nil || !strings.Contains(stderr, "is missing: ostree's finalization will fail") {
		t.Fatalf("stage should fail saying why: %v\n%s", err, stderr)
	}
	if after, _ := os.ReadFile(ours.StagedPath()); string(after) != string(before) {
		t.Fatalf("stage rewrote the staged state of a deployment whose directory is missing")
	}
	st := statusOf(t, ours)
	if st.Etc.Takeover {
		t.Fatalf("status: %+v", st.Etc)
	}
	if _, stderr, err := ours.Run(ctx, "ostree-prefinalize", "finalize", "--pre"); err != nil {
		t.Fatalf("finalize --pre: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(ours.RunDir, "ostree/staged-deployment-locked")); err == nil {
		t.Fatal("finalization locked: ostree alone would not lock it")
	}
	resA, errA := ours.FinalizeStaged(ctx)
	resB, errB := theirs.FinalizeStaged(ctx)
	if errA == nil || errB == nil || resA.Stderr != resB.Stderr {
		t.Fatalf("finalize-staged must fail alike: with us %v\n%s\nalone %v\n%s", errA, resA.Stderr, errB, resB.Stderr)
	}
	if atLoad := strings.Contains(resB.Stderr, "loading sysroot"); atLoad != choices.MissingDeploymentDirFailsLoad {
		t.Fatalf("ostree %s fails at sysroot load: %v, the table says %v:\n%s", choices.Version, atLoad, choices.MissingDeploymentDirFailsLoad, resB.Stderr)
	}
}

// composefs: an ostree built with it (2026.4 here, Debian forky) writes
// .ostree.cfs into every deployment it checks out; the deployment
// directory still holds the files, and ostree's merge reads the booted
// deployment's usr/etc and etc there, as we do. The takeover must give
// ostree's own etc on such deployments too, with prepare-root.conf
// enabling composefs (maybe: an ostree built without it, 2022.7 and
// 2025.2 here, ignores it then, and writes no .ostree.cfs).
func TestEtcParityComposefs(t *testing.T) { harness.ForEachOracle(t, testEtcParityComposefs) }

func testEtcParityComposefs(t *testing.T) {
	t1, t2 := etcTrees()
	for _, tr := range []*harness.Tree{t1, t2} {
		tr.Set("usr/lib/ostree/prepare-root.conf", harness.Text("[composefs]\nenabled = maybe\n"))
	}
	e := newEtcEnv(t, t1, t2)
	hasCfs := oracleChoices(t, e.base).ComposefsAtDeploy
	cfs := func(d string) bool {
		_, err := os.Stat(filepath.Join(d, ".ostree.cfs"))
		return err == nil
	}
	if cfs(e.base.Deployment.Dir) != hasCfs {
		t.Fatalf("booted deployment: .ostree.cfs %v, this ostree writes one: %v", cfs(e.base.Deployment.Dir), hasCfs)
	}
	r := e.run(t, etcRun{before: `echo edited >> /etc/hosts && mkdir /etc/newdir && echo x > /etc/newdir/f`, after: `echo later > /etc/later.conf`, wantTakeover: true})
	if d := r.ours.Sysroot.DeploymentDir(r.staged.OS, r.staged.Checksum, r.staged.Serial); cfs(d) != hasCfs {
		t.Fatalf("staged deployment: .ostree.cfs %v, this ostree writes one: %v", cfs(d), hasCfs)
	}
}
