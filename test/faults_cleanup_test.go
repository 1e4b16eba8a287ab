package test

// Longer than 500 lines on purpose: the cleanup fault tests share one
// fixture (a planned sysroot and its oracle copy); each test is a scenario
// of it.

// Faults, races and hostile conditions on the deletion side (issue 7):
// SIGKILL at random points of `cleanup`, injected I/O errors in every
// delete and write path, a concurrent `ostree commit` / `ostree pull-local`,
// a finalization that fails, a locked finalization, and a read-only
// /sysroot. The oracle is always the real ostree: `ostree fsck` after every
// fault, `ostree admin cleanup` on an identical copy for the final object
// set, `ostree checkout` for new commits.
//
// OSTREE_PREFINALIZE_STRESS=1 (make stress) runs the long variants.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune/prunetest"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

func stressOn() bool { return os.Getenv("OSTREE_PREFINALIZE_STRESS") == "1" }

// faultSeed is a fresh seed, logged so that a failure can be replayed with
// OSTREE_PREFINALIZE_SEED=N.
func faultSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("OSTREE_PREFINALIZE_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("OSTREE_PREFINALIZE_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (replay with OSTREE_PREFINALIZE_SEED=%d)", seed, seed)
	return seed
}

// cleanupFixture is a sysroot right after a real staged update: deployment
// A (rollback, TreeA), B (booted), C staged with our stage, the real
// `ostree admin finalize-staged` (which drops A), then our `finalize
// --post`, so <sysroot>/ostree/prefinalize/cleanup.db holds the real
// persisted plan of A's objects.
type cleanupFixture struct {
	e      *parityEnv
	bin    string
	b      *harness.BootedHost // booted on B, after the finalization
	treeA  *harness.Tree
	plan   *prune.Plan // as persisted
	before map[string]bool
	// want is what `ostree admin cleanup` leaves on an identical copy.
	want map[string]bool
}

func newCleanupFixture(t *testing.T, usrFiles int, configure func(s *harness.Sysroot)) *cleanupFixture {
	t.Helper()
	start := time.Now()
	e := newParityEnv(t)
	f := &cleanupFixture{e: e, bin: e.opts.Binds[0].Src}
	usr := harness.Shape{Files: usrFiles, Dirs: max(usrFiles/40, 2), Depth: 3, MinSize: 8, MaxSize: 40}
	f.treeA = harness.NewTree(harness.TreeOptions{Seed: 71, Usr: &usr})
	e.commit("testos/main", f.treeA)
	e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 72}))
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	if configure != nil {
		configure(e.s)
	}
	f.b = e.boot(d)
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 73}))
	f.b.Stage("testos/main")
	f.b.MustRun("ostree-prefinalize", "stage")
	if _, err := f.b.FinalizeStaged(e.ctx); err != nil {
		t.Fatalf("real finalize-staged: %v", err)
	}
	if out := f.b.MustRun("ostree-prefinalize", "finalize", "--post"); !strings.Contains(out, "Plan persisted") {
		t.Fatalf("finalize --post: %s", out)
	}
	f.plan = readPersistedPlan(t, e.s.Path)
	f.before = parityObjects(t, e.s.Repo)
	oracle := e.s.Copy(t)
	oracle.Admin("cleanup")
	f.want = parityObjects(t, oracle.Repo)
	if gone := len(setMinus(f.before, f.want)); gone != f.plan.Len() {
		t.Fatalf("ostree's cleanup deletes %d objects, the persisted plan names %d", gone, f.plan.Len())
	}
	for _, o := range setMinus(f.want, f.before) {
		if !strings.HasSuffix(o, ".tombstone-commit") {
			t.Fatalf("ostree's cleanup added %s", o)
		}
	}
	t.Logf("fixture: %d objects, %d planned (ostree deletes the same number), built in %s", len(f.before), f.plan.Len(), time.Since(start).Round(time.Millisecond))
	return f
}

func readPersistedPlan(t *testing.T, sysroot string) *prune.Plan {
	t.Helper()
	pp, err := store.ReadPlan(sysroot)
	if err != nil {
		t.Fatalf("persisted plan: %v", err)
	}
	p, err := prune.UnmarshalPlan(pp.Plan)
	if err != nil {
		t.Fatalf("persisted plan: %v", err)
	}
	return p
}

// deletionOrder is the plan's entries in the order Execute deletes them
// (commits, commitmeta, dirtrees, then dirmeta and content; by checksum
// within a phase), as prune's documentation states it.
func deletionOrder(p *prune.Plan) []prune.Entry {
	phase := func(t ostree.ObjectType) int {
		switch t {
		case ostree.ObjCommit:
			return 0
		case ostree.ObjCommitMeta:
			return 1
		case ostree.ObjDirTree:
			return 2
		}
		return 3
	}
	es := p.Entries()
	slices.SortStableFunc(es, func(a, b prune.Entry) int { return phase(a.Type) - phase(b.Type) })
	return es
}

func planObjectPath(repo string, p *prune.Plan, e prune.Entry) string {
	s := p.ObjectString(e)
	return filepath.Join(repo, "objects", s[:2], s[2:])
}

// faultFsck runs the real `ostree fsck` and fails the test when it complains.
func faultFsck(t *testing.T, repo, when string) time.Duration {
	t.Helper()
	start := time.Now()
	out, errOut, err := harness.RunOstree(context.Background(), "fsck", "--repo="+repo)
	if err != nil {
		t.Fatalf("%s: ostree fsck: %v\n%s\n%s", when, err, out, errOut)
	}
	return time.Since(start)
}

// checkCleanupSafe checks what must hold at every instant: nothing outside the
// plan is gone, nothing appeared, and a persisted plan (if any) is readable
// and still names every planned object that is on disk.
func checkCleanupSafe(t *testing.T, sysroot, repo string, plan *prune.Plan, before, want map[string]bool, when string) map[string]bool {
	t.Helper()
	now := parityObjects(t, repo)
	if extra := setMinus(now, before); len(extra) > 0 {
		t.Fatalf("%s: objects appeared: %v", when, extra)
	}
	if lost := keptLost(before, want, now); len(lost) > 0 {
		t.Fatalf("%s: objects outside the plan deleted: %v", when, lost)
	}
	pp, err := store.ReadPlan(sysroot)
	switch {
	case errors.Is(err, store.ErrNotExist):
		if left := setMinus(now, want); len(left) > 0 {
			t.Fatalf("%s: no plan persisted but %d planned objects remain, e.g. %s", when, len(left), left[0])
		}
		return now
	case err != nil:
		t.Fatalf("%s: persisted plan unreadable: %v", when, err)
	}
	p, err := prune.UnmarshalPlan(pp.Plan)
	if err != nil {
		t.Fatalf("%s: persisted plan: %v", when, err)
	}
	named := map[string]bool{}
	for _, e := range p.Remaining() {
		named[p.ObjectString(e)] = true
	}
	for o := range now {
		if !want[o] && !named[o] {
			t.Fatalf("%s: planned object %s is on disk but the persisted plan forgot it", when, o)
		}
	}
	return now
}

