package test

// Parity of the /etc merge through the real command line with the real
// ostree 2022.7 (issue 4). For each kind of edit of the booted /etc, and for
// random mixes, made before and/or after `stage`: a booted machine is
// forked after the real `ostree admin deploy --stage`; copy A runs our
// `stage`, the edits made after staging, our `finalize --pre` and the real
// `finalize-staged`; copy B gets the same edits and the real
// `finalize-staged` alone. The new deployment's etc must be equal entry by
// entry, ostree must not have merged on A (we took over) and must have on B,
// and the booted /etc must not have been written by anything of ours.

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/treecmp"
)

const etcNewTime = "2024-01-03 03:04:05 +0000"

// etcTrees are the booted commit and the update: paths for every kind of
// edit, and defaults that the update changes under some of them.
func etcTrees() (*harness.Tree, *harness.Tree) {
	extra := map[string]harness.File{
		"usr/etc/hosts":             harness.Text("127.0.0.1 localhost\n"),
		"usr/etc/motd":              harness.Text("hello\n"),
		"usr/etc/shadow":            harness.Text("root:x\n").WithMode(0o400).Owned(0, 42),
		"usr/etc/ssh":               harness.Dir(),
		"usr/etc/ssh/sshd_config":   harness.Text("Port 22\n").WithMode(0o600),
		"usr/etc/ssh/ssh_config":    harness.Text("Host *\n"),
		"usr/etc/conf.d/a.conf":     harness.Text("a\n"),
		"usr/etc/conf.d/b.conf":     harness.Text("b\n"),
		"usr/etc/gone/x":            harness.Text("x\n"),
		"usr/etc/gone/sub/y":        harness.Text("y\n"),
		"usr/etc/gone/sub/l":        harness.Symlink("y"),
		"usr/etc/tochange":          harness.Text("file\n"),
		"usr/etc/todir":             harness.Text("file\n"),
		"usr/etc/localtime":         harness.Symlink("../usr/share/zoneinfo/UTC"),
		"usr/etc/retarget":          harness.Symlink("a"),
		"usr/etc/pam.d/login":       harness.Text("auth\n"),
		"usr/etc/modedir/f":         harness.Text("f\n"),
		"usr/etc/both":              harness.Text("old default\n"),
		"usr/etc/both-chmod":        harness.Text("old default\n"),
		"usr/etc/both-rm":           harness.Text("old default\n"),
		"usr/etc/both-gone":         harness.Text("removed in the update\n"),
		"usr/etc/both-dir/f":        harness.Text("f\n"),
		"usr/etc/deep/er/est/leaf":  harness.Text("leaf\n"),
		"usr/etc/deep/er/other/one": harness.Text("o\n"),
	}
	t1 := harness.NewTree(harness.TreeOptions{Seed: 4, Extra: extra})
	t2 := t1.Clone()
	t2.Set("usr/etc/both", harness.Text("new default\n"))
	t2.Set("usr/etc/both-chmod", harness.Text("new default\n").WithMode(0o640))
	t2.Set("usr/etc/both-rm", harness.Text("new default\n"))
	t2.Remove("usr/etc/both-gone")
	t2.Set("usr/etc/both-dir", harness.Dir().WithMode(0o700))
	t2.Set("usr/etc/both-dir/g", harness.Text("new in the update\n"))
	t2.Set("usr/etc/fromnew", harness.Text("only in the update\n"))
	t2.Remove("usr/etc/pam.d/login")
	t2.Set("usr/etc/ssh", harness.Dir().WithMode(0o700))
	t2.Remove("usr/etc/deep/er/est")
	t2.Remove("usr/etc/deep/er/est/leaf")
	return t1, t2
}

// etcKinds are the kinds of edit issue 4 lists, as shell run in the booted
// namespace (so /etc is the booted deployment's etc).
var etcKinds = []struct{ name, script string }{
	{"content", `echo more >> /etc/hosts`},
	{"chmod", `chmod 600 /etc/motd`},
	{"chown", `chown 1000:1001 /etc/ssh/ssh_config`},
	{"add-file", `echo new > /etc/newfile.conf`},
	{"add-nested", `mkdir -p /etc/newdir/sub/deeper && echo a > /etc/newdir/sub/a.conf && echo b > /etc/newdir/sub/deeper/b && chmod 750 /etc/newdir/sub && ln -s sub/a.conf /etc/newdir/link`},
	{"remove-file", `rm /etc/conf.d/b.conf`},
	{"remove-dir", `rm -r /etc/gone`},
	{"file-to-symlink", `rm /etc/tochange && ln -s hosts /etc/tochange`},
	{"retarget-symlink", `ln -sfn b /etc/retarget`},
	{"add-fifo", `mkfifo /etc/fifo && mkfifo /etc/pam.d/fifo`},
	{"dir-mode", `chmod 700 /etc/modedir`},
	{"xattr-on-modified", `echo y >> /etc/shadow && setfattr -n user.label -v secret /etc/shadow`},
	{"file-to-dir", `rm /etc/todir && mkdir /etc/todir && echo in > /etc/todir/inside`},
	{"also-in-update", `echo local > /etc/both && chmod 600 /etc/both-chmod && rm /etc/both-rm && echo mine >> /etc/both-gone && echo h > /etc/both-dir/h && chmod 750 /etc/both-dir && echo changed > /etc/deep/er/est/leaf && rm /etc/pam.d/login`},
}

