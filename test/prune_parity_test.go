package test

// Longer than 500 lines on purpose: one scenario a test, all on the same
// parity fixture against ostree admin cleanup.

// Parity of the mock prune with the real ostree 2022.7: for each scenario a
// sysroot is built and booted with the harness, an update is staged with
// the real `ostree admin deploy --stage`, and the booted machine is forked.
// On copy A our `plan --list` runs inside the booted namespace; on copy B
// the real `ostree admin finalize-staged`, a reboot and the real `ostree
// admin cleanup` run. The objects B lost must be exactly the listed ones.
// Then A executes our plan after the real finalization (no admin cleanup),
// and its objects must equal B's.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// parityTime makes commits reproducible.
const parityTime = "2024-01-02 03:04:05 +0000"

// parityBuild builds the command into the test's temporary directory (the
// Go build cache makes that cheap), so no stale bin/ is ever tested.
func parityBuild(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ostree-prefinalize")
	cmd := exec.Command("go", "build", "-o", out, "github.com/ostree-prefinalize/ostree-prefinalize/cmd/ostree-prefinalize")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// parityEnv is one scenario's sysroot plus the boot options that put our
// binary on PATH inside every booted namespace.
type parityEnv struct {
	t    *testing.T
	s    *harness.Sysroot
	opts harness.BootOptions
	ctx  context.Context
}

func newParityEnv(t *testing.T) *parityEnv {
	harness.RequireRoot(t)
	bin := parityBuild(t)
	return &parityEnv{t: t, s: harness.NewSysroot(t, harness.Options{}), ctx: context.Background(),
		opts: harness.BootOptions{Binds: []harness.Bind{harness.OnPath(bin)}}}
}

func (e *parityEnv) commit(branch string, tree *harness.Tree) string {
	e.t.Helper()
	return e.s.CommitWith(branch, tree, harness.CommitOptions{Timestamp: parityTime})
}

func (e *parityEnv) boot(d harness.Deployment) *harness.BootedHost {
	e.t.Helper()
	return e.s.Boot(e.t, d, e.opts)
}

// parityObjects lists the loose objects of repo as `plan --list` prints
// them ("<64-hex>.<suffix>"), every kind of file in objects/XX included.
func parityObjects(t testing.TB, repo string) map[string]bool {
	t.Helper()
	objs := map[string]bool{}
	base := filepath.Join(repo, "objects")
	dirs, err := os.ReadDir(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if !d.IsDir() || len(d.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(base, d.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if !e.IsDir() {
				objs[d.Name()+e.Name()] = true
			}
		}
	}
	return objs
}

func setMinus(a, b map[string]bool) []string {
	var out []string
	for k := range a {
		if !b[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// diffLists explains how two sorted lists differ.
func diffLists(got, want []string) string {
	g, w := map[string]bool{}, map[string]bool{}
	for _, x := range got {
		g[x] = true
	}
	for _, x := range want {
		w[x] = true
	}
	return fmt.Sprintf("only ours (%d): %v\nonly ostree's (%d): %v", len(setMinus(g, w)), setMinus(g, w), len(setMinus(w, g)), setMinus(w, g))
}

// apiPlan computes the plan of a booted host from outside its namespace
// with the package API, as `plan` does inside.
func apiPlan(t *testing.T, b *harness.BootedHost) (*ostree.Sysroot, []*ostree.Deployment, *prune.Plan) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(b.Deployment.Dir, &st); err != nil {
		t.Fatal(err)
	}
	s, err := ostree.LoadSysroot(b.Sysroot.Path, ostree.LoadOptions{RunDir: b.RunDir, BootedDevIno: &[2]uint64{uint64(st.Dev), st.Ino}})
	if err != nil {
		t.Fatal(err)
	}
	p, ds, err := prune.PlanSysroot(context.Background(), s, prune.PredictOptions{}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return s, ds, p
}

func planLines(t *testing.T, p *prune.Plan) []string {
	t.Helper()
	var sb strings.Builder
	if err := p.WriteList(&sb); err != nil {
		t.Fatal(err)
	}
	return lines(sb.String())
}

// deployedNames are "OS CSUM.SERIAL" of a status, in order.
func deployedNames(ds []harness.Deployment) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.OS+" "+d.Name())
	}
	return out
}

func predictedNames(ds []*ostree.Deployment) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.String())
	}
	return out
}