// keptLost lists the objects that were there before and survive ostree's
// own cleanup (want) but are gone now.
func keptLost(before, want, now map[string]bool) []string {
	var out []string
	for o := range want {
		if before[o] && !now[o] {
			out = append(out, o)
		}
	}
	slices.Sort(out)
	return out
}

func sameAsOstree(t *testing.T, got, want map[string]bool, what string) {
	t.Helper()
	if d1, d2 := setMinus(got, want), setMinus(want, got); len(d1)+len(d2) > 0 {
		t.Fatalf("%s: differs from ostree's admin cleanup: extra %d %v, missing %d %v", what, len(d1), firstFew(d1), len(d2), firstFew(d2))
	}
}

func firstFew(s []string) []string { return s[:min(len(s), 5)] }

// runningCleanup is `ostree-prefinalize cleanup` started from outside the
// booted namespace (--sysroot, a run directory without ostree-booted):
// cleanup needs no booted deployment, and signals reach it directly.
type runningCleanup struct {
	cmd      *exec.Cmd
	out, err bytes.Buffer
	done     chan error
}

func startCleanupProc(t *testing.T, bin, sysroot, runDir string) *runningCleanup {
	t.Helper()
	r := &runningCleanup{done: make(chan error, 1)}
	r.cmd = exec.Command(bin, "--sysroot", sysroot, "--run-dir", runDir, "cleanup", "--foreground", "--json")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.err
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	return r
}

// signalOf reports the signal that ended the process, or 0.
func signalOf(err error) syscall.Signal {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return ws.Signal()
		}
	}
	return 0
}

// TestCleanupSIGKILL kills `cleanup` of a persisted plan of 10k+ objects
// at 50 (STRESS: 200) random points, mostly at random positions of the
// deletion order (it polls until a randomly chosen planned object is gone,
// then kills), some during the start (plan read, lock, validation) and some
// right after a SIGTERM (while it persists what is left). After each kill:
// `ostree fsck` clean (every kill), nothing outside the plan gone, the
// persisted plan readable and naming every planned object still on disk.
// Then a rerun in the next-boot namespace leaves exactly what ostree's own
// `ostree admin cleanup` leaves on an identical copy.
func TestCleanupSIGKILL(t *testing.T) {
	files, kills := 10000, 50
	if stressOn() {
		files, kills = 30000, 200
	}
	f := newCleanupFixture(t, files, nil)
	if f.plan.Len() < 10000 {
		t.Fatalf("plan has %d objects, want at least 10000", f.plan.Len())
	}
	rng := rand.New(rand.NewPCG(faultSeed(t), 7))
	s, repo := f.e.s, f.e.s.Repo
	order := deletionOrder(f.plan)
	paths := make([]string, len(order))
	for i, e := range order {
		paths[i] = planObjectPath(repo, f.plan, e)
	}
	gone := func(i int) bool {
		_, err := os.Lstat(paths[i])
		return errors.Is(err, fs.ErrNotExist)
	}
	runDir := t.TempDir()
	next := 0 // first entry (in deletion order) still on disk
	advance := func() {
		for next < len(paths) && gone(next) {
			next++
		}
	}
	var (
		killed, midDeletion, atStart, afterTerm, finishedAlone int
		runTime, fsckTime                                      time.Duration
		overshoot                                              int
	)
	for trial := 0; killed < kills; trial++ {
		if trial > 4*kills {
			t.Fatalf("only %d kills in %d trials", killed, trial)
		}
		advance()
		if next == len(paths) {
			t.Logf("plan fully executed after %d kills; remaining kills hit the start", killed)
		}
		mode := "progress"
		switch x := rng.IntN(100); {
		case next == len(paths) || x < 15:
			mode = "start"
		case x < 27:
			mode = "term"
		}
		target := next
		if mode != "start" {
			left := len(paths) - next
			span := max(1, left/(kills-killed+1)-overshoot)
			target = min(len(paths)-1, next+rng.IntN(span))
		}
		began := time.Now()
		r := startCleanupProc(t, f.bin, s.Path, runDir)
		var err error
		exited := false
		if mode == "start" {
			// Somewhere in the first 40ms: process start, plan read,
			// sysroot load, lock, validation, the first deletions.
			timer := time.NewTimer(time.Duration(rng.Int64N(int64(40 * time.Millisecond))))
			select {
			case err = <-r.done:
				exited = true
			case <-timer.C:
			}
			timer.Stop()
		} else {
			deadline := time.Now().Add(2 * time.Minute)
		poll:
			for !gone(target) {
				select {
				case err = <-r.done:
					exited = true
					break poll
				default:
				}
				if time.Now().After(deadline) {
					r.cmd.Process.Kill()
					t.Fatalf("cleanup did not reach %s within 2 minutes\n%s", paths[target], r.err.String())
				}
				time.Sleep(20 * time.Microsecond) // polling the disk, not synchronising
			}
		}
		if !exited {
			if mode == "term" {
				r.cmd.Process.Signal(syscall.SIGTERM)
				time.Sleep(time.Duration(rng.Int64N(int64(3 * time.Millisecond)))) // a random point after SIGTERM, by design
			}
			r.cmd.Process.Signal(syscall.SIGKILL)
			err = <-r.done
		}
		runTime += time.Since(began)
		switch sig := signalOf(err); {
		case sig == syscall.SIGKILL || (mode == "term" && sig == syscall.SIGTERM):
			// A SIGTERM that lands before the handler is installed (process
			// start) kills it like SIGKILL does.
			killed++
			switch mode {
			case "start":
				atStart++
			case "term":
				afterTerm++
			default:
				midDeletion++
			}
		case err == nil:
			finishedAlone++
		case sig == 0 && mode == "term" && strings.Contains(r.err.String(), "context canceled"):
			// SIGTERM won: it stopped promptly and persisted what is left.
		default:
			t.Fatalf("trial %d (%s): cleanup failed by itself: %v\n%s", trial, mode, err, r.err.String())
		}
		fsckTime += faultFsck(t, repo, fmt.Sprintf("after trial %d (%s)", trial, mode))
		checkCleanupSafe(t, s.Path, repo, f.plan, f.before, f.want, fmt.Sprintf("after trial %d (%s)", trial, mode))
		advance()
		if mode == "progress" && next > target {
			overshoot = (overshoot + (next - target)) / 2
		}
	}
	t.Logf("%d SIGKILLs (%d at random deletion positions, %d in the first 40ms, %d right after SIGTERM); %d runs finished by themselves; %.1f ms per run until the kill, fsck %.1f ms each on average; %d of %d planned objects deleted by then",
		killed, midDeletion, atStart, afterTerm, finishedAlone,
		float64(runTime.Microseconds())/1000/float64(killed+finishedAlone), float64(fsckTime.Microseconds())/1000/float64(killed+finishedAlone), next, len(paths))
	if midDeletion < kills/2 {
		t.Errorf("only %d kills landed during deletion", midDeletion)
	}

	// The final rerun, as at the next boot.
	nb := s.NextBoot(t, f.e.opts)
	out := nb.MustRun("ostree-prefinalize", "cleanup", "--foreground", "--json")
	var cr lifecycle.CleanupResult
	if err := json.Unmarshal([]byte(out), &cr); err != nil || cr.Remaining != 0 {
		t.Fatalf("final cleanup: %v\n%s", err, out)
	}
	faultFsck(t, repo, "after the final cleanup")
	sameAsOstree(t, parityObjects(t, repo), f.want, "after the kills and a final cleanup")
	if _, err := store.ReadPlan(s.Path); !errors.Is(err, store.ErrNotExist) {
		t.Fatalf("plan still there after the final cleanup: %v", err)
	}
}

