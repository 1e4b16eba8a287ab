package test

// Longer than 500 lines on purpose: one benchmark (the prune workload, ours
// beside ostree) with its workload builder.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// TestPruneBench is the mock-prune benchmark of `make bench` (issue 3): our
// plan and its execution against ostree's own prune and cleanup on the same
// repository, in the same run, median of benchRuns runs each, printed as a
// table. It runs only with OSTREE_PREFINALIZE_BENCH=1 (see requireBench).
// OSTREE_PREFINALIZE_BENCH_ONLY=synthetic,plan,exec limits the parts
// (default all); OSTREE_PREFINALIZE_BENCH_SEED overrides the churn seed.
func TestPruneBench(t *testing.T) {
	requireBench(t)
	runs := benchRuns(t)
	only := os.Getenv("OSTREE_PREFINALIZE_BENCH_ONLY")
	want := func(part string) bool {
		return only == "" || slices.Contains(strings.Split(only, ","), part)
	}
	rep := &table{}
	rep.title = append(rep.title,
		"## mock prune benchmark",
		fmt.Sprintf("machine: %d CPUs (GOMAXPROCS %d), shared with other jobs; %s; %d runs per cell, median (min–max)",
			runtime.NumCPU(), runtime.GOMAXPROCS(0), ostreeVersion(t), runs))
	rep.add("measurement", "ours", "theirs", "ratio", "goal", "ours min–max", "theirs min–max", "notes")

	if want("synthetic") {
		benchSynthetic(t, runs, rep)
	}
	if want("plan") || want("exec") {
		fx := buildFixture(t)
		rep.title = append(rep.title, "workload: "+fx.desc)
		if want("plan") {
			benchPlanning(t, fx, runs, rep)
		}
		if want("exec") {
			benchExecution(t, fx, runs, rep)
		}
	}
	fmt.Printf("\n%s\n", rep)
}

func ostreeVersion(t *testing.T) string {
	out, _, err := harness.RunOstree(context.Background(), "--version")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Version: "); ok {
			return "ostree " + strings.Trim(v, "'")
		}
	}
	return "ostree ?"
}

func goal(ok bool, g string) string {
	if ok {
		return g + " met"
	}
	return g + " MISSED"
}

// benchSynthetic plans the in-memory synthetic repository at three sizes,
// to show the planning cost (time and peak heap) per object and that it is
// linear; the 1M size has the goal ≤ 5 s warm.
func benchSynthetic(t *testing.T, runs int, rep *table) {
	ctx := context.Background()
	var perObj []float64
	for _, mids := range []uint64{10, 20, 40} {
		s := synthRepo{mids: mids}
		listed, planned := s.expected()
		var times sample
		var peakMax uint64
		for i := 0; i < runs; i++ {
			stop := peakHeap()
			start := time.Now()
			p, err := prune.ComputePlan(ctx, s, s.roots(), "file", s.children)
			el := time.Since(start)
			peak := stop()
			if err != nil {
				t.Fatal(err)
			}
			if p.Stats.Listed != listed || p.Stats.Objects != planned {
				t.Fatalf("synthetic %d mids: listed %d planned %d, want %d and %d", mids, p.Stats.Listed, p.Stats.Objects, listed, planned)
			}
			runtime.KeepAlive(p)
			times = append(times, el)
			peakMax = max(peakMax, peak)
		}
		ns := float64(times.median().Nanoseconds()) / float64(listed)
		perObj = append(perObj, ns)
		g := "-"
		if mids == 40 {
			g = goal(times.median() <= 5*time.Second, "≤5s")
		}
		rep.add(fmt.Sprintf("plan synthetic %dk objects (in memory, warm)", (listed+500)/1000),
			fmtDur(times.median()), "-", "-", g, times.spread(), "-",
			fmt.Sprintf("%.0f ns/object; peak heap %.0f MB (%.0f B/object); %d planned",
				ns, float64(peakMax)/(1<<20), float64(peakMax)/float64(listed), planned))
	}
	rep.add("  linearity (ns/object at 250k : 500k : 1M)", "-", "-", "-", "-", "-", "-",
		fmt.Sprintf("%.0f : %.0f : %.0f", perObj[0], perObj[1], perObj[2]))
}