// parityResult is what checkParity leaves for scenario-specific checks.
type parityResult struct {
	a, b    *harness.BootedHost // a: ours; b: ostree's (after the next boot)
	planned []string
	plan    *prune.Plan // the API's plan on a (not executed)
	deleted []string    // what ostree deleted on b
}

// checkParity forks booted host h (staged or not), runs `plan --list`
// inside copy A and the real finalization + next-boot cleanup on copy B,
// and compares. With execute, A then runs the real finalization and our
// plan (ExecuteRepo), and its objects must equal B's.
func checkParity(t *testing.T, e *parityEnv, h *harness.BootedHost, execute bool) parityResult {
	t.Helper()
	a, b := h, h.Copy(t)
	staged := false
	if _, err := os.Stat(a.StagedPath()); err == nil {
		staged = true
	}

	out, errOut, err := a.Run(e.ctx, "ostree-prefinalize", "plan", "--list")
	if err != nil {
		t.Fatalf("plan --list: %v", err)
	}
	if errOut != "" {
		t.Errorf("plan --list wrote to stderr: %q", errOut)
	}
	planned := lines(out)
	if !slices.IsSorted(planned) {
		t.Error("plan --list is not sorted")
	}
	_, predicted, apiP := apiPlan(t, a)
	if got := planLines(t, apiP); !slices.Equal(got, planned) {
		t.Fatalf("the API's plan differs from plan --list:\n%s", diffLists(got, planned))
	}

	before := parityObjects(t, b.Sysroot.Repo)
	nb := b
	if staged {
		if _, err := b.FinalizeStaged(e.ctx); err != nil {
			t.Fatalf("real finalize-staged: %v", err)
		}
		// finalize-staged prunes nothing in 2022.7 (NO_CLEAN, then
		// prepare_cleanup without the repo prune); check rather than assume.
		if gone := setMinus(before, parityObjects(t, b.Sysroot.Repo)); len(gone) != 0 {
			t.Logf("finalize-staged itself deleted %d objects", len(gone))
		}
		nb = b.Sysroot.NextBoot(t, e.opts)
		if got, want := deployedNames(nb.Deployments()), predictedNames(predicted); !slices.Equal(got, want) {
			t.Errorf("deployments after finalization: %q\npredicted %q", got, want)
		}
	}
	nb.MustRun("ostree", "admin", "cleanup")
	afterB := parityObjects(t, b.Sysroot.Repo)
	if added := setMinus(afterB, before); len(added) != 0 {
		t.Errorf("objects appeared on B: %v", added)
	}
	deleted := setMinus(before, afterB)
	if !slices.Equal(planned, deleted) {
		t.Errorf("plan --list differs from what ostree deleted:\n%s", diffLists(planned, deleted))
	}
	if len(deleted) == 0 {
		t.Error("scenario deletes nothing: it proves little")
	}
	t.Logf("%d objects planned and deleted by ostree", len(deleted))

	if execute {
		if staged {
			if _, err := a.FinalizeStaged(e.ctx); err != nil {
				t.Fatalf("real finalize-staged on A: %v", err)
			}
		}
		res := executeOn(t, a.Sysroot, apiP)
		afterA := parityObjects(t, a.Sysroot.Repo)
		onlyA, onlyB := setMinus(afterA, afterB), setMinus(afterB, afterA)
		if staged {
			// Finalization regenerated the deployment refs, as ostree's
			// cleanup would: the live roots are the predicted ones.
			if res.RootsChanged || res.Remaining != 0 || res.KeptLive != 0 || res.Deleted != len(planned) {
				t.Errorf("execute: %+v", res)
			}
			if len(onlyA)+len(onlyB) != 0 {
				t.Errorf("objects after our execution differ from ostree's cleanup:\nonly on A (%d): %v\nonly on B (%d): %v", len(onlyA), onlyA, len(onlyB), onlyB)
			}
		} else {
			// Nothing regenerates the deployment refs on A (only ostree's
			// cleanup does): stale ones are live roots at execution, so
			// what they reach is kept, and only that.
			if res.Remaining != 0 || res.Deleted+res.KeptLive != len(planned) || len(onlyB) != 0 || len(onlyA) != res.KeptLive {
				t.Errorf("execute: %+v; only on A %d, only on B %d", res, len(onlyA), len(onlyB))
			}
			for _, o := range onlyA {
				if _, found := slices.BinarySearch(planned, o); !found {
					t.Errorf("%s kept on A but not planned", o)
				}
			}
		}
		fsck(t, a.Sysroot.Repo)
	}
	return parityResult{a: a, b: nb, planned: planned, plan: apiP, deleted: deleted}
}