// fnDeleter is a prune.Deleter made of function fields (STYLE.md: the
// function-field filesystem), so a test wraps the real RepoDeleter and
// breaks one call.
type fnDeleter struct {
	DeleteFn    func(o ostree.ObjectName) error
	TombstoneFn func(c ostree.Checksum) error
	SyncFn      func() error
}

func (d fnDeleter) Delete(o ostree.ObjectName) error  { return d.DeleteFn(o) }
func (d fnDeleter) Tombstone(c ostree.Checksum) error { return d.TombstoneFn(c) }
func (d fnDeleter) Sync() error                       { return d.SyncFn() }

var errInjectedIO = errors.New("injected I/O error")

// recordingDeleter wraps the real deleter of repo: it logs every call and
// its outcome, and makes the nth call of kind fail (before doing anything,
// or after doing it). Kind "fsync" is one directory fsync inside a barrier
// (Sync); barriers records the real deleter's unlinks and fsyncs (its
// function-field filesystem) for the order check.
type recordingDeleter struct {
	real     *prune.RepoDeleter
	mu       sync.Mutex // a barrier's fsyncs run in parallel
	log      []string   // "delete NAME ok|fail", "tombstone CSUM ok|fail", "sync ok|fail", "fsync DIR ok|fail"
	n        map[string]int
	barriers prunetest.BarrierLog
}

func newRecordingDeleter(t *testing.T, repo *ostree.Repo, kind string, nth int, after bool) (*recordingDeleter, fnDeleter) {
	t.Helper()
	real, err := prune.NewRepoDeleter(repo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { real.Close() })
	r := &recordingDeleter{real: real, n: map[string]int{}}
	call := func(k, what string, do func() error) error {
		r.mu.Lock()
		r.n[k]++
		fail := k == kind && r.n[k] == nth
		r.mu.Unlock()
		var err error
		if !fail || after {
			err = do()
		}
		if fail {
			err = fmt.Errorf("%s: %w", k, errInjectedIO)
		}
		res := "ok"
		if err != nil {
			res = "fail"
		}
		r.mu.Lock()
		r.log = append(r.log, strings.TrimSpace(k+" "+what)+" "+res)
		r.mu.Unlock()
		return err
	}
	fs := real.FS
	real.FS = prune.DeleterFS{
		Unlink: func(fd int, dir, name string) error {
			r.barriers.Unlink(dir, name)
			return fs.Unlink(fd, dir, name)
		},
		FsyncDir: func(fd int, dir string) error {
			err := call("fsync", dir, func() error { return fs.FsyncDir(fd, dir) })
			r.barriers.Fsync(dir, err)
			return err
		},
		Syncfs: func(fd int) error {
			err := fs.Syncfs(fd)
			r.barriers.Syncfs(err)
			return err
		},
	}
	return r, fnDeleter{
		DeleteFn: func(o ostree.ObjectName) error {
			return call("delete", o.String(), func() error { return real.Delete(o) })
		},
		TombstoneFn: func(c ostree.Checksum) error {
			return call("tombstone", c.String(), func() error { return real.Tombstone(c) })
		},
		SyncFn: func() error { return call("sync", "", real.Sync) },
	}
}

// durable checks that every entry the plan records as done was deleted and
// then synced successfully: only then may a persisted plan forget it. It
// also checks the barriers at the level of the system calls: no unlink of
// a phase was issued before the directory fsyncs of the earlier phases'
// unlinks completed, and no syncfs was issued (this filesystem fsyncs
// directories).
func (r *recordingDeleter) durable(t *testing.T, p *prune.Plan, when string) {
	t.Helper()
	if n, err := r.barriers.Check(false); err != nil || n > 0 {
		t.Fatalf("%s: barriers: %d syncfs, %v", when, n, err)
	}
	pending := map[ostree.ObjectName]bool{}
	for _, e := range p.Remaining() {
		pending[e.Name()] = true
	}
	synced := map[string]bool{}
	var unsynced []string
	for _, l := range r.log {
		f := strings.Fields(l)
		switch {
		case f[0] == "delete" && f[2] == "ok":
			unsynced = append(unsynced, f[1])
		case f[0] == "sync" && f[1] == "ok":
			for _, o := range unsynced {
				synced[o] = true
			}
			unsynced = nil
		}
	}
	for _, e := range p.Entries() {
		if !pending[e.Name()] && !synced[e.Name().String()] {
			t.Fatalf("%s: %s is recorded as done but its deletion was never synced (a power loss could bring it back after the plan forgot it)\n%s", when, p.ObjectString(e), strings.Join(r.log, "\n"))
		}
	}
}