// etcEnv is a booted machine with the update committed but not staged.
type etcEnv struct {
	*parityEnv
	base *harness.BootedHost
}

// newEtcEnv commits t1 (nil: etcTrees()), deploys and boots it (with the
// extra binds) and commits t2 as the update.
func newEtcEnv(t *testing.T, t1, t2 *harness.Tree, binds ...harness.Bind) *etcEnv {
	return newEtcEnvWith(t, t1, t2, func(o *harness.BootOptions) { o.Binds = append(o.Binds, binds...) })
}

// newEtcEnvWith is newEtcEnv with the boot options adjusted by opts.
func newEtcEnvWith(t *testing.T, t1, t2 *harness.Tree, opts func(*harness.BootOptions)) *etcEnv {
	e := newParityEnv(t)
	opts(&e.opts)
	if t1 == nil {
		t1, t2 = etcTrees()
	}
	e.commit("testos/main", t1)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x", "quiet")
	e.s.CommitWith("testos/main", t2, harness.CommitOptions{Timestamp: etcNewTime})
	return &etcEnv{parityEnv: e, base: e.boot(d)}
}

// etcRun says what one scenario does and expects.
type etcRun struct {
	before, after string // edits of the booted /etc, before and after staging
	stageArgs     []string
	noTakeover    bool // run `stage --no-takeover`
	// wantTakeover is whether stage must take over (and ostree then not
	// merge on our copy).
	wantTakeover bool
	// wantReason is a substring of stage's reason when not taking over.
	wantReason string
	// setup runs on the forked machine after staging, before the copy.
	setup func(t *testing.T, h *harness.BootedHost, staged harness.Deployment)
	// finalizeFails: ostree's finalize-staged fails on both copies, with
	// this in its error, and identically.
	finalizeFails string
	// afterStage runs on our copy right after our stage.
	afterStage func(t *testing.T, h *harness.BootedHost)
	// beforePre runs on our copy after the edits, before finalize --pre.
	beforePre func(t *testing.T, h *harness.BootedHost)
	// stageFails: stage exits non-zero (having fallen back), with this in
	// its error output.
	stageFails string
	// preFallback: stage took over but finalize --pre falls back, so
	// ostree merges on our copy too.
	preFallback bool
}

// etcResult is what a run leaves for scenario checks.
type etcResult struct {
	ours, theirs *harness.BootedHost
	staged       harness.Deployment
	stage        lifecycle.StageResult
	pre          lifecycle.PreResult
	fin, ofin    harness.FinalizeResult
}