// executeOn runs the plan on the (physical) sysroot as the next-boot
// cleanup will: the live roots are the refs now plus the deployments'
// commits.
func executeOn(t *testing.T, s *harness.Sysroot, p *prune.Plan) prune.Result {
	t.Helper()
	sr, err := ostree.LoadSysroot(s.Path, ostree.LoadOptions{NoBooted: true})
	if err != nil {
		t.Fatal(err)
	}
	res, err := prune.ExecuteRepo(context.Background(), sr.Repo, p, prune.DeploymentRoots(sr.Deployments), time.Minute, nil)
	if err != nil {
		t.Fatalf("ExecuteRepo: %v (%+v)", err, res)
	}
	return res
}

func fsck(t *testing.T, repo string) {
	t.Helper()
	if out, errOut, err := harness.RunOstree(context.Background(), "fsck", "--repo="+repo); err != nil {
		t.Errorf("ostree fsck: %v\n%s%s", err, out, errOut)
	}
}

// baseline deploys c1 then c2 and boots c2 (c1 is the rollback), then
// stages c3 with the real command.
type baseline struct {
	e                 *parityEnv
	t1, t2, t3        *harness.Tree
	c1, c2, c3        string
	d1, d2            harness.Deployment
	h                 *harness.BootedHost
	churn             float64
	beforeStage       func()
	extraDeployBefore func()
	stageArgs         []string
}

func (bl *baseline) build(t *testing.T) {
	t.Helper()
	e := bl.e
	if bl.churn == 0 {
		bl.churn = 0.3
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	if bl.extraDeployBefore != nil {
		bl.extraDeployBefore()
	}
	bl.t1 = harness.NewTree(harness.TreeOptions{Seed: seed})
	bl.c1 = e.commit("testos/main", bl.t1)
	bl.d1 = e.s.Deploy("testos", "testos/main", "root=LABEL=parity")
	bl.t2, _ = bl.t1.Churn(bl.churn, 1)
	bl.c2 = e.commit("testos/main", bl.t2)
	bl.d2 = e.s.Deploy("testos", "testos/main", "root=LABEL=parity")
	bl.h = e.boot(bl.d2)
	bl.t3, _ = bl.t2.Churn(bl.churn, 2)
	bl.c3 = e.commit("testos/main", bl.t3)
	if bl.beforeStage != nil {
		bl.beforeStage()
	}
	if st := bl.h.Stage("testos/main", bl.stageArgs...); st.Checksum != bl.c3 {
		t.Fatalf("staged %s, want %s", st.Checksum, bl.c3)
	}
}

// loadBootVersions reads the current (bootversion, subbootversion).
func loadBootVersions(t *testing.T, s *harness.Sysroot) (int, int) {
	t.Helper()
	sr, err := ostree.LoadSysroot(s.Path, ostree.LoadOptions{NoBooted: true})
	if err != nil {
		t.Fatal(err)
	}
	return sr.BootVersion, sr.SubBootVersion
}

// (a) A staged update that drops the rollback; plus an orphan commit (pure
// garbage) and a stale deployment ref under a prefix that regeneration
// deletes.
func TestParityDropRollback(t *testing.T) { harness.ForEachOracle(t, testParityDropRollback) }

func testParityDropRollback(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	var orphan string
	bl.beforeStage = func() {
		orphan = e.commit("", harness.NewTree(harness.TreeOptions{Seed: 7}))
		bv, _ := loadBootVersions(t, e.s)
		e.s.CreateRef(fmt.Sprintf("ostree/%d/1/0", 1-bv), orphan)
	}
	bl.build(t)
	r := checkParity(t, e, bl.h, true)
	if !slices.Contains(r.deleted, bl.c1+".commit") || !slices.Contains(r.deleted, orphan+".commit") {
		t.Errorf("the rollback commit %s and the orphan %s should be deleted", bl.c1, orphan)
	}
}

// (b) A pinned deployment survives finalization even though it is neither
// booted nor the merge deployment.
func TestParityPinned(t *testing.T) { harness.ForEachOracle(t, testParityPinned) }

func testParityPinned(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	var c0 string
	bl.extraDeployBefore = func() {
		c0 = e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 99}))
		e.s.Deploy("testos", "testos/main", "root=LABEL=parity")
		e.s.Pin(0)
	}
	bl.build(t)
	r := checkParity(t, e, bl.h, true)
	if slices.Contains(r.planned, c0+".commit") || !slices.Contains(r.planned, bl.c1+".commit") {
		t.Errorf("pinned %s must stay and rollback %s go", c0, bl.c1)
	}
}

