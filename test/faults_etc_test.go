package test

// Longer than 500 lines on purpose: the /etc fault tests share one fixture
// (faultEtcEnv) and its ostree oracle.

// Faults on the /etc side (issue 7): SIGKILL at random points of `stage`,
// of a watcher batch and of `finalize --pre`, and an injected I/O error at
// every position of every write path (the function-field etcmerge.FS) of
// Stage, Refresh and Pre. After each fault the staged etc may hold only
// whole files (each regular file byte for byte a new default or a version
// the booted etc had), and the next `finalize --pre` either seals the exact
// merge or restores ostree's own state, so that the real `ostree admin
// finalize-staged` gives exactly the /etc that ostree alone gives on an
// identical copy of the machine.
//
// OSTREE_PREFINALIZE_STRESS=1 (make stress) kills at more points and runs
// the real finalization after every injected error instead of a sample.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/etcmerge"
	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// faultEtcEnv is a booted machine with local /etc changes, an update
// staged by the real ostree, and nothing of ours run yet. Every trial
// forks it.
type faultEtcEnv struct {
	*parityEnv
	b      *harness.BootedHost
	staged harness.Deployment
}

// faultEdit changes an etc deterministically (the same on every copy):
// rev picks which files, so two revisions touch overlapping sets.
func faultEdit(t *testing.T, etc string, rev int) {
	t.Helper()
	var files []string
	filepath.WalkDir(etc, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && strings.HasSuffix(p, ".conf") {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	for i, p := range files {
		switch (i + rev) % 7 {
		case 0:
			f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(f, "edited rev %d: %s\n", rev, strings.Repeat("x", 100*(i%13)))
			f.Close()
		case 3:
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		case 5:
			if err := os.Chmod(p, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 20; i++ {
		d := filepath.Join(etc, fmt.Sprintf("added-%d.d", rev), fmt.Sprintf("sub%d", i%4))
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d.conf", i)), []byte(strings.Repeat(fmt.Sprintf("rev %d line %d\n", rev, i), 50)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func newFaultEtcEnv(t *testing.T, shape harness.Shape, configure func(o *harness.BootOptions)) *faultEtcEnv {
	t.Helper()
	e := newParityEnv(t)
	if configure != nil {
		configure(&e.opts)
	}
	tr := harness.NewTree(harness.TreeOptions{Seed: 77, Etc: &shape})
	e.commit("testos/main", tr)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	f := &faultEtcEnv{parityEnv: e, b: e.boot(d)}
	faultEdit(t, f.b.EtcDir(), 1)
	tr2, _ := tr.Churn(0.2, 78)
	e.commit("testos/main", tr2)
	f.staged = f.b.Stage("testos/main")
	return f
}

// oracle forks the machine, applies after to the fork's booted etc, lets
// ostree alone finalize, and returns the new etc (no mtimes: edits on two
// copies happen at different times, and a fallback rewrites defaults).
func (f *faultEtcEnv) oracle(t *testing.T, after func(etc string)) harness.Manifest {
	t.Helper()
	c := f.b.Copy(t)
	if after != nil {
		after(c.EtcDir())
	}
	res, err := c.FinalizeStaged(f.ctx)
	if err != nil || !res.Merged {
		t.Fatalf("ostree-only finalize-staged: merged %v, %v\n%s", res.Merged, err, res.Stderr)
	}
	return newEtcOf(t, c, f.staged)
}

func newEtcOf(t *testing.T, h *harness.BootedHost, d harness.Deployment) harness.Manifest {
	t.Helper()
	m, err := harness.TreeManifest(filepath.Join(h.Sysroot.DeploymentDir(d.OS, d.Checksum, d.Serial), "etc"), harness.ManifestOptions{Xattrs: true})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// contents records, per path relative to an etc, the SHA-256 of every
// version of a regular file that the staged etc may hold.
type contents map[string]map[[32]byte]bool

func (c contents) add(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil // unreadable on purpose somewhere else: not ours to judge
		}
		rel, _ := filepath.Rel(root, p)
		if c[rel] == nil {
			c[rel] = map[[32]byte]bool{}
		}
		c[rel][sha256.Sum256(b)] = true
		return nil
	})
}

// checkWhole requires every regular file of the staged etc to be one of
// the allowed versions byte for byte, and returns the temporary files of
// unfinished writes it found (allowed only until the next finalize --pre).
func checkWhole(t *testing.T, staged string, allowed contents, when string) []string {
	t.Helper()
	var tmps []string
	filepath.WalkDir(staged, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatalf("%s: walking the staged etc: %v", when, err)
		}
		rel, _ := filepath.Rel(staged, p)
		if strings.HasPrefix(d.Name(), ".prefinalize-tmp-") {
			tmps = append(tmps, rel)
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if !allowed[rel][sha256.Sum256(b)] {
			t.Fatalf("%s: staged etc/%s (%d bytes) is neither a new default nor a version of the booted etc: a partial write", when, rel, len(b))
		}
		return nil
	})
	return tmps
}

// finishAndCompare runs our finalize --pre (which must succeed), the real
// finalize-staged, and compares the new etc with want; no temporary file
// of ours may reach it.
func (f *faultEtcEnv) finishAndCompare(t *testing.T, c *harness.BootedHost, want harness.Manifest, when string) lifecycle.Status {
	t.Helper()
	if _, stderr, err := c.Run(f.ctx, "ostree-prefinalize", "finalize", "--pre"); err != nil {
		t.Fatalf("%s: finalize --pre after the fault: %v\n%s", when, err, stderr)
	}
	st := statusOf(t, c)
	if tmps := stagedTmps(filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc")); len(tmps) > 0 {
		t.Fatalf("%s: temporary files left in the staged etc after finalize --pre: %v", when, tmps)
	}
	res, err := c.FinalizeStaged(f.ctx)
	if err != nil {
		t.Fatalf("%s: finalize-staged: %v\n%s", when, err, res.Stderr)
	}
	if res.Merged == st.Etc.Takeover {
		t.Fatalf("%s: ostree merged %v with takeover %v (%+v)", when, res.Merged, st.Etc.Takeover, st.Etc)
	}
	if d := newEtcOf(t, c, f.staged).Diff(want); d != nil {
		if len(d) > 20 {
			d = d[:20]
		}
		t.Fatalf("%s: the new /etc differs from ostree's alone (status %+v):\n%s", when, st.Etc, strings.Join(d, "\n"))
	}
	return st
}

func killPoints() int {
	if stressOn() {
		return 60
	}
	return 20
}

// killAt starts argv in c, SIGKILLs it after delay (or finds it already
// done) and reports whether the kill landed.
func killAt(t *testing.T, c *harness.BootedHost, delay time.Duration, argv ...string) bool {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := c.Start(ctx, argv...)
	if err != nil {
		t.Fatal(err)
	}
	// The delay is the randomly chosen kill point, not synchronisation.
	select {
	case <-p.Done():
	case <-time.After(delay):
	}
	landed := p.Signal(syscall.SIGKILL) == nil
	_, stderr, err := p.Wait()
	if landed {
		var ce *harness.CmdError
		if err == nil || !errors.As(err, &ce) {
			landed = false // finished between the check and the signal
		}
	} else if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, stderr)
	}
	return landed
}

// timed runs argv once on a fork to learn how long it takes.
func timed(t *testing.T, c *harness.BootedHost, argv ...string) time.Duration {
	t.Helper()
	start := time.Now()
	c.MustRun(argv...)
	return time.Since(start)
}

var faultShape = harness.Shape{Files: 1500, Dirs: 120, Depth: 3, MinSize: 200, MaxSize: 6000, Symlinks: 40}

// SIGKILL during `stage`: the first precomputation of a sizeable /etc with
// many changes.
func TestFaultsEtcKillStage(t *testing.T) { harness.ForEachOracle(t, testFaultsEtcKillStage) }

func testFaultsEtcKillStage(t *testing.T) {
	f := newFaultEtcEnv(t, faultShape, nil)
	seed := faultSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	want := f.oracle(t, nil)
	allowed := contents{}
	allowed.add(t, f.staged.UsrEtcDir())
	allowed.add(t, f.b.EtcDir())
	dur := timed(t, f.b.Copy(t), "ostree-prefinalize", "stage")
	t.Logf("a whole stage takes %s", dur)
	landed, tmpsSeen := 0, 0
	for i := 0; i < killPoints()/2; i++ {
		c := f.b.Copy(t)
		when := fmt.Sprintf("kill %d", i)
		// Twice on the same machine: a stage killed after an earlier
		// killed stage resumes from a half-written etc.
		for k := 0; k < 2; k++ {
			if killAt(t, c, time.Duration(rng.Int64N(int64(dur)*5/4)), "ostree-prefinalize", "stage") {
				landed++
			}
			tmps := checkWhole(t, filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc"), allowed, when)
			tmpsSeen += len(tmps)
		}
		st := f.finishAndCompare(t, c, want, when)
		t.Logf("%s: sealed as %s (takeover %v): %s", when, st.Etc.State, st.Etc.Takeover, st.Etc.Reason)
	}
	t.Logf("%d kills landed mid-stage of %d; %d temporary files seen after kills, none left after finalize --pre", landed, killPoints(), tmpsSeen)
}

// SIGKILL during `finalize --pre`, with many edits made after staging for
// it to apply.
func TestFaultsEtcKillPre(t *testing.T) { harness.ForEachOracle(t, testFaultsEtcKillPre) }

func testFaultsEtcKillPre(t *testing.T) {
	f := newFaultEtcEnv(t, faultShape, nil)
	seed := faultSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	after := func(etc string) { faultEdit(t, etc, 2) }
	want := f.oracle(t, after)
	tmpl := f.b.Copy(t)
	tmpl.MustRun("ostree-prefinalize", "stage")
	allowed := contents{}
	allowed.add(t, f.staged.UsrEtcDir())
	allowed.add(t, tmpl.EtcDir())
	after(tmpl.EtcDir())
	allowed.add(t, tmpl.EtcDir())
	dur := timed(t, tmpl.Copy(t), "ostree-prefinalize", "finalize", "--pre")
	t.Logf("a whole finalize --pre takes %s", dur)
	landed := 0
	for i := 0; i < killPoints()/2; i++ {
		c := tmpl.Copy(t)
		when := fmt.Sprintf("kill %d", i)
		// Twice: a --pre killed after an earlier killed --pre.
		for k := 0; k < 2; k++ {
			if killAt(t, c, time.Duration(rng.Int64N(int64(dur)*5/4)), "ostree-prefinalize", "finalize", "--pre") {
				landed++
			}
			checkWhole(t, filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc"), allowed, when)
		}
		st := f.finishAndCompare(t, c, want, when)
		t.Logf("%s: %s (takeover %v): %s", when, st.Etc.State, st.Etc.Takeover, st.Etc.Reason)
	}
	t.Logf("%d of %d kills landed mid-pre", landed, killPoints())
}

// SIGKILL of the watcher while it applies a batch of many edits.
func TestFaultsEtcKillWatcherBatch(t *testing.T) {
	n := newNotifyListener(t)
	f := newFaultEtcEnv(t, faultShape, func(o *harness.BootOptions) {
		o.Binds = append(o.Binds, harness.Bind{Src: n.dir, Dst: notifyDst})
		o.Env = append(o.Env, "NOTIFY_SOCKET="+notifyDst+"/sock")
	})
	seed := faultSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	after := func(etc string) { faultEdit(t, etc, 3) }
	want := f.oracle(t, after)
	tmpl := f.b.Copy(t)
	tmpl.MustRun("ostree-prefinalize", "stage")
	allowed := contents{}
	allowed.add(t, f.staged.UsrEtcDir())
	allowed.add(t, tmpl.EtcDir())
	landed, midBatch := 0, 0
	for i := 0; i < killPoints(); i++ {
		c := tmpl.Copy(t)
		when := fmt.Sprintf("kill %d", i)
		ctx, cancel := context.WithCancel(context.Background())
		mark := n.mark()
		p, err := c.Start(ctx, "ostree-prefinalize", "watch")
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		pollUntil(t, "READY=1 from the watcher", 60*time.Second, func() (bool, string) {
			for _, m := range n.since(mark) {
				if m == "READY=1" {
					return true, ""
				}
			}
			return false, "waiting"
		})
		edited := n.mark()
		after(c.EtcDir())
		if i == 0 {
			allowed.add(t, c.EtcDir())
		}
		staged := filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc")
		// Mid-batch: a write in flight, or the store's mark that a batch
		// is applying (set before its first write, cleared with the new
		// baseline).
		inBatch := func() bool {
			applying := false
			store.ViewRuntime(c.RunDir, func(tx *store.RuntimeTx) error {
				applying = tx.Blob("applying") != nil
				return nil
			})
			return applying || len(stagedTmps(staged)) > 0
		}
		if i%2 == 0 {
			// Past the 250ms debounce, somewhere in the batch or after.
			time.Sleep(150*time.Millisecond + time.Duration(rng.Int64N(int64(600*time.Millisecond))))
		} else {
			// Aimed at the window: as soon as the batch is seen applying
			// (or, missed, once the watcher says its merge is current
			// again).
			deadline := time.Now().Add(60 * time.Second)
			for !inBatch() && !current(n, edited) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond) // polling interval
			}
		}
		if inBatch() {
			midBatch++
		}
		if err := p.Signal(syscall.SIGKILL); err == nil {
			landed++
		}
		p.Wait()
		cancel()
		checkWhole(t, staged, allowed, when)
		f.finishAndCompare(t, c, want, when)
	}
	t.Logf("%d kills of the watcher, %d of them while a batch was applying", landed, midBatch)
	// A race test that never hit its window tested nothing there.
	if midBatch == 0 {
		t.Fatalf("no kill of %d landed while a batch was applying", landed)
	}
}

// current reports whether the watcher said its merge is current since mark.
func current(n *notifyListener, mark int) bool {
	for _, m := range n.since(mark) {
		if strings.HasPrefix(m, "STATUS=merge current") {
			return true
		}
	}
	return false
}

// countingFS wraps every FS field: calls are counted per field, and call
// number failAt of field failField fails with errInjectedIO instead of
// running.
type countingFS struct {
	counts    map[string]int
	failField string
	failAt    int
	failed    bool
}

var fsFields = []string{"WriteFileAtomic", "SymlinkAtomic", "Mkdir", "SetDirAttr", "Remove", "RemoveAll", "Fsync", "Syncfs"}

func (c *countingFS) hit(field string) error {
	c.counts[field]++
	if field == c.failField && c.counts[field] == c.failAt {
		c.failed = true
		return fmt.Errorf("%s call %d: %w", field, c.failAt, errInjectedIO)
	}
	return nil
}

func (c *countingFS) fs() etcmerge.FS {
	r := etcmerge.RealFS()
	return etcmerge.FS{
		WriteFileAtomic: func(dir *os.File, name string, src io.Reader, a etcmerge.Attr) error {
			if err := c.hit("WriteFileAtomic"); err != nil {
				return err
			}
			return r.WriteFileAtomic(dir, name, src, a)
		},
		SymlinkAtomic: func(dir *os.File, name, target string, a etcmerge.Attr) error {
			if err := c.hit("SymlinkAtomic"); err != nil {
				return err
			}
			return r.SymlinkAtomic(dir, name, target, a)
		},
		Mkdir: func(dir *os.File, name string, mode uint32) error {
			if err := c.hit("Mkdir"); err != nil {
				return err
			}
			return r.Mkdir(dir, name, mode)
		},
		SetDirAttr: func(d *os.File, a etcmerge.Attr) error {
			if err := c.hit("SetDirAttr"); err != nil {
				return err
			}
			return r.SetDirAttr(d, a)
		},
		Remove: func(dir *os.File, name string) error {
			if err := c.hit("Remove"); err != nil {
				return err
			}
			return r.Remove(dir, name)
		},
		RemoveAll: func(dir *os.File, name string) error {
			if err := c.hit("RemoveAll"); err != nil {
				return err
			}
			return r.RemoveAll(dir, name)
		},
		Fsync: func(f *os.File) error {
			if err := c.hit("Fsync"); err != nil {
				return err
			}
			return r.Fsync(f)
		},
		Syncfs: func(f *os.File) error {
			if err := c.hit("Syncfs"); err != nil {
				return err
			}
			return r.Syncfs(f)
		},
	}
}

// inProcess is the lifecycle configuration for a booted fork run from
// outside its namespace: the fork's deployment directory stands for "/".
func inProcess(t *testing.T, c *harness.BootedHost, fsys etcmerge.FS) lifecycle.Config {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(c.Deployment.Dir, &st); err != nil {
		t.Fatal(err)
	}
	return lifecycle.Config{Sysroot: c.Sysroot.Path, RunDir: c.RunDir, FS: fsys,
		BootedDevIno: &[2]uint64{st.Dev, st.Ino},
		Log:          slog.New(slog.NewTextHandler(io.Discard, nil)), LockTimeout: 10 * time.Second}
}

// Injected I/O errors: for each step and each FS field, the Nth call fails
// for every N the step makes. The step must fall back (status says so,
// ostree's staged state restored byte for byte, the staged etc reset to
// the new defaults) or, for a watcher batch, report the error and leave
// the seal to finish exactly; the real finalize-staged then gives ostree's
// result.
func TestFaultsEtcInjectedIO(t *testing.T) {
	shape := harness.Shape{Files: 40, Dirs: 6, Depth: 2, MinSize: 16, MaxSize: 400, Symlinks: 4}
	f := newFaultEtcEnv(t, shape, nil)
	ctx := context.Background()
	after := func(etc string) { faultEdit(t, etc, 2) }
	wantStage := f.oracle(t, nil)
	wantAfter := f.oracle(t, after)
	orig := stagedBytes(t, f.b)
	defaults, err := harness.TreeManifest(f.staged.EtcDir(), harness.ManifestOptions{Xattrs: true})
	if err != nil {
		t.Fatal(err)
	}
	stagedEtc := func(c *harness.BootedHost) string {
		return filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc")
	}
	// Templates: staged by us in-process (for refresh and pre), edits made.
	tmpl := f.b.Copy(t)
	if r, err := lifecycle.Stage(ctx, inProcess(t, tmpl, etcmerge.RealFS())); err != nil || !r.Etc.Takeover {
		t.Fatalf("in-process stage: %+v, %v", r, err)
	}
	after(tmpl.EtcDir())

	type step struct {
		name string
		base *harness.BootedHost
		run  func(cfg lifecycle.Config) error
		want harness.Manifest
	}
	steps := []step{
		{"stage", f.b, func(cfg lifecycle.Config) error {
			r, err := lifecycle.Stage(ctx, cfg)
			if err == nil && r.Etc.State != store.EtcPrecomputed {
				err = fmt.Errorf("stage: %+v", r.Etc)
			}
			return err
		}, wantStage},
		{"refresh", tmpl, func(cfg lifecycle.Config) error {
			_, err := lifecycle.Refresh(ctx, cfg, nil)
			return err
		}, wantAfter},
		{"pre", tmpl, func(cfg lifecycle.Config) error {
			r, err := lifecycle.Pre(ctx, cfg)
			if err == nil && r.Etc.State != store.EtcSealed {
				err = fmt.Errorf("pre: %+v", r.Etc)
			}
			return err
		}, wantAfter},
	}
	trials, finalized := 0, 0
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clean := &countingFS{counts: map[string]int{}}
			c := s.base.Copy(t)
			if err := s.run(inProcess(t, c, clean.fs())); err != nil {
				t.Fatalf("clean run: %v", err)
			}
			t.Logf("calls of a clean %s: %v", s.name, clean.counts)
			for _, field := range fsFields {
				for n := 1; n <= clean.counts[field]; n++ {
					when := fmt.Sprintf("%s: %s call %d of %d fails", s.name, field, n, clean.counts[field])
					c := s.base.Copy(t)
					bootedBefore := bootedManifest(t, c)
					cfs := &countingFS{counts: map[string]int{}, failField: field, failAt: n}
					err := s.run(inProcess(t, c, cfs.fs()))
					trials++
					if !cfs.failed {
						t.Fatalf("%s: the failure was never injected (the step took another path)", when)
					}
					st := statusOf(t, c)
					switch s.name {
					case "refresh":
						// A batch reports its error; nothing falls back, the
						// seal retries everything.
						if err == nil || !errors.Is(err, errInjectedIO) {
							t.Fatalf("%s: Refresh returned %v", when, err)
						}
						if st.Etc.State == store.EtcFallback || !st.Etc.Takeover {
							t.Fatalf("%s: status %+v", when, st.Etc)
						}
					default:
						if s.name == "stage" && err == nil {
							t.Fatalf("%s: stage reported success", when)
						}
						if st.Etc.State != store.EtcFallback || st.Etc.Takeover || !strings.Contains(st.Etc.Reason, "injected I/O error") {
							t.Fatalf("%s: status %+v (err %v)", when, st.Etc, err)
						}
						if got := stagedBytes(t, c); string(got) != string(orig) {
							t.Fatalf("%s: ostree's staged state not restored byte for byte", when)
						}
						m, err := harness.TreeManifest(stagedEtc(c), harness.ManifestOptions{Xattrs: true})
						if err != nil {
							t.Fatal(err)
						}
						if d := m.Diff(defaults); d != nil {
							t.Fatalf("%s: staged etc not reset to the new defaults:\n%s", when, strings.Join(d[:min(len(d), 10)], "\n"))
						}
					}
					if tmps := stagedTmps(stagedEtc(c)); len(tmps) > 0 {
						t.Fatalf("%s: temporary files left: %v", when, tmps)
					}
					requireSameManifest(t, when+": the booted /etc was written", bootedBefore, bootedManifest(t, c))
					// The real finalization: for every trial under
					// STRESS, else for the first and last position of
					// each field.
					if stressOn() || n == 1 || n == clean.counts[field] {
						f.finishAndCompare(t, c, s.want, when)
						finalized++
					}
				}
			}
		})
	}
	t.Logf("%d injected failures, %d followed by the real finalize-staged", trials, finalized)
}