// TestCleanupInjectedDeleteErrors breaks the real deleter's Nth Delete,
// Tombstone or Sync (before or after it did its work), for every N of a
// small plan in a repository with core.tombstone-commits=true. After each:
// the error is reported (and names the object), `ostree fsck` is clean,
// nothing outside the plan is gone, the plan as persistRemaining would
// write it names every planned object still on disk and forgets only
// deletions that were synced, and a resumed run from that encoding ends
// with exactly ostree's object set (tombstone included).
func TestCleanupInjectedDeleteErrors(t *testing.T) {
	f := newCleanupFixture(t, 12, func(s *harness.Sysroot) {
		s.RepoCmd("config", "set", "core.tombstone-commits", "true")
	})
	sys, err := ostree.LoadSysroot(f.e.s.Path, ostree.LoadOptions{NoBooted: true, RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	deps, err := prune.PredictDeployments(sys)
	if err != nil {
		t.Fatal(err)
	}
	extra := prune.DeploymentRoots(deps)
	planBytes, err := f.plan.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !sys.Repo.TombstoneCommits {
		t.Fatal("tombstone-commits not set")
	}
	copyRepo := func(t *testing.T) *ostree.Repo {
		dir := harness.CopyTree(t, f.e.s.Repo)
		r, err := ostree.OpenRepo(dir)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// A clean run counts the calls.
	r := copyRepo(t)
	rec, d := newRecordingDeleter(t, r, "", 0, false)
	p, _ := prune.UnmarshalPlan(planBytes)
	if _, err := p.Execute(context.Background(), d, prune.RepoLive{Repo: r, Extra: extra}, nil); err != nil {
		t.Fatal(err)
	}
	sameAsOstree(t, parityObjects(t, r.Path), f.want, "a clean run")
	if n, err := rec.barriers.Check(true); err != nil || n > 0 {
		t.Fatalf("a clean run: barriers: %d syncfs, %v", n, err)
	}
	counts := rec.n
	t.Logf("a clean run: %v calls for %d planned objects", counts, p.Len())

	runs := 0
	for _, kind := range []string{"delete", "tombstone", "sync", "fsync"} {
		for nth := 1; nth <= counts[kind]; nth++ {
			for _, after := range []bool{false, true} {
				name := fmt.Sprintf("%s %d (after=%v)", kind, nth, after)
				runs++
				r := copyRepo(t)
				rec, d := newRecordingDeleter(t, r, kind, nth, after)
				live := prune.RepoLive{Repo: r, Extra: extra}
				p, _ := prune.UnmarshalPlan(planBytes)
				res, err := p.Execute(context.Background(), d, live, nil)
				if !errors.Is(err, errInjectedIO) {
					t.Fatalf("%s: error %v, want the injected one (log:\n%s)", name, err, strings.Join(rec.log, "\n"))
				}
				if kind == "delete" && !strings.Contains(err.Error(), "delete object ") {
					t.Errorf("%s: error does not name the object: %v", name, err)
				}
				if res.Remaining != len(p.Remaining()) || res.Remaining == 0 {
					t.Errorf("%s: result %+v, %d entries pending", name, res, len(p.Remaining()))
				}
				faultFsck(t, r.Path, name)
				rec.durable(t, p, name)
				// What Cleanup persists, then the next run from it.
				rest, err := p.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				p2, err := prune.UnmarshalPlan(rest)
				if err != nil {
					t.Fatal(err)
				}
				now := parityObjects(t, r.Path)
				if lost := keptLost(f.before, f.want, now); len(lost) > 0 {
					t.Fatalf("%s: objects outside the plan deleted: %v", name, lost)
				}
				named := map[string]bool{}
				for _, e := range p2.Remaining() {
					named[p2.ObjectString(e)] = true
				}
				for o := range now {
					if !f.want[o] && !f.before[o] {
						continue // the tombstone, written with its commit's deletion
					}
					if !f.want[o] && !named[o] {
						t.Fatalf("%s: planned %s still on disk, not in the remaining plan", name, o)
					}
				}
				real, err := prune.NewRepoDeleter(r)
				if err != nil {
					t.Fatal(err)
				}
				if res2, err := p2.Execute(context.Background(), real, live, nil); err != nil || res2.Remaining != 0 {
					t.Fatalf("%s: resumed run: %+v %v", name, res2, err)
				}
				real.Close()
				faultFsck(t, r.Path, name+", resumed")
				sameAsOstree(t, parityObjects(t, r.Path), f.want, name+", resumed")
			}
		}
	}
	t.Logf("%d injected faults", runs)
}

// TestCleanupCancelSyncsBeforeRecording cancels Execute after every
// possible number of deletions (as SIGTERM does through Cleanup): whatever
// the plan then records as done must have been synced.
func TestCleanupCancelSyncsBeforeRecording(t *testing.T) {
	f := newCleanupFixture(t, 12, nil)
	planBytes, _ := f.plan.MarshalBinary()
	sys, err := ostree.LoadSysroot(f.e.s.Path, ostree.LoadOptions{NoBooted: true, RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	deps, _ := prune.PredictDeployments(sys)
	for n := 1; n < f.plan.Len(); n++ {
		dir := harness.CopyTree(t, f.e.s.Repo)
		r, err := ostree.OpenRepo(dir)
		if err != nil {
			t.Fatal(err)
		}
		rec, d := newRecordingDeleter(t, r, "", 0, false)
		p, _ := prune.UnmarshalPlan(planBytes)
		ctx, cancel := context.WithCancel(context.Background())
		_, err = p.Execute(ctx, d, prune.RepoLive{Repo: r, Extra: prune.DeploymentRoots(deps)}, func(done, total int) {
			if done >= n {
				cancel()
			}
		})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancel after %d: %v", n, err)
		}
		rec.durable(t, p, fmt.Sprintf("cancelled after %d", n))
		faultFsck(t, dir, fmt.Sprintf("cancelled after %d", n))
	}
}

// inProcessCleanupConfig runs lifecycle.Cleanup in this process on a copy of the
// fixture's sysroot (not booted: cleanup needs no booted deployment).
func inProcessCleanupConfig(t *testing.T, sysroot string, progress func(done, total int)) lifecycle.Config {
	return lifecycle.Config{Sysroot: sysroot, RunDir: t.TempDir(), Progress: progress,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), LockTimeout: time.Minute}
}

func chattrT(t *testing.T, flag, path string) {
	t.Helper()
	if out, err := exec.Command("chattr", flag, path).CombinedOutput(); err != nil {
		t.Fatalf("chattr %s %s: %v\n%s", flag, path, err, out)
	}
}

// TestCleanupWriteAndDeleteFaults runs the whole Cleanup with real faults
// on the real disk:
//   - stopped (as by SIGTERM) after every N objects while the plan
//     directory is immutable, so writing the remaining plan fails
//     (store.WritePlan): both errors reported, the old plan intact, fsck
//     clean; once writable, a rerun completes;
//   - an immutable objects/XX directory, so unlinking (or writing the
//     tombstone) fails at the first planned object there, for every such
//     directory (STRESS; the first 12 otherwise): the error names the
//     object, the persisted plan names every planned object on disk, fsck
//     clean, and a rerun completes with ostree's object set.
func TestCleanupWriteAndDeleteFaults(t *testing.T) {
	f := newCleanupFixture(t, 12, func(s *harness.Sysroot) {
		s.RepoCmd("config", "set", "core.tombstone-commits", "true")
	})
	copySys := func(t *testing.T) (string, string) {
		sys := harness.CopyTree(t, f.e.s.Path)
		return sys, filepath.Join(sys, "ostree", "repo")
	}
	// The tombstone is an object ostree's cleanup writes too.
	wantSet := f.want
	finish := func(t *testing.T, sys, repo, when string) {
		t.Helper()
		res, err := lifecycle.Cleanup(context.Background(), inProcessCleanupConfig(t, sys, nil))
		if err != nil || res.Remaining != 0 {
			t.Fatalf("%s: rerun: %+v %v", when, res, err)
		}
		faultFsck(t, repo, when+", rerun")
		sameAsOstree(t, parityObjects(t, repo), wantSet, when+", rerun")
	}
	beforeWithTomb := func(now map[string]bool) map[string]bool {
		b := map[string]bool{}
		for o := range f.before {
			b[o] = true
		}
		for o := range now {
			if strings.HasSuffix(o, ".tombstone-commit") {
				b[o] = true
			}
		}
		return b
	}

	for n := 1; n < f.plan.Len(); n++ {
		when := fmt.Sprintf("stopped after %d with the plan directory immutable", n)
		sys, repo := copySys(t)
		orig, err := os.ReadFile(store.PlanPath(sys))
		if err != nil {
			t.Fatal(err)
		}
		planDir := filepath.Dir(store.PlanPath(sys))
		chattrT(t, "+i", planDir)
		ctx, cancel := context.WithCancel(context.Background())
		res, err := lifecycle.Cleanup(ctx, inProcessCleanupConfig(t, sys, func(done, total int) {
			if done >= n {
				cancel()
			}
		}))
		cancel()
		if res.Remaining == 0 {
			// The unlinks in flight when the context ended (up to four run
			// at once) finished the plan: nothing left to persist (removing
			// the plan fails in the immutable directory; the next run
			// finds every object gone).
			chattrT(t, "-i", planDir)
			continue
		}
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "persist plan") {
			t.Fatalf("%s: error %v, want the cancellation and the failed write", when, err)
		}
		if res.Objects == 0 || res.Remaining == 0 {
			t.Errorf("%s: result %+v", when, res)
		}
		if now, _ := os.ReadFile(store.PlanPath(sys)); !bytes.Equal(now, orig) {
			t.Fatalf("%s: the persisted plan changed", when)
		}
		if ents, _ := os.ReadDir(planDir); len(ents) != 1 {
			t.Fatalf("%s: plan directory holds %d entries (a stray temporary?)", when, len(ents))
		}
		faultFsck(t, repo, when)
		now := parityObjects(t, repo)
		checkCleanupSafe(t, sys, repo, f.plan, beforeWithTomb(now), f.want, when)
		chattrT(t, "-i", planDir)
		finish(t, sys, repo, when)
	}

	var dirs []string
	seen := map[string]bool{}
	for _, e := range deletionOrder(f.plan) {
		xx := f.plan.ObjectString(e)[:2]
		if !seen[xx] {
			seen[xx] = true
			dirs = append(dirs, xx)
		}
	}
	if !stressOn() && len(dirs) > 12 {
		dirs = dirs[:12]
	}
	for _, xx := range dirs {
		when := "objects/" + xx + " immutable"
		sys, repo := copySys(t)
		chattrT(t, "+i", filepath.Join(repo, "objects", xx))
		res, err := lifecycle.Cleanup(context.Background(), inProcessCleanupConfig(t, sys, nil))
		if !errors.Is(err, syscall.EPERM) || !strings.Contains(err.Error(), "/objects/"+xx+"/") {
			t.Fatalf("%s: error %v, want EPERM naming the object", when, err)
		}
		if res.Remaining == 0 {
			t.Errorf("%s: result %+v", when, res)
		}
		faultFsck(t, repo, when)
		now := parityObjects(t, repo)
		checkCleanupSafe(t, sys, repo, f.plan, beforeWithTomb(now), f.want, when)
		chattrT(t, "-i", filepath.Join(repo, "objects", xx))
		finish(t, sys, repo, when)
	}
	t.Logf("%d write faults, %d delete faults", f.plan.Len()-1, len(dirs))
}

// TestCleanupConcurrentWriter races `cleanup` with `ostree commit` of a
// tree sharing the dropped rollback's files and with `ostree pull-local`
// of the rollback commit under a new ref (from an identical copy), at
// random offsets in both orders, 20 trials (STRESS: 100). After each: fsck
// clean, the new ref checks out, cleanup succeeded and left nothing
// unreachable behind (ostree's own admin cleanup then deletes nothing), and
// it kept exactly what the new ref reaches.
func TestCleanupConcurrentWriter(t *testing.T) {
	trials := 20
	if stressOn() {
		trials = 100
	}
	f := newCleanupFixture(t, 600, nil)
	rng := rand.New(rand.NewPCG(faultSeed(t), 9))
	src := f.e.s.Copy(t) // pull-local source: still has the rollback commit
	rollback := ""
	for _, e := range f.plan.Entries() {
		if e.Type == ostree.ObjCommit {
			rollback = e.Checksum.String()
		}
	}
	src.CreateRef("rollback", rollback)
	shared := f.treeA.Clone()
	shared, _ = shared.Churn(0.3, 5)
	sharedDir := t.TempDir()
	if err := shared.Write(sharedDir); err != nil {
		t.Fatal(err)
	}
	var keptTotal, writerFirst, cleanupFirst int
	var cleanupTime time.Duration
	// The offsets span what one writer and one cleanup take here
	// (measured once on a copy), so that both orders come up: even trials
	// start the writer first, by up to twice its time, odd trials start
	// cleanup first, by up to twice its time.
	writerTime, cleanupTime1 := calibrateRace(t, f, src.Repo, sharedDir)
	t.Logf("a writer takes %s, a cleanup %s", writerTime, cleanupTime1)
	for trial := 0; trial < trials; trial++ {
		sys := f.e.s.Copy(t)
		ref := fmt.Sprintf("race/%d", trial)
		var writer []string
		kind := "commit"
		if rng.IntN(2) == 0 {
			kind = "pull-local"
			writer = []string{"pull-local", "--disable-verify-bindings", "--repo=" + sys.Repo, src.Repo, "rollback"}
			ref = "rollback"
		} else {
			writer = []string{"commit", "--repo=" + sys.Repo, "--branch=" + ref, "--tree=dir=" + sharedDir, "--timestamp=" + parityTime}
		}
		// The writer starts somewhere between twice its own time before
		// and twice a cleanup's time after cleanup (both orders, and
		// overlaps).
		offset := time.Duration(rng.Int64N(int64(2*writerTime+50*time.Millisecond))) * -1
		if trial%2 == 1 {
			offset = time.Duration(rng.Int64N(int64(2*cleanupTime1 + 50*time.Millisecond)))
		}
		var wg sync.WaitGroup
		var wout, werr string
		var wErr error
		startWriter := func() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				wout, werr, wErr = harness.RunOstree(context.Background(), writer...)
			}()
		}
		if offset < 0 {
			startWriter()
			time.Sleep(-offset) // a random offset between the two, by design
		}
		began := time.Now()
		r := startCleanupProc(t, f.bin, sys.Path, t.TempDir())
		if offset >= 0 {
			time.Sleep(offset) // a random offset, by design
			startWriter()
		}
		err := <-r.done
		cleanupTime += time.Since(began)
		wg.Wait()
		name := fmt.Sprintf("trial %d (%s at %s)", trial, kind, offset)
		if err != nil {
			t.Fatalf("%s: cleanup: %v\n%s", name, err, r.err.String())
		}
		if wErr != nil {
			t.Fatalf("%s: ostree %s: %v\n%s\n%s", name, kind, wErr, wout, werr)
		}
		var cr lifecycle.CleanupResult
		if err := json.Unmarshal(r.out.Bytes(), &cr); err != nil {
			t.Fatalf("%s: cleanup --json: %v\n%s", name, err, r.out.String())
		}
		if cr.Remaining != 0 || cr.Objects+cr.KeptLive != f.plan.Len() {
			t.Fatalf("%s: cleanup result %+v for a plan of %d", name, cr, f.plan.Len())
		}
		if cr.KeptLive > 0 {
			writerFirst++
			keptTotal += cr.KeptLive
		} else {
			cleanupFirst++
		}
		faultFsck(t, sys.Repo, name)
		co := filepath.Join(t.TempDir(), "co")
		if out, errOut, err := harness.RunOstree(context.Background(), "checkout", "--repo="+sys.Repo, ref, co); err != nil {
			t.Fatalf("%s: ostree checkout %s: %v\n%s\n%s", name, ref, err, out, errOut)
		}
		if kind == "commit" {
			m1, err1 := harness.TreeManifest(co, harness.ManifestOptions{})
			m2, err2 := harness.TreeManifest(sharedDir, harness.ManifestOptions{})
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			if d := m1.Diff(m2); d != nil {
				t.Fatalf("%s: checkout differs from the committed tree: %v", name, firstFew(d))
			}
		}
		harness.ClearImmutable(co)
		// Nothing unreachable left behind: ostree's own cleanup finds
		// nothing more to delete.
		objs := parityObjects(t, sys.Repo)
		sys.Admin("cleanup")
		if more := setMinus(objs, parityObjects(t, sys.Repo)); len(more) > 0 {
			t.Fatalf("%s: ostree admin cleanup still deleted %d objects after ours, e.g. %v", name, len(more), firstFew(more))
		}
	}
	t.Logf("%d trials: %d where the writer's new root came first (%d objects kept live in all), %d where cleanup came first; cleanup %.1f ms per run",
		trials, writerFirst, keptTotal, cleanupFirst, float64(cleanupTime.Microseconds())/1000/float64(trials))
	// A race test that never hit one of its windows tested nothing there.
	if writerFirst == 0 || cleanupFirst == 0 {
		t.Fatalf("the trials never hit one of the orders: writer first %d times, cleanup first %d times", writerFirst, cleanupFirst)
	}
}