// bootedManifest snapshots a booted /etc with mtimes and xattrs: nothing
// of ours may ever change it.
func bootedManifest(t *testing.T, h *harness.BootedHost) harness.Manifest {
	t.Helper()
	m, err := harness.TreeManifest(h.EtcDir(), harness.ManifestOptions{MTime: true, Xattrs: true, Hardlinks: true})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// requireSameManifest is the shared comparator's check (test/treecmp).
var requireSameManifest = treecmp.Require

// etcManifest describes a new deployment's etc for the comparison: type,
// mode, owner, content, link target, xattrs, inode flags, and with mtimes
// the mtime of regular files (ostree's copy keeps it; directories and
// symlinks are made new and get the time of the merge).
func etcManifest(t *testing.T, dir string, mtimes bool) harness.Manifest {
	t.Helper()
	m, err := harness.TreeManifest(dir, harness.ManifestOptions{Xattrs: true, FileMTime: mtimes})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m["passwd"]; !ok || len(m) < 15 {
		t.Fatalf("%s has %d entries and no passwd: wrong directory?", dir, len(m))
	}
	return m
}

func (e *etcEnv) run(t *testing.T, r etcRun) etcResult {
	t.Helper()
	ours := e.base.Copy(t)
	if r.before != "" {
		ours.MustShell(r.before)
	}
	staged := ours.Stage("testos/main", r.stageArgs...)
	if r.setup != nil {
		r.setup(t, ours, staged)
	}
	theirs := ours.Copy(t)
	res := etcResult{ours: ours, theirs: theirs, staged: staged}

	bootedAtStage := bootedManifest(t, ours)
	stagedBytes, err := os.ReadFile(ours.StagedPath())
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"ostree-prefinalize", "stage", "--json"}
	if r.noTakeover {
		args = append(args, "--no-takeover")
	}
	var out string
	if r.stageFails == "" {
		out = ours.MustRun(args...)
	} else {
		var stderr string
		out, stderr, err = ours.Run(e.ctx, args...)
		if err == nil || !strings.Contains(stderr, r.stageFails) {
			t.Fatalf("stage should fail with %q: %v\n%s\n%s", r.stageFails, err, out, stderr)
		}
	}
	if err := json.Unmarshal([]byte(out), &res.stage); err != nil {
		t.Fatalf("stage --json: %v\n%s", err, out)
	}
	requireSameManifest(t, "stage wrote the booted /etc", bootedAtStage, bootedManifest(t, ours))
	if res.stage.Etc.Takeover != r.wantTakeover {
		t.Fatalf("stage: takeover %v, want %v: %s", res.stage.Etc.Takeover, r.wantTakeover, out)
	}
	if r.wantReason != "" && !strings.Contains(res.stage.Etc.Reason, r.wantReason) {
		t.Fatalf("stage: reason %q, want it to say %q", res.stage.Etc.Reason, r.wantReason)
	}
	disk, err := os.ReadFile(ours.StagedPath())
	if err != nil {
		t.Fatal(err)
	}
	if tookOver := string(disk) != string(stagedBytes); tookOver != r.wantTakeover {
		t.Fatalf("staged state rewritten: %v, takeover expected %v", tookOver, r.wantTakeover)
	}
	st := statusOf(t, ours)
	if st.Etc.Takeover != r.wantTakeover || (r.wantReason != "" && !strings.Contains(st.Etc.Reason, r.wantReason)) {
		t.Fatalf("status after stage: %+v", st.Etc)
	}

	if r.afterStage != nil {
		r.afterStage(t, ours)
	}
	if r.after != "" {
		ours.MustShell(r.after)
		theirs.MustShell(r.after)
	}
	if r.beforePre != nil {
		r.beforePre(t, ours)
	}
	bootedAtPre := bootedManifest(t, ours)
	out = ours.MustRun("ostree-prefinalize", "finalize", "--pre", "--json")
	if err := json.Unmarshal([]byte(out), &res.pre); err != nil {
		t.Fatalf("finalize --pre --json: %v\n%s", err, out)
	}
	// Whether ostree's merge is taken over at finalization.
	takeover := r.wantTakeover && !r.preFallback
	if res.pre.Etc.Takeover != takeover {
		t.Fatalf("finalize --pre: takeover %v, want %v: %s", res.pre.Etc.Takeover, takeover, out)
	}
	switch {
	case r.preFallback && res.pre.Etc.State != "fallback":
		t.Fatalf("finalize --pre did not fall back: %s", out)
	case !r.preFallback && res.stage.Etc.State == "precomputed" && res.pre.Etc.State != "sealed":
		t.Fatalf("finalize --pre did not seal: %s", out)
	}

	var errA, errB error
	res.fin, errA = ours.FinalizeStaged(e.ctx)
	res.ofin, errB = theirs.FinalizeStaged(e.ctx)
	if r.finalizeFails == "" {
		if errA != nil {
			t.Fatalf("finalize-staged after ours: %v", errA)
		}
		if errB != nil {
			t.Fatalf("finalize-staged alone: %v", errB)
		}
	} else {
		// ostree fails, and must fail the same way on both copies.
		if errA == nil || errB == nil || !strings.Contains(res.ofin.Stderr, r.finalizeFails) || res.fin.Stderr != res.ofin.Stderr {
			t.Fatalf("finalize-staged should fail with %q on both copies:\nafter ours: %v\nalone: %v", r.finalizeFails, errA, errB)
		}
	}
	if res.fin.Merged == takeover {
		t.Fatalf("finalize-staged after ours: ostree merged %v, takeover %v:\n%s", res.fin.Merged, takeover, res.fin.Stdout)
	}
	if !res.ofin.Merged {
		t.Fatalf("finalize-staged alone did not merge:\n%s", res.ofin.Stdout)
	}
	requireSameManifest(t, "finalize --pre or finalize-staged wrote the booted /etc", bootedAtPre, bootedManifest(t, ours))

	// Regular files keep their mtime through ostree's copy, so they are
	// compared too, except when edits were made on the two copies
	// separately (after staging): those happened at different times.
	mtimes := r.after == ""
	newA := filepath.Join(ours.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial), "etc")
	newB := filepath.Join(theirs.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial), "etc")
	requireSameManifest(t, "the new /etc differs from ostree's own merge (first ours, second ostree's)",
		etcManifest(t, newA, mtimes), etcManifest(t, newB, mtimes))

	if r.wantTakeover && r.after == "" {
		// With every edit made before staging, our counts are ostree's.
		got := fmt.Sprintf("%d modified, %d removed, %d added", res.stage.Etc.Modified, res.stage.Etc.Removed, res.stage.Etc.Added)
		want := fmt.Sprintf("%d modified, %d removed, %d added", res.ofin.Modified, res.ofin.Removed, res.ofin.Added)
		if got != want {
			t.Errorf("stage counted %s, ostree %s", got, want)
		}
	}
	return res
}