// (c) A second stateroot keeps its deployments (and a stateroot with two
// deployments keeps both: only the staged one's stateroot is trimmed).
func TestParitySecondStateroot(t *testing.T) { harness.ForEachOracle(t, testParitySecondStateroot) }

func testParitySecondStateroot(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	var o1, o2 string
	bl.extraDeployBefore = func() {
		e.s.InitOS("otheros")
		ot := harness.NewTree(harness.TreeOptions{Seed: 1234})
		o1 = e.commit("otheros/main", ot)
		e.s.Deploy("otheros", "otheros/main")
		ot2, _ := ot.Churn(0.5, 3)
		o2 = e.commit("otheros/main", ot2)
		e.s.Deploy("otheros", "otheros/main")
	}
	bl.build(t)
	r := checkParity(t, e, bl.h, true)
	for _, c := range []string{o1, o2} {
		if slices.Contains(r.planned, c+".commit") {
			t.Errorf("other stateroot's commit %s planned", c)
		}
	}
}

// (d) Remote refs, a mirror (collection) ref and an extra ref keeping part of
// the rollback alive.
func TestParityRemoteAndExtraRefs(t *testing.T) {
	harness.ForEachOracle(t, testParityRemoteAndExtraRefs)
}

func testParityRemoteAndExtraRefs(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	var partial, remote, mirror string
	bl.beforeStage = func() {
		// A commit sharing part of the rollback's tree: t1 with a churn.
		tp, _ := bl.t1.Churn(0.5, 11)
		partial = e.commit("", tp)
		e.s.CreateRef("extra/partial", partial)
		e.s.AddRemote("origin", "")
		remote = e.commit("", harness.NewTree(harness.TreeOptions{Seed: 77}))
		e.s.CreateRef("origin:testos/stable", remote)
		mirror = e.commit("", harness.NewTree(harness.TreeOptions{Seed: 78}))
		p := filepath.Join(e.s.Repo, "refs/mirrors/org.example.Parity/testos/mirrored")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(mirror+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bl.build(t)
	r := checkParity(t, e, bl.h, true)
	for _, c := range []string{partial, remote, mirror} {
		if slices.Contains(r.planned, c+".commit") {
			t.Errorf("ref target %s planned", c)
		}
	}
	if !slices.Contains(r.planned, bl.c1+".commit") {
		t.Errorf("rollback commit %s not planned", bl.c1)
	}
}

// (e) Objects shared by every commit: a small churn, so most objects stay.
func TestParitySharedObjects(t *testing.T) { harness.ForEachOracle(t, testParitySharedObjects) }

func testParitySharedObjects(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e, churn: 0.05}
	bl.build(t)
	r := checkParity(t, e, bl.h, true)
	if n := len(parityObjects(t, r.b.Sysroot.Repo)); n <= len(r.deleted) {
		t.Errorf("small churn: %d objects kept, %d deleted", n, len(r.deleted))
	}
}

// (f) Nothing staged: the plan is what `ostree admin cleanup` deletes now;
// the deployment refs are regenerated under the current prefix (stray refs
// there beyond the list survive; other prefixes go).
func TestParityNothingStaged(t *testing.T) { harness.ForEachOracle(t, testParityNothingStaged) }

func testParityNothingStaged(t *testing.T) {
	e := newParityEnv(t)
	t1 := harness.NewTree(harness.TreeOptions{Seed: time.Now().UnixNano()})
	e.commit("testos/main", t1)
	d1 := e.s.Deploy("testos", "testos/main")
	t2, _ := t1.Churn(0.3, 1)
	e.commit("testos/main", t2)
	e.s.Deploy("testos", "testos/main")
	// Garbage: an orphan commit, a commit whose only ref is deleted, and
	// commits held by stale deployment refs.
	e.commit("", harness.NewTree(harness.TreeOptions{Seed: 5}))
	gone := e.commit("scratch", harness.NewTree(harness.TreeOptions{Seed: 6}))
	e.s.DeleteRef("scratch")
	bv, sv := loadBootVersions(t, e.s)
	stale := e.commit("", harness.NewTree(harness.TreeOptions{Seed: 8}))
	e.s.CreateRef(fmt.Sprintf("ostree/%d/%d/0", 1-bv, 0), stale)
	e.s.CreateRef(fmt.Sprintf("ostree/%d/%d/1", bv, 1-sv), stale)
	kept := e.commit("", harness.NewTree(harness.TreeOptions{Seed: 9}))
	e.s.CreateRef(fmt.Sprintf("ostree/%d/%d/7", bv, sv), kept)

	ds := e.s.Deployments()
	h := e.boot(ds[0])
	r := checkParity(t, e, h, true)
	if !slices.Contains(r.planned, gone+".commit") || !slices.Contains(r.planned, stale+".commit") || slices.Contains(r.planned, kept+".commit") {
		t.Errorf("planned: deleted ref's %s and stale %s must go, %s (stray ref in the current prefix) stay", gone, stale, kept)
	}
	_ = d1
}

// (g) A ref added between planning and execution that reaches planned
// objects: those objects survive, fsck is clean, the new commit checks out.
func TestParityRefAddedBeforeExecution(t *testing.T) {
	harness.ForEachOracle(t, testParityRefAddedBeforeExecution)
}

func testParityRefAddedBeforeExecution(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	bl.build(t)
	r := checkParity(t, e, bl.h, false)
	a := r.a
	if _, err := a.FinalizeStaged(e.ctx); err != nil {
		t.Fatal(err)
	}
	// A new commit of the rollback's tree (same objects, new commit) and a
	// ref to the rollback commit itself, both planned for deletion.
	s := a.Sysroot
	revived := s.CommitWith("revived", bl.t1, harness.CommitOptions{Timestamp: "2025-05-05 05:05:05 +0000"})
	s.CreateRef("keep/rollback", bl.c1)
	if !slices.Contains(r.planned, bl.c1+".commit") {
		t.Fatalf("rollback %s not planned", bl.c1)
	}
	before := parityObjects(t, s.Repo)
	res := executeOn(t, s, r.plan)
	if !res.RootsChanged || res.NewRoots != 2 || res.KeptLive == 0 || res.Remaining != 0 {
		t.Errorf("execute: %+v", res)
	}
	after := parityObjects(t, s.Repo)
	// Exactly the planned objects the new roots do not reach are gone: run
	// ostree's own prune now and it must find nothing more to delete
	// (beyond what ostree's cleanup on B also kept: compare with a real
	// cleanup on this repo).
	for _, c := range []string{bl.c1 + ".commit", revived + ".commit"} {
		if !after[c] {
			t.Errorf("%s deleted", c)
		}
	}
	if len(setMinus(before, after)) != res.Deleted {
		t.Errorf("deleted %d files, result says %d", len(setMinus(before, after)), res.Deleted)
	}
	fsck(t, s.Repo)
	for _, c := range []string{revived, bl.c1} {
		dst := filepath.Join(t.TempDir(), "co")
		if out, errOut, err := harness.RunOstree(e.ctx, "checkout", "--repo="+s.Repo, "-U", c, dst); err != nil {
			t.Errorf("checkout %s: %v\n%s%s", c, err, out, errOut)
		}
	}
	// And what we left is what ostree's own cleanup leaves with these refs.
	want := parityObjects(t, s.Repo)
	nb := s.NextBoot(t, e.opts)
	nb.MustRun("ostree", "admin", "cleanup")
	if extra := setMinus(want, parityObjects(t, s.Repo)); len(extra) != 0 {
		t.Errorf("ostree's cleanup still found %d objects to delete after ours: %v", len(extra), extra)
	}
}

// Bad input: a missing or corrupt object reachable from a root stops
// `plan` with exit status 1 and one line naming the object; nothing is
// listed.
func TestParityBadInput(t *testing.T) { harness.ForEachOracle(t, testParityBadInput) }

func testParityBadInput(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	bl.build(t)
	sr, err := ostree.LoadSysroot(e.s.Path, ostree.LoadOptions{NoBooted: true})
	if err != nil {
		t.Fatal(err)
	}
	c3, err := ostree.ParseChecksum(bl.c3)
	if err != nil {
		t.Fatal(err)
	}
	commit, err := sr.Repo.LoadCommit(c3)
	if err != nil {
		t.Fatal(err)
	}
	rootTree := ostree.ObjectName{Checksum: commit.RootTree, Type: ostree.ObjDirTree}
	commitObj := ostree.ObjectName{Checksum: c3, Type: ostree.ObjCommit}

	for _, tc := range []struct {
		name   string
		obj    ostree.ObjectName
		mangle func(path string) error
	}{
		{"missing dirtree", rootTree, os.Remove},
		{"corrupt dirtree", rootTree, func(p string) error { return os.WriteFile(p, []byte("\x01garbage, not a dirtree"), 0o644) }},
		{"corrupt commit", commitObj, func(p string) error { return os.WriteFile(p, []byte("short"), 0o644) }},
		{"missing commit", commitObj, os.Remove},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := bl.h.Copy(t)
			repo, err := ostree.OpenRepo(h.Sysroot.Repo)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.mangle(repo.ObjectPath(tc.obj)); err != nil {
				t.Fatal(err)
			}
			out, errOut, err := h.Run(e.ctx, "ostree-prefinalize", "plan", "--list")
			var ce *harness.CmdError
			if !errors.As(err, &ce) || ce.ExitCode() != 1 {
				t.Fatalf("plan --list: %v, want exit status 1", err)
			}
			if out != "" {
				t.Errorf("partial output on stdout: %q", out)
			}
			if l := lines(errOut); len(l) != 1 || !strings.Contains(l[0], tc.obj.Checksum.String()) {
				t.Errorf("stderr should be one line naming %s:\n%s", tc.obj, errOut)
			}
			t.Logf("%s", strings.TrimSpace(errOut))
		})
	}
}