// calibrateRace times one writer (a pull-local, the slower kind) and one
// cleanup, each alone on a copy of the fixture.
func calibrateRace(t *testing.T, f *cleanupFixture, srcRepo, sharedDir string) (writer, cleanup time.Duration) {
	t.Helper()
	sys := f.e.s.Copy(t)
	start := time.Now()
	if out, errOut, err := harness.RunOstree(context.Background(), "pull-local", "--disable-verify-bindings", "--repo="+sys.Repo, srcRepo, "rollback"); err != nil {
		t.Fatalf("calibration: pull-local: %v\n%s\n%s", err, out, errOut)
	}
	writer = time.Since(start)
	sys = f.e.s.Copy(t)
	start = time.Now()
	if out, errOut, err := harness.RunOstree(context.Background(), "commit", "--repo="+sys.Repo, "--branch=calibration", "--tree=dir="+sharedDir, "--timestamp="+parityTime); err != nil {
		t.Fatalf("calibration: commit: %v\n%s\n%s", err, out, errOut)
	}
	writer = max(writer, time.Since(start))
	sys = f.e.s.Copy(t)
	start = time.Now()
	r := startCleanupProc(t, f.bin, sys.Path, t.TempDir())
	if err := <-r.done; err != nil {
		t.Fatalf("calibration: cleanup: %v\n%s", err, r.err.String())
	}
	return writer, time.Since(start)
}