func TestEtcParityEachKind(t *testing.T) { harness.ForEachOracle(t, testEtcParityEachKind) }

func testEtcParityEachKind(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	for _, k := range etcKinds {
		for _, when := range []string{"before", "after"} {
			t.Run(k.name+"/"+when, func(t *testing.T) {
				r := etcRun{wantTakeover: true}
				if when == "before" {
					r.before = k.script
				} else {
					r.after = k.script
				}
				e.withT(t).run(t, r)
			})
		}
	}
}

func (e *etcEnv) withT(t *testing.T) *etcEnv {
	c := *e
	pe := *e.parityEnv
	pe.t = t
	pe.s = e.s.WithT(t)
	c.parityEnv = &pe
	c.base = e.base.WithT(t)
	return &c
}

// Random mixes of the kinds, each edit made before or after staging (and
// some both), with a logged seed.
func TestEtcParityRandomMix(t *testing.T) { harness.ForEachOracle(t, testEtcParityRandomMix) }

func testEtcParityRandomMix(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	seed := time.Now().UnixNano()
	if s := os.Getenv("ETC_PARITY_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("ETC_PARITY_SEED: %v", err)
		}
	}
	t.Logf("seed %d (rerun with ETC_PARITY_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewSource(seed))
	// Edits that can be repeated on top of any other, for "both".
	again := []string{`echo again >> /etc/hosts`, `chmod 640 /etc/motd`, `echo later > /etc/newfile.conf`, `rm -f /etc/conf.d/a.conf`, `ln -sfn c /etc/retarget`}
	for i := 0; i < 4; i++ {
		var before, after, names []string
		for _, j := range rng.Perm(len(etcKinds))[:4+rng.Intn(7)] {
			k := etcKinds[j]
			if rng.Intn(2) == 0 {
				before = append(before, k.script)
				names = append(names, k.name+"@before")
			} else {
				after = append(after, k.script)
				names = append(names, k.name+"@after")
			}
		}
		for _, j := range rng.Perm(len(again))[:rng.Intn(3)] {
			before = append(before, again[j])
			after = append(after, again[(j+1)%len(again)])
			names = append(names, "again")
		}
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Logf("edits %v", names)
			e.withT(t).run(t, etcRun{before: strings.Join(before, "\n"), after: strings.Join(after, "\n"), wantTakeover: true})
		})
	}
}

// --no-takeover: ostree merges on top of our precomputed etc, and the
// result is still exactly its own.
func TestEtcParityNoTakeover(t *testing.T) { harness.ForEachOracle(t, testEtcParityNoTakeover) }

func testEtcParityNoTakeover(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	var before, after []string
	for i, k := range etcKinds {
		if i%2 == 0 {
			before = append(before, k.script)
		} else {
			after = append(after, k.script)
		}
	}
	r := e.run(t, etcRun{before: strings.Join(before, "\n"), after: strings.Join(after, "\n"),
		noTakeover: true, wantReason: "--no-takeover"})
	if r.stage.Etc.State != "precomputed" || r.pre.Etc.State != "sealed" {
		t.Fatalf("--no-takeover still precomputes and seals: stage %+v, pre %+v", r.stage.Etc, r.pre.Etc)
	}
	if r.fin.Modified+r.fin.Removed+r.fin.Added == 0 {
		t.Fatalf("ostree merged nothing: the scenario proves little:\n%s", r.fin.Stdout)
	}
}