// fixture is the benchmark's sysroot: three commits of real files on one
// branch, deployed as rollback (1) and booted (2), and a real staged update
// to 3 that drops the rollback at finalization.
type fixture struct {
	s       *harness.Sysroot
	booted  *harness.BootedHost
	bin     string // our command, on the host
	commits [3]string
	desc    string
	// plan is our plan computed in-process right after staging, with the
	// post-finalization roots: what the persisted plan of the next boot
	// holds.
	plan *prune.Plan
	// list is plan --list of that plan (sorted lines).
	list []string
}

// Real directories copied into the tree (those that exist); the first is
// required.
var fixtureSources = []string{"/usr/share", "/usr/lib/python3", "/usr/lib/python3.11"}

const defaultChurnSeed = 20240611

// benchWorkTree writes a bootable skeleton (harness tree, seed 1, no
// generated usr files) into a scratch directory and copies the existing
// sources below usr/lib/bench/ (the first is required); it returns the
// directory, the copies' relative paths and the sources used.
func benchWorkTree(t *testing.T, sources []string) (work string, roots, used []string) {
	t.Helper()
	work = filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	empty := harness.Shape{}
	tree := harness.NewTree(harness.TreeOptions{Seed: 1, Usr: &empty})
	if err := tree.Write(work); err != nil {
		t.Fatal(err)
	}
	for i, src := range sources {
		if _, err := os.Stat(src); err != nil {
			if i == 0 {
				t.Fatalf("benchmark source %s: %v", src, err)
			}
			continue
		}
		rel := filepath.Join("usr", "lib", "bench", strings.ReplaceAll(strings.TrimPrefix(src, "/"), "/", "_"))
		if err := os.MkdirAll(filepath.Dir(filepath.Join(work, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", "-a", "--", src, filepath.Join(work, rel)).CombinedOutput(); err != nil {
			t.Fatalf("cp -a %s: %v\n%s", src, err, out)
		}
		roots = append(roots, rel)
		used = append(used, src)
	}
	return work, roots, used
}

func buildFixture(t *testing.T) *fixture {
	ctx := context.Background()
	seed := uint64(defaultChurnSeed)
	if v := os.Getenv("OSTREE_PREFINALIZE_BENCH_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("OSTREE_PREFINALIZE_BENCH_SEED=%q: %v", v, err)
		}
		seed = n
	}
	t.Logf("churn seed %d (set OSTREE_PREFINALIZE_BENCH_SEED to change)", seed)
	start := time.Now()
	fx := &fixture{bin: buildBinary(t)}
	s := harness.NewSysroot(t, harness.Options{})
	fx.s = s

	work, roots, used := benchWorkTree(t, fixtureSources)
	commit := func(k int) string {
		out := s.RepoCmd("commit", "--branch=os", "--tree=dir="+work,
			fmt.Sprintf("--subject=bench %d", k), fmt.Sprintf("--timestamp=2024-01-0%d 00:00:00 +0000", k))
		return strings.TrimSpace(out)
	}
	var churns []churnStats
	fx.commits[0] = commit(1)
	s.Deploy(s.OS, "os")
	for k := 2; k <= 3; k++ {
		cs, err := realChurn(work, roots, 0.2, seed, k)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("churn for commit %d: %+v", k, cs)
		churns = append(churns, cs)
		fx.commits[k-1] = commit(k)
		if k == 2 {
			s.Deploy(s.OS, "os")
		}
	}
	if err := os.RemoveAll(work); err != nil {
		t.Fatal(err)
	}
	ds := s.Deployments()
	if len(ds) != 2 || ds[0].Checksum != fx.commits[1] || ds[1].Checksum != fx.commits[0] {
		t.Fatalf("deployments before staging:\n%s", s.Status())
	}
	fx.booted = s.Boot(t, ds[0], harness.BootOptions{Binds: []harness.Bind{harness.OnPath(fx.bin)}})
	staged := fx.booted.Stage("os")
	if staged.Checksum != fx.commits[2] {
		t.Fatalf("staged %s, want commit 3 %s", staged.Checksum, fx.commits[2])
	}

	// Our plan as the stage command computes it, in-process: it is the
	// input of the execution benchmark and the reference for plan --list.
	sys := loadBooted(t, fx)
	pred, err := prune.PredictDeployments(sys)
	if err != nil {
		t.Fatal(err)
	}
	proots, err := prune.PostFinalizeRoots(sys, pred)
	if err != nil {
		t.Fatal(err)
	}
	fx.plan, err = prune.PlanRepo(ctx, sys.Repo, proots, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := fx.plan.WriteList(&buf); err != nil {
		t.Fatal(err)
	}
	fx.list = strings.Fields(buf.String())

	objs := len(parityObjects(t, s.Repo))
	var du bytes.Buffer
	duCmd := exec.Command("du", "-sh", "--apparent-size", filepath.Join(s.Repo, "objects"))
	duCmd.Stdout = &du
	duCmd.Run()
	size := strings.Fields(du.String() + " ?")[0]
	st := fx.plan.Stats
	fx.desc = fmt.Sprintf("bare repo of %d loose objects (%s), 3 commits of %v (%d regular files in commit 1; "+
		"commits 2 and 3 each modify 20%%, remove 10%%, add 10%% of the files, seed %d); "+
		"deployments: 1 rollback, 2 booted; 3 staged with real ostree admin deploy --stage; "+
		"the plan: %d objects (%d commit, %d dirtree, %d dirmeta, %d file), %.0f MB",
		objs, size, used, churns[0].Files, seed,
		st.Objects, st.Commit.Objects, st.DirTree.Objects, st.DirMeta.Objects, st.File.Objects, float64(st.Bytes)/1e6)
	t.Logf("fixture built in %s: %s", time.Since(start).Round(time.Second), fx.desc)
	if objs < 60000 {
		t.Errorf("workload has %d objects, the benchmark wants at least 60000", objs)
	}
	return fx
}

// loadBooted loads the fixture's sysroot as the booted host sees it (from
// outside, with the booted deployment's device and inode).
func loadBooted(t testing.TB, fx *fixture) *ostree.Sysroot {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(fx.booted.Deployment.Dir, &st); err != nil {
		t.Fatal(err)
	}
	sys, err := ostree.LoadSysroot(fx.s.Path, ostree.LoadOptions{
		RunDir: fx.booted.RunDir, BootedDevIno: &[2]uint64{st.Dev, st.Ino}})
	if err != nil {
		t.Fatal(err)
	}
	if sys.Staged == nil {
		t.Fatal("sysroot has no staged deployment")
	}
	return sys
}

// timedInside runs one shell command line inside the booted namespace and
// returns its wall time and maximum RSS, measured inside (so the namespace
// setup is outside the timed region).
func timedInside(t testing.TB, b *harness.BootedHost, cmdline string) (time.Duration, int64) {
	t.Helper()
	script := `t0=$(date +%s%N); /usr/bin/time -f %M -o /tmp/.rss ` + cmdline + ` >/dev/null || exit 1; t1=$(date +%s%N); echo "$((t1-t0)) $(cat /tmp/.rss)"`
	out, _, err := b.Shell(context.Background(), script)
	if err != nil {
		t.Fatal(err)
	}
	var ns, rss int64
	if _, err := fmt.Sscan(out, &ns, &rss); err != nil {
		t.Fatalf("timing %q: output %q: %v", cmdline, out, err)
	}
	return time.Duration(ns), rss
}

// benchPlanning: `ostree-prefinalize plan --list` (or, while the command
// is not built, the same plan in-process) against
// `ostree prune --refs-only --depth=0 --no-prune`, on the staged sysroot,
// warm and cold.
func benchPlanning(t *testing.T, fx *fixture, runs int, rep *table) {
	ours := "ostree-prefinalize plan --list"
	theirs := "ostree prune --repo=/ostree/repo --refs-only --depth=0 --no-prune"
	useCmd := true
	out, _, err := fx.booted.Run(context.Background(), "ostree-prefinalize", "plan", "--list")
	if err != nil {
		useCmd = false
		t.Logf("plan --list fails (%v); timing the same plan in-process instead", firstLine(err.Error()))
	} else if got := strings.Fields(out); !slices.Equal(got, fx.list) {
		t.Errorf("plan --list (%d objects) differs from the in-process plan (%d objects)", len(got), len(fx.list))
	}
	// ostree's own count, for the table.
	pout, _, err := fx.booted.Run(context.Background(), "ostree", "prune", "--repo=/ostree/repo", "--refs-only", "--depth=0", "--no-prune")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ostree prune --no-prune: %s", strings.Join(strings.Fields(pout), " "))

	for _, cold := range []bool{false, true} {
		var o, th sample
		var oRSS, thRSS []int64
		for i := 0; i < runs; i++ {
			// Alternate which side goes first, so neither always inherits
			// the other's cache state or a quiet moment.
			sides := []int{0, 1}
			if i%2 == 1 {
				sides = []int{1, 0}
			}
			for _, side := range sides {
				settle(t, cold)
				if side == 1 {
					d, rss := timedInside(t, fx.booted, theirs)
					th, thRSS = append(th, d), append(thRSS, rss)
					continue
				}
				if useCmd {
					d, rss := timedInside(t, fx.booted, ours)
					o, oRSS = append(o, d), append(oRSS, rss)
					continue
				}
				stop := peakHeap()
				start := time.Now()
				p := planInProcess(t, fx)
				d := time.Since(start)
				heap := stop()
				if p.Len() != fx.plan.Len() {
					t.Fatalf("in-process plan: %d objects, first plan %d", p.Len(), fx.plan.Len())
				}
				o, oRSS = append(o, d), append(oRSS, int64(heap>>10))
			}
		}
		cache := "warm"
		if cold {
			cache = "cold"
		}
		what := "plan --list"
		mem := "max RSS"
		if !useCmd {
			what = "PlanRepo in-process (command not built)"
			mem = "our peak heap"
		}
		r := ratio(o, th)
		rep.add(fmt.Sprintf("plan, %s cache: %s vs ostree prune --no-prune", cache, what),
			fmtDur(o.median()), fmtDur(th.median()), fmt.Sprintf("%.2f×", r), goal(r <= 0.5, "≤0.5×"),
			o.spread(), th.spread(),
			fmt.Sprintf("paired %.2f×; %s %s vs %s", pairedRatio(o, th), mem, medianKB(oRSS), medianKB(thRSS)))
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func medianKB(v []int64) string {
	c := slices.Clone(v)
	slices.Sort(c)
	if len(c) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MB", float64(c[len(c)/2])/1024)
}

// planInProcess is what the plan command does, without the process: load
// the booted sysroot, predict the deployments and roots, plan.
func planInProcess(t testing.TB, fx *fixture) *prune.Plan {
	sys := loadBooted(t, fx)
	p, _, err := prune.PlanSysroot(context.Background(), sys, prune.PredictOptions{}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Execution sides.
const (
	sideOurs = iota
	sideCleanup
	sideRm
	nSides
)

var sideNames = [nSides]string{"ours", "ostree-cleanup", "xargs-rm"}

// benchExecution finalizes the staged update with real ostree, then times,
// on a fresh identical copy of the finalized sysroot per run (CopyTree; the
// copy and its write-back are outside the timed region): our execution of
// the staging-time plan (open the repository, load the deployments for the
// live roots, rebuild and validate the plan, ExecuteRepo with its lock,
// roots check and syncs), `ostree admin cleanup --sysroot` (ostree's
// next-boot cleanup: reachability crawl and deletion) and
// `xargs -0 rm -f` of the planned paths (the floor). Every run checks that
// exactly the planned objects are gone.
func benchExecution(t *testing.T, fx *fixture, runs int, rep *table) {
	ctx := context.Background()
	if _, err := fx.booted.FinalizeStaged(ctx); err != nil {
		t.Fatal(err)
	}
	ds := fx.s.Deployments()
	if len(ds) != 2 || ds[0].Checksum != fx.commits[2] || ds[1].Checksum != fx.commits[1] {
		t.Fatalf("deployments after finalization:\n%s", fx.s.Status())
	}
	before := parityObjects(t, fx.s.Repo)
	planned := map[string]bool{}
	for _, l := range fx.list {
		planned[l] = true
		if !before[l] {
			t.Fatalf("planned object %s is not in the finalized repository", l)
		}
	}
	check := func(t testing.TB, repo, side string) { checkExecuted(t, before, planned, repo, side) }

	// Once: ostree's cleanup at the next boot (inside the new deployment's
	// namespace) and with --sysroot from outside delete the same objects,
	// the planned ones, so timing the latter (no namespace setup) is fair.
	t.Run("equivalence", func(t *testing.T) {
		nb := fx.s.Copy(t)
		nb.NextBoot(t, harness.BootOptions{}).MustRun("ostree", "admin", "cleanup")
		check(t, nb.Repo, "next-boot ostree admin cleanup")
	})

	entries := fx.plan.Entries()
	for _, cold := range []bool{false, true} {
		cache := "warm"
		if cold {
			cache = "cold"
		}
		var times [nSides]sample
		var bds []execBreakdown
		for i := 0; i < runs; i++ {
			for k := 0; k < nSides; k++ {
				side := (i + k) % nSides // rotate the order
				t.Run(fmt.Sprintf("%s/%s/%d", cache, sideNames[side], i), func(t *testing.T) {
					dst := harness.CopyTree(t, fx.s.Path)
					repo := filepath.Join(dst, "ostree", "repo")
					var run func() error
					switch side {
					case sideOurs:
						runDir := t.TempDir()
						run = func() error {
							b, err := executeOurs(ctx, dst, fx.plan, entries, runDir)
							bds = append(bds, b)
							return err
						}
					case sideCleanup:
						run = func() error {
							_, _, err := harness.RunOstree(ctx, "admin", "cleanup", "--sysroot="+dst)
							return err
						}
					case sideRm:
						list := writeRmList(t, repo, fx.plan)
						run = func() error {
							f, err := os.Open(list)
							if err != nil {
								return err
							}
							defer f.Close()
							cmd := exec.Command("xargs", "-0", "rm", "-f")
							cmd.Stdin = f
							if out, err := cmd.CombinedOutput(); err != nil {
								return fmt.Errorf("xargs rm: %v\n%s", err, out)
							}
							return nil
						}
					}
					settle(t, cold)
					start := time.Now()
					err := run()
					el := time.Since(start)
					if err != nil {
						t.Fatal(err)
					}
					check(t, repo, sideNames[side])
					t.Logf("%s %s run %d: %s", cache, sideNames[side], i, el)
					times[side] = append(times[side], el)
				})
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		rc := ratio(times[sideOurs], times[sideCleanup])
		rep.add(fmt.Sprintf("execute, %s cache: ours vs ostree admin cleanup", cache),
			fmtDur(times[sideOurs].median()), fmtDur(times[sideCleanup].median()),
			fmt.Sprintf("%.2f×", rc), goal(rc <= 0.6, "≤0.6×"),
			times[sideOurs].spread(), times[sideCleanup].spread(),
			fmt.Sprintf("paired %.2f×; %s", pairedRatio(times[sideOurs], times[sideCleanup]), breakdownNote(bds)))
		rr := ratio(times[sideOurs], times[sideRm])
		rep.add(fmt.Sprintf("execute, %s cache: ours vs xargs -0 rm -f (floor)", cache),
			fmtDur(times[sideOurs].median()), fmtDur(times[sideRm].median()),
			fmt.Sprintf("%.2f×", rr), goal(rr <= 1.1, "≤1.1×"),
			times[sideOurs].spread(), times[sideRm].spread(),
			fmt.Sprintf("paired %.2f×", pairedRatio(times[sideOurs], times[sideRm])))
	}
}

// checkExecuted fails unless repo holds exactly the objects of before that
// are not planned (side names what deleted them).
func checkExecuted(t testing.TB, before, planned map[string]bool, repo, side string) {
	t.Helper()
	after := parityObjects(t, repo)
	var extra, missing []string
	for o := range before {
		switch {
		case planned[o] && after[o]:
			extra = append(extra, o)
		case !planned[o] && !after[o]:
			missing = append(missing, o)
		}
	}
	if len(extra)+len(missing) > 0 {
		slices.Sort(extra)
		slices.Sort(missing)
		t.Fatalf("%s: %d planned objects left (%.3q), %d unplanned objects deleted (%.3q)", side, len(extra), extra, len(missing), missing)
	}
}

// executeOurs is the next-boot cleanup without the process and the store:
// open the repository, load the sysroot (its deployments are the live roots
// besides the refs), rebuild the plan from its parts (as from the persisted
// plan, validating every entry) and execute it under the repository lock.
//
// It also returns where the time went, from the progress callback (called
// after every object): setup (up to the first deletion), the deletions, and
// the syncs between phases and at the end (the gaps at phase boundaries).
func executeOurs(ctx context.Context, sysroot string, plan *prune.Plan, entries []prune.Entry, runDir string) (execBreakdown, error) {
	start := time.Now()
	var bd execBreakdown
	sys, err := ostree.LoadSysroot(sysroot, ostree.LoadOptions{RunDir: runDir, NoBooted: true})
	if err != nil {
		return bd, err
	}
	p, err := prune.NewPlan(plan.Roots, plan.FileSuffix, entries)
	if err != nil {
		return bd, err
	}
	// Cumulative counts at the ends of the phases that Execute syncs after
	// (commit+commitmeta, dirtree): the gap to the next progress call is
	// mostly that sync.
	var ends []int
	n := 0
	for _, ty := range []ostree.ObjectType{ostree.ObjCommit, ostree.ObjDirTree} {
		for _, e := range entries {
			if e.Type == ty || (ty == ostree.ObjCommit && e.Type == ostree.ObjCommitMeta) {
				n++
			}
		}
		ends = append(ends, n)
	}
	var first, last time.Time
	var boundary time.Time
	progress := func(done, total int) {
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		if !boundary.IsZero() {
			bd.Syncs += now.Sub(boundary)
			boundary = time.Time{}
		}
		if slices.Contains(ends, done) && done < total {
			boundary = now
		}
		last = now
	}
	res, err := prune.ExecuteRepo(ctx, sys.Repo, p, prune.DeploymentRoots(sys.Deployments), time.Minute, progress)
	end := time.Now()
	if err != nil {
		return bd, err
	}
	if res.RootsChanged || res.Deleted != p.Len() {
		return bd, fmt.Errorf("execute: %+v, want all %d deleted with unchanged roots", res, p.Len())
	}
	bd.Setup = first.Sub(start)
	bd.Syncs += end.Sub(last)
	bd.Delete = end.Sub(start) - bd.Setup - bd.Syncs
	return bd, nil
}

// execBreakdown splits our execution time (see executeOurs).
type execBreakdown struct{ Setup, Delete, Syncs time.Duration }

// writeRmList writes the planned objects' paths, NUL-terminated, in the
// order our execution deletes them (commits, commitmeta, dirtrees, rest).
func writeRmList(t testing.TB, repo string, p *prune.Plan) string {
	t.Helper()
	es := p.Entries()
	phase := func(ty ostree.ObjectType) int {
		switch ty {
		case ostree.ObjCommit:
			return 0
		case ostree.ObjCommitMeta:
			return 1
		case ostree.ObjDirTree:
			return 2
		}
		return 3
	}
	slices.SortStableFunc(es, func(a, b prune.Entry) int { return phase(a.Type) - phase(b.Type) })
	f, err := os.Create(filepath.Join(t.TempDir(), "rm-list"))
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for _, e := range es {
		s := p.ObjectString(e)
		fmt.Fprintf(w, "%s/objects/%s/%s\x00", repo, s[:2], s[2:])
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// breakdownNote is the median of each part of our execution.
func breakdownNote(bds []execBreakdown) string {
	var setup, del, syncs sample
	for _, b := range bds {
		setup, del, syncs = append(setup, b.Setup), append(del, b.Delete), append(syncs, b.Syncs)
	}
	return fmt.Sprintf("ours: setup %s, unlinks %s, barriers %s (medians)", fmtDur(setup.median()), fmtDur(del.median()), fmtDur(syncs.median()))
}