// `plan` prints the same plan as text and JSON, rejects --json with --list
// (exit 2), and says what survives.
func TestPlanCommandForms(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	bl.build(t)
	h := bl.h
	js := h.MustRun("ostree-prefinalize", "plan", "--json")
	for _, k := range []string{`"objects"`, `"bytes"`, `"roots_hash"`, `"dirtree"`, `"deployments"`, `"staged": true`, bl.c3, bl.c2} {
		if !strings.Contains(js, k) {
			t.Errorf("plan --json lacks %s:\n%s", k, js)
		}
	}
	txt := h.MustRun("ostree-prefinalize", "plan")
	if !strings.Contains(txt, "Objects to delete:") || !strings.Contains(txt, bl.c1) {
		t.Errorf("plan:\n%s", txt)
	}
	_, _, err := h.Run(e.ctx, "ostree-prefinalize", "plan", "--json", "--list")
	var ce *harness.CmdError
	if !errors.As(err, &ce) || ce.ExitCode() != 2 {
		t.Errorf("--json --list: %v, want exit status 2", err)
	}
	t.Logf("plan:\n%s", txt)
}

// Booted into the rollback: the default (pending) deployment above the
// booted one is dropped, the booted one (also the merge deployment) kept.
func TestParityBootedRollback(t *testing.T) { harness.ForEachOracle(t, testParityBootedRollback) }