// TestFinalizeFailureNothingDeleted: the real finalize-staged fails (the
// sysroot's /boot immutable); finalize --post must refuse (the deployment
// list is not the predicted one), persist nothing, delete nothing, and
// status --json must say why. --post run while the deployment is still
// staged refuses too.
func TestFinalizeFailureNothingDeleted(t *testing.T) {
	harness.ForEachOracle(t, testFinalizeFailureNothingDeleted)
}

func testFinalizeFailureNothingDeleted(t *testing.T) {
	e := newParityEnv(t)
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 81}))
	e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 82}))
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	b := e.boot(d)
	// A new kernel, so that finalization must write /boot (with the same
	// kernel and kargs ostree only swaps the deployment links).
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 83, Kernel: "harness kernel, new build\n"}))
	b.Stage("testos/main")
	b.MustRun("ostree-prefinalize", "stage")
	before := parityObjects(t, e.s.Repo)

	// Still staged: --post before ostree's finalization refuses.
	early := b.Copy(t)
	out, errOut, err := early.Run(e.ctx, "ostree-prefinalize", "finalize", "--post")
	if _, rerr := store.ReadPlan(early.Sysroot.Path); !errors.Is(rerr, store.ErrNotExist) {
		t.Fatalf("--post with the deployment still staged persisted a plan (%v): %s %s", rerr, out, errOut)
	}
	if st := statusOf(t, early); st.Prune.State != "invalid" || !strings.Contains(st.Prune.Reason, "still staged") {
		t.Fatalf("status after --post with the deployment still staged: %+v", st.Prune)
	}
	t.Logf("--post while still staged: err=%v, %q", err, strings.TrimSpace(out))

	boot := filepath.Join(e.s.Path, "boot")
	chattrT(t, "+i", boot)
	t.Cleanup(func() { exec.Command("chattr", "-i", boot).Run() })
	res, err := b.FinalizeStaged(e.ctx)
	if err == nil {
		t.Fatalf("finalize-staged succeeded with an immutable /boot:\n%s", res.Stdout)
	}
	chattrT(t, "-i", boot)
	t.Logf("real finalize-staged failed as intended: %s", strings.TrimSpace(res.Stderr))

	out, errOut, err = b.Run(e.ctx, "ostree-prefinalize", "finalize", "--post")
	var ce *harness.CmdError
	if !errors.As(err, &ce) || ce.ExitCode() != 1 {
		t.Fatalf("finalize --post after a failed finalization: %v (want exit 1)\n%s", err, out)
	}
	if el := cmdErrorLines(errOut); len(el) != 1 || !strings.Contains(el[0], "deployment list differs") {
		t.Errorf("finalize --post error is not one clear line: %q", errOut)
	}
	if _, err := store.ReadPlan(e.s.Path); !errors.Is(err, store.ErrNotExist) {
		t.Fatalf("a plan was persisted after a failed finalization: %v", err)
	}
	st := statusOf(t, b)
	if st.Prune.State != "invalid" || !strings.Contains(st.Prune.Reason, "predicted") || st.Cleanup.Pending {
		t.Fatalf("status after the refusal: prune %+v cleanup %+v", st.Prune, st.Cleanup)
	}
	t.Logf("status says: %s", st.Prune.Reason)
	if out := b.MustRun("ostree-prefinalize", "cleanup", "--foreground"); !strings.Contains(out, "Nothing pending") {
		t.Fatalf("cleanup: %s", out)
	}
	unchangedObjects(t, parityObjects(t, e.s.Repo), before, "after a failed finalization")
	b.MustRun("ostree", "fsck")
}