// An update that ships etc/selinux/config, where the SELinux policy
// refresh cannot run (the default harness namespace has no CAP_SYS_ADMIN,
// so bwrap cannot make its sandbox, or, for an ostree that needs it kept,
// the tree has no /sys for bwrap to bind; on a host it would be a missing bwrap
// or a broken semodule): stage falls back and says why at staging time,
// and ostree's finalization fails after its merge, identically on both
// copies. A takeover would skip the refresh and "succeed". Where the
// refresh works, see etc_selinux_test.go.
func TestEtcParitySELinuxRefreshImpossible(t *testing.T) {
	harness.ForEachOracle(t, testEtcParitySELinuxRefreshImpossible)
}

func testEtcParitySELinuxRefreshImpossible(t *testing.T) {
	t1, t2 := etcTrees()
	t2.Set("usr/etc/selinux/config", harness.Text("SELINUX=disabled\nSELINUXTYPE=targeted\n"))
	e := newEtcEnv(t, t1, t2)
	fails := "Creating new namespace failed"
	if harness.OracleOf(t).KeepsSysAdmin() {
		// The namespace keeps CAP_SYS_ADMIN for this ostree: bwrap makes
		// its sandbox and fails on the tree's missing /sys instead.
		fails = "Can't find source path /sys/block"
	}
	if _, err := exec.LookPath("bwrap"); err != nil {
		fails = "bwrap"
	}
	r := e.run(t, etcRun{before: etcKinds[0].script + "\n" + etcKinds[4].script, after: etcKinds[5].script,
		wantReason: "SELinux policy refresh", stageFails: "SELinux policy refresh", finalizeFails: fails})
	if r.stage.Etc.State != "fallback" || !strings.Contains(r.stage.Etc.Reason, fails) {
		t.Fatalf("stage: %+v", r.stage.Etc)
	}
	if r.pre.Etc.State != "fallback" || !strings.Contains(r.pre.Etc.Reason, "SELinux policy refresh") {
		t.Errorf("finalize --pre does not say why ostree merges: %+v", r.pre.Etc)
	}
}

// The merge deployment is not the booted one: staging for another
// stateroot merges that stateroot's deployment's etc. We leave /etc to
// ostree entirely.
func TestEtcParityMergeNotBooted(t *testing.T) { harness.ForEachOracle(t, testEtcParityMergeNotBooted) }

func testEtcParityMergeNotBooted(t *testing.T) {
	e := newParityEnv(t)
	t1, t2 := etcTrees()
	e.commit("testos/main", t1)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	e.s.InitOS("otheros")
	other := e.s.Deploy("otheros", "testos/main", "root=LABEL=y")
	e.s.CommitWith("testos/main", t2, harness.CommitOptions{Timestamp: etcNewTime})
	// The other stateroot's etc has its own edits: those are what ostree
	// merges.
	if err := os.WriteFile(filepath.Join(other.EtcDir(), "hosts"), []byte("10.0.0.1 other\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(other.EtcDir(), "motd")); err != nil {
		t.Fatal(err)
	}
	ee := &etcEnv{parityEnv: e, base: e.boot(d)}
	var staged harness.Deployment
	var stagedEtc harness.Manifest
	snap := func(t *testing.T) harness.Manifest {
		m, err := harness.TreeManifest(staged.EtcDir(), harness.ManifestOptions{MTime: true, Xattrs: true})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	r := ee.run(t, etcRun{before: `echo booted-only >> /etc/hosts`, after: `echo new > /etc/newfile.conf`,
		stageArgs:  []string{"--os=otheros"},
		wantReason: "not the booted one",
		setup: func(t *testing.T, h *harness.BootedHost, s harness.Deployment) {
			// Snapshot the staged etc now: our stage must not write it.
			staged = s
			stagedEtc = snap(t)
		},
		afterStage: func(t *testing.T, h *harness.BootedHost) {
			requireSameManifest(t, "stage wrote the staged etc although it left /etc to ostree", stagedEtc, snap(t))
		}})
	if r.stage.Etc.State != "none" {
		t.Fatalf("stage: %+v", r.stage.Etc)
	}
	if r.staged.OS != "otheros" || staged.OS != "otheros" {
		t.Fatalf("staged %+v, want a deployment of otheros", r.staged)
	}
	if r.ofin.Modified+r.ofin.Removed == 0 {
		t.Fatalf("ostree merged nothing from the other stateroot:\n%s", r.ofin.Stdout)
	}
}
