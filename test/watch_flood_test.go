package test

// The watcher under a flood of renames and creations by an unprivileged
// user in a directory of /etc it owns (issue 11): the watcher's CPU while
// it lasts (a benchmark, BENCH_ONLY=flood, goal at most 15% of one core;
// never asserted) and, afterwards, ostree's exact merge at the seal (a
// test, in make test).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// floodUID owns /etc/svc and runs the flood.
const floodUID = 1000

// floodCPUGoal is issue 11's goal for the watcher under the flood.
const floodCPUGoal = 0.15

// buildHelper builds a helper command of test/harness for an unprivileged
// uid: outside t.TempDir() (0700), in a directory that uid can enter.
func buildHelper(t *testing.T, pkg string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "helper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, filepath.Base(pkg))
	if b, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	must(t, os.Chmod(bin, 0o755))
	return bin
}

// floodEnv is a watched machine whose /etc has svc, owned by floodUID.
type floodEnv struct {
	*watchEnv
	flood string // the helper binary
	p     *harness.Proc
	pid   int // the watcher's host pid
}

func newFloodEnv(t *testing.T, seed int64) *floodEnv {
	tag := fmt.Sprintf("OSTREE_PREFINALIZE_BENCH_TAG=%d-%d", os.Getpid(), time.Now().UnixNano())
	w := newWatchEnv(t, watchOptions{seed: seed, env: []string{tag}})
	f := &floodEnv{watchEnv: w, flood: buildHelper(t, "github.com/ostree-prefinalize/ostree-prefinalize/test/harness/flood")}
	w.edit(func(t *testing.T, etc, _ string) {
		svc := filepath.Join(etc, "svc")
		for name, content := range map[string]string{"a/x": "x\n", "b/y": "y\n", "b/sub/z": "z\n", "d/w": "w\n", "svc.conf": "svc\n"} {
			writeFile(t, filepath.Join(svc, name), content)
		}
		must(t, os.Symlink("/usr/share", filepath.Join(svc, "dl")))
		must(t, filepath.Walk(svc, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, floodUID, floodUID)
		}))
	})
	f.p = w.startWatcher()
	pollUntil(t, "the watcher's pid", 10*time.Second, func() (bool, string) {
		f.pid = findTagged(tag, "ostree-prefinalize")
		return f.pid > 0, "not found in /proc"
	})
	return f
}

// run floods svc for d as floodUID and measures the watcher's CPU
// meanwhile; the flood's final state is recorded as an edit (for the
// oracle's fork).
func (f *floodEnv) run(d time.Duration) (phaseResult, int) {
	t := f.t
	t.Helper()
	svc := filepath.Join(f.b.EtcDir(), "svc")
	dir, err := os.OpenFile(svc, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(f.flood, "-duration", d.String())
	cmd.ExtraFiles = []*os.File{dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: floodUID, Gid: floodUID, Groups: []uint32{}},
		Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr, cmd.Dir = &stdout, &stderr, "/"
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	r := measurePhase(t, f.pid, fmt.Sprintf("flood of %s", d), 0, d+time.Minute, func() bool {
		select {
		case werr = <-done:
			return true
		default:
			return false
		}
	})
	if werr != nil {
		t.Fatalf("flood: %v\n%s", werr, stderr.String())
	}
	var c struct {
		Ops    int            `json:"ops"`
		Errors map[string]int `json:"errors"`
		UID    int            `json:"uid"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &c); err != nil {
		t.Fatalf("flood output: %v\n%s", err, stdout.String())
	}
	t.Logf("flood (uid %d): %d operations, errors %v; watcher CPU %.2f s in %s (%.1f%% of a core)",
		c.UID, c.Ops, c.Errors, r.cpu, r.wall.Round(10*time.Millisecond), 100*r.cpu/r.wall.Seconds())
	if c.UID != floodUID || c.Ops < 1000 || len(c.Errors) > 0 {
		t.Fatalf("the flood did not run as planned: %+v", c)
	}
	// The fork gets the flood's end state: svc as it is now.
	f.edits = append(f.edits, func(t *testing.T, etc, _ string) {
		must(t, os.RemoveAll(filepath.Join(etc, "svc")))
		if b, err := exec.Command("cp", "-a", svc, filepath.Join(etc, "svc")).CombinedOutput(); err != nil {
			t.Fatalf("cp -a svc: %v\n%s", err, b)
		}
	})
	return r, c.Ops
}

// finish stops the watcher and requires the seal to give ostree's merge.
func (f *floodEnv) finish() {
	want := f.expected("")
	f.stop(f.p)
	f.sealAndCompare(want)
}

// TestWatchUserFlood: after a flood by an unprivileged user the watcher
// is alive and the seal gives ostree's exact merge.
func TestWatchUserFlood(t *testing.T) {
	f := newFloodEnv(t, 60)
	f.run(5 * time.Second)
	if st := f.status(); !st.Watcher.Running {
		t.Fatalf("the watcher died in the flood: %+v", st)
	}
	f.finish()
}

// TestWatchFloodBench is BENCH_ONLY=flood: the watcher's CPU during a
// 20-second flood, BENCH_RUNS floods on one machine, median.
func TestWatchFloodBench(t *testing.T) {
	requireBench(t)
	f := newFloodEnv(t, 61)
	const d = 20 * time.Second
	var pct []float64
	ops := 0
	for range benchRuns(t) {
		r, n := f.run(d)
		pct = append(pct, r.cpu/r.wall.Seconds())
		ops += n
	}
	f.finish()
	slices.Sort(pct)
	med := pct[len(pct)/2]
	if len(pct)%2 == 0 {
		med = (pct[len(pct)/2-1] + pct[len(pct)/2]) / 2
	}
	rep := &table{}
	rep.title = append(rep.title, "## watcher under a flood in a user-owned directory",
		fmt.Sprintf("machine: %d CPUs, shared with other jobs; %d floods of %s by uid %d in /etc/svc, %.0f operations/s; goal: <= %.0f%% of one core",
			runtime.NumCPU(), len(pct), d, floodUID, float64(ops)/(float64(len(pct))*d.Seconds()), 100*floodCPUGoal))
	rep.add("phase", "watcher CPU, median", "min", "max", "goal")
	rep.add(fmt.Sprintf("flood of %s", d), fmt.Sprintf("%.1f%%", 100*med), fmt.Sprintf("%.1f%%", 100*pct[0]), fmt.Sprintf("%.1f%%", 100*pct[len(pct)-1]),
		goal(med <= floodCPUGoal, fmt.Sprintf("≤%.0f%%", 100*floodCPUGoal)))
	t.Logf("\n%s", rep)
}