// cmdErrorLines are the lines the command prints for its error ("ostree-prefinalize:
// ..."); the log records on stderr are key=value lines of their own.
func cmdErrorLines(stderr string) []string {
	var out []string
	for _, l := range lines(stderr) {
		if strings.HasPrefix(l, "ostree-prefinalize: ") {
			out = append(out, l)
		}
	}
	return out
}

func unchangedObjects(t *testing.T, got, want map[string]bool, what string) {
	t.Helper()
	if d1, d2 := setMinus(got, want), setMinus(want, got); len(d1)+len(d2) > 0 {
		t.Fatalf("%s: objects changed: added %v, deleted %v", what, firstFew(d1), firstFew(d2))
	}
}

// TestLockedFinalizationNothingDeleted: a staged deployment whose
// finalization is locked (`ostree admin deploy --stage
// --lock-finalization`, and the staged-deployment-locked file written by
// hand) stays staged at shutdown. Our stage predicts that nothing changes
// (the plan is what ostree's cleanup would delete with the current
// deployments), real finalize-staged does nothing, --post persists nothing,
// nothing is deleted, and the next boot has nothing pending.
func TestLockedFinalizationNothingDeleted(t *testing.T) {
	harness.ForEachOracle(t, testLockedFinalizationNothingDeleted)
}

func testLockedFinalizationNothingDeleted(t *testing.T) {
	for _, how := range []string{"--lock-finalization", "locked file"} {
		t.Run(strings.TrimPrefix(how, "--"), func(t *testing.T) {
			e := newParityEnv(t)
			e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 91}))
			e.s.Deploy("testos", "testos/main", "root=LABEL=x")
			e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 92}))
			d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
			b := e.boot(d)
			e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 93}))
			if how == "locked file" {
				b.Stage("testos/main")
				if err := os.WriteFile(filepath.Join(b.RunDir, "ostree", "staged-deployment-locked"), nil, 0o640); err != nil {
					t.Fatal(err)
				}
			} else {
				b.Stage("testos/main", "--lock-finalization")
			}
			before := parityObjects(t, e.s.Repo)
			deps := deployedNames(b.Deployments())

			var sr lifecycle.StageResult
			if err := json.Unmarshal([]byte(b.MustRun("ostree-prefinalize", "stage", "--json")), &sr); err != nil {
				t.Fatal(err)
			}
			if !sr.Locked || sr.Prune.State != "planned" {
				t.Fatalf("stage of a locked deployment: %+v", sr)
			}
			// Nothing changes at shutdown: the prediction is today's list.
			var now []string
			for _, d := range deps {
				if !strings.Contains(d, "staged") {
					now = append(now, d)
				}
			}
			if st := statusOf(t, b); st.Staged == nil || !st.Staged.Locked {
				t.Fatalf("status does not show the lock: %+v", st.Staged)
			}
			// What ostree's cleanup would delete with the current
			// deployments: on a copy, unlocked state removed, admin cleanup.
			oracle := b.Copy(t)
			os.Remove(oracle.StagedPath())
			oracle.Sysroot.Admin("cleanup")
			if got, want := sr.Prune.Objects, int64(len(before)-len(parityObjects(t, oracle.Sysroot.Repo))); got != want {
				t.Errorf("locked: plan of %d objects, ostree's cleanup with the current deployments deletes %d", got, want)
			}
			res, err := b.FinalizeStaged(e.ctx)
			if err != nil {
				t.Fatalf("finalize-staged: %v", err)
			}
			if _, err := os.Stat(b.StagedPath()); err != nil {
				t.Fatalf("ostree finalized a locked deployment: %v\n%s", err, res.Stdout)
			}
			out, errOut, err := b.Run(e.ctx, "ostree-prefinalize", "finalize", "--post")
			t.Logf("--post on a locked deployment: err=%v %q %q", err, strings.TrimSpace(out), strings.TrimSpace(errOut))
			if _, err := store.ReadPlan(e.s.Path); !errors.Is(err, store.ErrNotExist) {
				t.Fatalf("--post persisted a plan for a locked finalization: %v", err)
			}
			if st := statusOf(t, b); st.Prune.Reason == "" {
				t.Errorf("status gives no reason: %+v", st.Prune)
			}
			nb := e.s.NextBoot(t, e.opts)
			if out := nb.MustRun("ostree-prefinalize", "cleanup", "--foreground"); !strings.Contains(out, "Nothing pending") {
				t.Fatalf("next boot cleanup: %s", out)
			}
			unchangedObjects(t, parityObjects(t, e.s.Repo), before, "after a locked finalization")
			nb.MustRun("ostree", "fsck")
			_ = now
		})
	}
}