func testParityBootedRollback(t *testing.T) {
	e := newParityEnv(t)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	t1 := harness.NewTree(harness.TreeOptions{Seed: seed})
	c1 := e.commit("testos/main", t1)
	d1 := e.s.Deploy("testos", "testos/main")
	t2, _ := t1.Churn(0.3, 1)
	c2 := e.commit("testos/main", t2)
	e.s.Deploy("testos", "testos/main")
	h := e.boot(d1)
	t3, _ := t2.Churn(0.3, 2)
	e.commit("testos/main", t3)
	h.Stage("testos/main")
	r := checkParity(t, e, h, true)
	if !slices.Contains(r.planned, c2+".commit") || slices.Contains(r.planned, c1+".commit") {
		t.Errorf("pending %s must go, booted %s stay", c2, c1)
	}
}

// Staging into another stateroot: its merge deployment is its first
// deployment (not the booted one) and is kept, the rest of that stateroot
// dropped; the booted stateroot is untouched. With --no-merge the staged
// state has no merge deployment, and that one goes too.
func TestParityStageOtherStateroot(t *testing.T) {
	harness.ForEachOracle(t, testParityStageOtherStateroot)
}

func testParityStageOtherStateroot(t *testing.T) {
	for _, noMerge := range []bool{false, true} {
		t.Run(fmt.Sprintf("no-merge=%v", noMerge), func(t *testing.T) { testStageOtherStateroot(t, noMerge) })
	}
}

func testStageOtherStateroot(t *testing.T, noMerge bool) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	var o1, o2 string
	bl.extraDeployBefore = func() {
		e.s.InitOS("otheros")
		ot := harness.NewTree(harness.TreeOptions{Seed: 4321})
		o1 = e.commit("otheros/main", ot)
		e.s.Deploy("otheros", "otheros/main")
		ot2, _ := ot.Churn(0.5, 3)
		o2 = e.commit("otheros/main", ot2)
		e.s.Deploy("otheros", "otheros/main")
	}
	bl.build(t)
	h := bl.h
	// Replace the staged testos update by an otheros one.
	h.MustRun("ostree", "admin", "undeploy", "0")
	ot3 := harness.NewTree(harness.TreeOptions{Seed: 999})
	o3 := h.Sysroot.CommitWith("otheros/main", ot3, harness.CommitOptions{Timestamp: parityTime})
	args := []string{"--os=otheros"}
	if noMerge {
		args = append(args, "--no-merge")
	}
	if st := h.Stage("otheros/main", args...); st.Checksum != o3 {
		t.Fatalf("staged %s, want %s", st.Checksum, o3)
	}
	r := checkParity(t, e, h, true)
	for _, c := range []string{bl.c1, bl.c2} {
		if slices.Contains(r.planned, c+".commit") {
			t.Errorf("%s must stay (other stateroot)", c)
		}
	}
	if !slices.Contains(r.planned, o1+".commit") {
		t.Errorf("otheros' older deployment %s must go", o1)
	}
	if slices.Contains(r.planned, o2+".commit") != noMerge {
		t.Errorf("otheros' merge deployment %s: planned %v, want %v", o2, !noMerge, noMerge)
	}
}

// Takeover: the staged state rewritten without "merge-deployment" (the
// merge deployment being the booted one) changes nothing in ostree's
// retention, and the API predicts the same from the original state.
func TestParityTakeover(t *testing.T) { harness.ForEachOracle(t, testParityTakeover) }

func testParityTakeover(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e}
	bl.build(t)
	h := bl.h
	raw, err := os.ReadFile(h.StagedPath())
	if err != nil {
		t.Fatal(err)
	}
	orig, err := ostree.DecodeStagedState(raw)
	if err != nil {
		t.Fatal(err)
	}
	if orig.Merge == nil || orig.Merge.Checksum.String() != bl.c2 {
		t.Fatalf("merge deployment %+v, want the booted %s", orig.Merge, bl.c2)
	}
	enc, err := orig.EncodeTakeover([]string{"root=LABEL=parity"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.StagedPath(), enc, 0o644); err != nil {
		t.Fatal(err)
	}
	s, fromLive, _ := apiPlan(t, h)
	if s.StagedState.Merge != nil {
		t.Fatal("the rewritten state still has a merge deployment")
	}
	fromOrig, err := prune.PredictDeploymentsWith(s, prune.PredictOptions{State: orig})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(predictedNames(fromLive), predictedNames(fromOrig)) {
		t.Errorf("takeover changes the prediction: %q vs %q", predictedNames(fromLive), predictedNames(fromOrig))
	}
	checkParity(t, e, h, true)
}

// Locked finalization (--lock-finalization): ostree does not finalize at
// shutdown, the staged deployment is gone after the reboot, and cleanup
// works from the current list.
func TestParityLockedFinalization(t *testing.T) {
	harness.ForEachOracle(t, testParityLockedFinalization)
}

func testParityLockedFinalization(t *testing.T) {
	e := newParityEnv(t)
	bl := &baseline{e: e, stageArgs: []string{"--lock-finalization"}}
	var orphan string
	bl.beforeStage = func() { orphan = e.commit("", harness.NewTree(harness.TreeOptions{Seed: 3})) }
	bl.build(t)
	if _, err := os.Stat(filepath.Join(bl.h.RunDir, "ostree/staged-deployment-locked")); err != nil {
		t.Fatalf("not locked: %v", err)
	}
	r := checkParity(t, e, bl.h, true)
	if !slices.Contains(r.planned, orphan+".commit") || slices.Contains(r.planned, bl.c1+".commit") {
		t.Errorf("locked: orphan %s must go, rollback %s stay", orphan, bl.c1)
	}
}