// TestReadOnlySysroot: /sysroot mounted read-only in the booted namespace,
// as Fedora CoreOS mounts it. With CAP_SYS_ADMIN, `finalize --post` and the
// next boot's `cleanup` do what ostree does (a private mount namespace, a
// read-write remount there) and end with ostree's object set; without it
// they fail with one clear line, write nothing and delete nothing.
func TestReadOnlySysroot(t *testing.T) {
	e := newParityEnv(t)
	usr := harness.Shape{Files: 40, Dirs: 4, Depth: 2, MinSize: 8, MaxSize: 64}
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 61, Usr: &usr}))
	e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 62}))
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	b := e.boot(d)
	e.commit("testos/main", harness.NewTree(harness.TreeOptions{Seed: 63}))
	b.Stage("testos/main")
	b.MustRun("ostree-prefinalize", "stage")
	if _, err := b.FinalizeStaged(e.ctx); err != nil {
		t.Fatal(err)
	}
	oracle := b.Sysroot.Copy(t)
	oracle.Admin("cleanup")
	want := parityObjects(t, oracle.Repo)
	before := parityObjects(t, e.s.Repo)
	noCap := b.Copy(t) // for the failing variant

	roOpts := func(keep bool) harness.BootOptions {
		o := e.opts
		o.Binds = append(slices.Clone(o.Binds), harness.Bind{Src: e.s.Path, Dst: "/sysroot", ReadOnly: true})
		o.KeepSysAdmin = keep
		return o
	}
	// Without CAP_SYS_ADMIN: a clear failure, nothing written.
	{
		o := roOpts(false)
		o.Binds[len(o.Binds)-1].Src = noCap.Sysroot.Path
		o.RunDir = noCap.RunDir
		h := noCap.Sysroot.Boot(t, noCap.Deployment, o)
		if out := h.MustShell("touch /sysroot/x 2>&1 || true"); !strings.Contains(out, "Read-only") {
			t.Fatalf("/sysroot is not read-only in the namespace: %q", out)
		}
		out, errOut, err := h.Run(e.ctx, "ostree-prefinalize", "finalize", "--post")
		var ce *harness.CmdError
		if !errors.As(err, &ce) || ce.ExitCode() != 1 {
			t.Fatalf("--post on a read-only sysroot without CAP_SYS_ADMIN: %v\n%s", err, out)
		}
		if el := cmdErrorLines(errOut); len(el) != 1 || !strings.Contains(el[0], "read-only") {
			t.Errorf("not one clear line: %q", errOut)
		}
		if ents, err := os.ReadDir(filepath.Join(noCap.Sysroot.Path, "ostree", "prefinalize")); err == nil && len(ents) > 0 {
			t.Fatalf("something was written: %v", ents)
		}
		t.Logf("without CAP_SYS_ADMIN: %s", cmdErrorLines(errOut))
		if st := statusOf(t, h); !strings.Contains(st.Prune.Reason, "read-only") {
			t.Errorf("status does not say why: %+v", st.Prune)
		}
	}

	h := e.s.Boot(t, b.Deployment, func() harness.BootOptions { o := roOpts(true); o.RunDir = b.RunDir; return o }())
	if out := h.MustRun("ostree-prefinalize", "finalize", "--post"); !strings.Contains(out, "Plan persisted") {
		t.Fatalf("--post on a read-only sysroot: %s", out)
	}
	if _, err := store.ReadPlan(e.s.Path); err != nil {
		t.Fatal(err)
	}

	// Next boot, /sysroot read-only again. First without the capability:
	// one clear line, nothing deleted, the plan intact.
	for _, keep := range []bool{false, true} {
		o := roOpts(keep)
		nb := e.s.NextBoot(t, o)
		out, errOut, err := nb.Run(e.ctx, "ostree-prefinalize", "cleanup", "--foreground", "--json")
		if !keep {
			var ce *harness.CmdError
			if el := cmdErrorLines(errOut); !errors.As(err, &ce) || ce.ExitCode() != 1 || len(el) != 1 || !strings.Contains(el[0], "read-only") {
				t.Fatalf("cleanup on a read-only sysroot without CAP_SYS_ADMIN: %v\n%q", err, errOut)
			}
			unchangedObjects(t, parityObjects(t, e.s.Repo), before, "after a refused cleanup")
			if _, err := store.ReadPlan(e.s.Path); err != nil {
				t.Fatalf("plan lost: %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("cleanup on a read-only sysroot: %v\n%s\n%s", err, out, errOut)
		}
		if out := nb.MustShell("touch /sysroot/x 2>&1 || true"); !strings.Contains(out, "Read-only") {
			t.Fatalf("the remount leaked out of the cleanup process: %q", out)
		}
	}
	faultFsck(t, e.s.Repo, "after cleanup on a read-only sysroot")
	sameAsOstree(t, parityObjects(t, e.s.Repo), want, "cleanup on a read-only sysroot")
	if _, err := store.ReadPlan(e.s.Path); !errors.Is(err, store.ErrNotExist) {
		t.Fatalf("plan still there: %v", err)
	}
}
