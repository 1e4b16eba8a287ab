package test

// Longer than 500 lines on purpose: one benchmark: its load generators,
// measurement and table belong together.

// The contention benchmark of `make bench BENCH_ONLY=contention` (issue 15):
// what our I/O does to the host's workload. On the prune workload of
// TestPruneBench, with a writer that keeps about 2 GB of dirty page cache on
// the same filesystem (an image pull) and a foreground process that writes
// 4 KB and fsyncs in a loop (etcd), it measures, side by side in one run:
// next-boot cleanup (ours and `ostree admin cleanup`), cold cache, its wall
// time and the foreground loop's p99 fsync latency meanwhile, against the
// p99 just before with no cleanup running; then a watcher batch of 10 /etc
// edits, its wall time and the foreground p99 meanwhile. The writer runs
// only around each measurement (from a cold cache), on a fresh file it
// removes after (its dirty pages are dropped, not written). The writer and the
// fsync loop are this test binary run again (TestContentionLoad).

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

const (
	contentionRoleEnv = "OSTREE_PREFINALIZE_CONTENTION_ROLE" // writer | fsync
	contentionDirEnv  = "OSTREE_PREFINALIZE_CONTENTION_DIR"
	// contentionDirty is how much dirty page cache the writer keeps.
	contentionDirty = 2 << 30
	// contentionRing is the writer's file: it overwrites it in a ring, so
	// the disk does not fill up however long the benchmark runs.
	contentionRing  = 4 << 30
	contentionChunk = 16 << 20
	// contentionRate bounds the writer once it has filled the page cache
	// (bytes per second): a fast pull, not a disk copy. A writer unbounded
	// keeps the disk writing at full speed whenever anything flushes (on a
	// shared machine other jobs' syncs do, all the time), and then cold
	// reads wait behind it for minutes, whoever reads.
	contentionRate = 256 << 20
	// baselineWindow is how long the fsync loop is measured with no
	// cleanup or batch running, before each one.
	baselineWindow = 5 * time.Second
	watchEdits     = 10
)

// TestContentionLoad is not a test: it is the writer or the fsync loop of
// TestContentionBench, run as a process of its own.
func TestContentionLoad(t *testing.T) {
	dir := os.Getenv(contentionDirEnv)
	switch os.Getenv(contentionRoleEnv) {
	case "":
		t.Skip("a load process of TestContentionBench")
	case "writer":
		err := dirtyWriter(dir)
		fmt.Fprintln(os.Stderr, "writer:", err)
		os.Exit(1)
	case "fsync":
		if err := fsyncLoop(dir); err != nil {
			fmt.Fprintln(os.Stderr, "fsync loop:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// meminfo returns a field of /proc/meminfo in bytes.
func meminfo(field string) (int64, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/meminfo has no %s", field)
}

// dirtyWriter writes 16 MB chunks, buffered, into a 4 GB ring file
// whenever the machine has less than contentionDirty of dirty page cache,
// until it is killed: the kernel writes back in the background what
// expires or what a sync flushes, and the writer dirties it again, like an
// image pull that never ends. Past the first contentionDirty (then it
// creates "filled") it writes at most contentionRate.
func dirtyWriter(dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, "dirty.bin"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, contentionChunk)
	for i := range buf {
		buf[i] = byte(i*7 + i>>12)
	}
	var off, written int64
	start := time.Now()
	for {
		dirty, err := meminfo("Dirty")
		if err != nil {
			return err
		}
		allowed := contentionDirty + int64(time.Since(start).Seconds()*contentionRate)
		if dirty >= contentionDirty || written >= allowed {
			time.Sleep(2 * time.Millisecond) // the writer's pace, not synchronisation
			continue
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
		off = (off + contentionChunk) % contentionRing
		written += contentionChunk
		if written == contentionDirty {
			if err := os.WriteFile(filepath.Join(dir, "filled"), nil, 0o600); err != nil {
				return err
			}
		}
	}
}

// fsyncLoop writes 4 KB and fsyncs, over and over (a write-ahead log of 1
// MB rewritten in place), until SIGTERM; then it writes each iteration's
// start (Unix ns) and latency (ns) to lat.bin. It creates "ready" after
// its first iteration.
func fsyncLoop(dir string) error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	f, err := os.OpenFile(filepath.Join(dir, "wal"), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, 4096)
	var recs []int64
	for i := 0; ; i++ {
		select {
		case <-term:
			out := make([]byte, 8*len(recs))
			for k, v := range recs {
				binary.LittleEndian.PutUint64(out[8*k:], uint64(v))
			}
			return os.WriteFile(filepath.Join(dir, "lat.bin"), out, 0o600)
		default:
		}
		buf[0] = byte(i)
		start := time.Now()
		if _, err := f.WriteAt(buf, int64(i%256)*4096); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		recs = append(recs, start.UnixNano(), int64(time.Since(start)))
		if i == 0 {
			if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600); err != nil {
				return err
			}
		}
	}
}

// loadProc is a running TestContentionLoad process.
type loadProc struct {
	cmd *exec.Cmd
	dir string
}

func startLoad(t testing.TB, role, dir string) *loadProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestContentionLoad$", "-test.count=1")
	cmd.Env = append(os.Environ(), contentionRoleEnv+"="+role, contentionDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the %s: %v", role, err)
	}
	p := &loadProc{cmd: cmd, dir: dir}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	return p
}

// fsyncSample is one iteration of the fsync loop.
type fsyncSample struct {
	start time.Time
	lat   time.Duration
}

// startFsyncLoop starts the foreground loop and returns once it runs.
func startFsyncLoop(t testing.TB) *loadProc {
	t.Helper()
	dir, err := os.MkdirTemp("", "fsync-loop")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := startLoad(t, "fsync", dir)
	waitFor(t, "the fsync loop's first fsync", time.Minute, func() bool {
		_, err := os.Stat(filepath.Join(dir, "ready"))
		return err == nil
	})
	return p
}

// stop ends the fsync loop and returns its samples.
func (p *loadProc) stop(t testing.TB) []fsyncSample {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("fsync loop: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(p.dir, "lat.bin"))
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(p.dir)
	var out []fsyncSample
	for k := 0; k+16 <= len(data); k += 16 {
		out = append(out, fsyncSample{
			start: time.Unix(0, int64(binary.LittleEndian.Uint64(data[k:]))),
			lat:   time.Duration(binary.LittleEndian.Uint64(data[k+8:])),
		})
	}
	return out
}

// within returns the latencies of the iterations that started in [from, to).
func within(s []fsyncSample, from, to time.Time) []time.Duration {
	var out []time.Duration
	for _, x := range s {
		if !x.start.Before(from) && x.start.Before(to) {
			out = append(out, x.lat)
		}
	}
	return out
}

// p99 is the 99th percentile (nearest rank) of v.
func p99(v []time.Duration) time.Duration {
	if len(v) == 0 {
		return 0
	}
	c := slices.Clone(v)
	slices.Sort(c)
	return c[int(math.Ceil(0.99*float64(len(c))))-1]
}

// waitFor polls cond every 2ms until it holds, failing at the deadline.
// The interval is a polling rate; only the condition ends the wait.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// contention is the dirty writer's directory, on the sysroot's filesystem.
type contention struct {
	dir string
}

// checkContention checks that the machine lets contentionDirty be dirty
// (vm.dirty_bytes or vm.dirty_ratio above it: writers are throttled
// beyond) and that dir is on the filesystem of the sysroot. It changes no
// setting.
func checkContention(t *testing.T, dir, sysroot string) *contention {
	t.Helper()
	var a, b unix.Stat_t
	if err := unix.Stat(dir, &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(sysroot, &b); err != nil {
		t.Fatal(err)
	}
	if a.Dev != b.Dev {
		t.Fatalf("the writer's directory %s is not on the sysroot's filesystem", dir)
	}
	limit, why := dirtyLimit(t)
	t.Logf("dirty page cache limit: %s (%s)", mb(limit), why)
	if limit < contentionDirty*5/4 {
		t.Fatalf("the machine throttles writers at %s of dirty page cache (%s): the benchmark needs %s", mb(limit), why, mb(contentionDirty*5/4))
	}
	return &contention{dir: dir}
}

// dirtyLimit is the dirty page cache at which the kernel throttles
// writers, from vm.dirty_bytes or vm.dirty_ratio of MemAvailable (an
// estimate of the kernel's dirtyable memory).
func dirtyLimit(t *testing.T) (int64, string) {
	read := func(name string) int64 {
		data, err := os.ReadFile("/proc/sys/vm/" + name)
		if err != nil {
			t.Fatal(err)
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := read("dirty_bytes"); v > 0 {
		return v, fmt.Sprintf("vm.dirty_bytes %d", v)
	}
	avail, err := meminfo("MemAvailable")
	if err != nil {
		t.Fatal(err)
	}
	r := read("dirty_ratio")
	return avail * r / 100, fmt.Sprintf("vm.dirty_ratio %d%% of MemAvailable %s; vm.dirty_background_ratio %d%%, dirty_expire_centisecs %d",
		r, mb(avail), read("dirty_background_ratio"), read("dirty_expire_centisecs"))
}

// start puts the machine in the cold state under load: its dirty pages
// written back and the caches dropped (settle), then the writer started on
// a fresh file until 2 GB are dirty. The returned stop kills the writer
// and removes its file: the kernel drops the dirty pages of a removed file
// without writing them back, so between measurements the disk is left to
// the machine's other jobs.
func (c *contention) start(t testing.TB) (stop func()) {
	t.Helper()
	settle(t, true)
	dir, err := os.MkdirTemp(c.dir, "writer")
	if err != nil {
		t.Fatal(err)
	}
	w := startLoad(t, "writer", dir)
	stop = func() {
		if w.cmd.ProcessState == nil {
			w.cmd.Process.Kill()
			w.cmd.Wait()
		}
		os.RemoveAll(dir)
	}
	t.Cleanup(stop)
	// Filled, not "2 GB dirty": on a shared machine other jobs' syncs
	// flush it at any time (the windows record how much was dirty).
	waitFor(t, "the writer's first 2 GB", 5*time.Minute, func() bool {
		_, err := os.Stat(filepath.Join(dir, "filled"))
		return err == nil
	})
	return stop
}

// measured is one run under load: the fsync loop's latencies in the
// baseline window and while the measured thing ran, its wall time, and
// the machine's dirty page cache sampled every 50ms over both windows.
type measured struct {
	wall      time.Duration
	base, run []time.Duration
	dirty     []int64
}

// underLoad starts the fsync loop, measures baselineWindow of it, then
// runs fn (which returns when the measured work began and ended) and stops
// the loop.
func underLoad(t testing.TB, fn func() (time.Time, time.Time)) measured {
	t.Helper()
	loop := startFsyncLoop(t)
	var dirty []int64
	quit, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if d, err := meminfo("Dirty"); err == nil {
				dirty = append(dirty, d)
			}
			select {
			case <-quit:
				return
			case <-tick.C:
			}
		}
	}()
	b0 := time.Now()
	time.Sleep(baselineWindow) // the length of a measurement window
	b1 := time.Now()
	s, e := fn()
	close(quit)
	<-sampled
	samples := loop.stop(t)
	return measured{wall: e.Sub(s), base: within(samples, b0, b1), run: within(samples, s, e), dirty: dirty}
}

// TestContentionBench is the benchmark; see the top of this file.
func TestContentionBench(t *testing.T) {
	requireBench(t)
	runs := benchRuns(t)
	rep := &table{}
	rep.title = append(rep.title,
		"## contention benchmark",
		fmt.Sprintf("machine: %d CPUs, %s RAM, shared with other jobs; %s; %d runs per cell, cold cache; load: a writer keeping %s dirty (16 MB buffered writes into a 4 GB ring file, at most %s/s once filled) and a loop of 4 KB write + fsync, both on the sysroot's filesystem",
			runtime.NumCPU(), mb(memTotal(t)), ostreeVersion(t), runs, mb(contentionDirty), mb(contentionRate)))
	rep.add("measurement", "ours", "theirs / without", "ratio", "goal", "ours min–max", "theirs min–max", "notes")

	fx := buildFixture(t)
	rep.title = append(rep.title, "workload: "+fx.desc)
	c := checkContention(t, t.TempDir(), fx.s.Path)
	contentionCleanup(t, fx, c, runs, rep)
	contentionWatch(t, c, runs, rep)
	fmt.Printf("\n%s\n", rep)
}

func memTotal(t *testing.T) int64 {
	v, err := meminfo("MemTotal")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// contentionCleanup: next-boot cleanup, ours (ExecuteRepo as in
// executeOurs) and `ostree admin cleanup --sysroot`, on copies of the
// finalized fixture, each under load with its baseline window.
func contentionCleanup(t *testing.T, fx *fixture, c *contention, runs int, rep *table) {
	ctx := t.Context()
	if _, err := fx.booted.FinalizeStaged(ctx); err != nil {
		t.Fatal(err)
	}
	before := parityObjects(t, fx.s.Repo)
	planned := map[string]bool{}
	for _, l := range fx.list {
		planned[l] = true
	}
	entries := fx.plan.Entries()
	const ours, theirs = 0, 1
	names := [2]string{"ours", "ostree-cleanup"}
	var wall [2]sample
	var base, during [2][]time.Duration
	var baseP99, runP99 [2]sample
	var dirty [2][]int64
	var bds []execBreakdown
	for i := 0; i < runs; i++ {
		for k := 0; k < 2; k++ {
			side := (i + k) % 2
			t.Run(fmt.Sprintf("cleanup/%s/%d", names[side], i), func(t *testing.T) {
				dst := harness.CopyTree(t, fx.s.Path)
				runDir := t.TempDir()
				stop := c.start(t)
				m := underLoad(t, func() (time.Time, time.Time) {
					start := time.Now()
					var err error
					if side == ours {
						var bd execBreakdown
						bd, err = executeOurs(ctx, dst, fx.plan, entries, runDir)
						bds = append(bds, bd)
					} else {
						_, _, err = harness.RunOstree(ctx, "admin", "cleanup", "--sysroot="+dst)
					}
					end := time.Now()
					if err != nil {
						t.Fatalf("%s: %v", names[side], err)
					}
					return start, end
				})
				stop()
				checkExecuted(t, before, planned, filepath.Join(dst, "ostree", "repo"), names[side])
				t.Logf("%s run %d: %s; fsync p99 %s during (%d fsyncs), %s before (%d); %s", names[side], i,
					m.wall, p99(m.run), len(m.run), p99(m.base), len(m.base), dirtyNote(m.dirty))
				dirty[side] = append(dirty[side], m.dirty...)
				wall[side] = append(wall[side], m.wall)
				base[side] = append(base[side], m.base...)
				during[side] = append(during[side], m.run...)
				baseP99[side] = append(baseP99[side], p99(m.base))
				runP99[side] = append(runP99[side], p99(m.run))
			})
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	r := ratio(wall[ours], wall[theirs])
	rep.add("next-boot cleanup under load: ours vs ostree admin cleanup",
		fmtDur(wall[ours].median()), fmtDur(wall[theirs].median()),
		fmt.Sprintf("%.2f×", r), goal(r <= 0.25, "≤0.25×"),
		wall[ours].spread(), wall[theirs].spread(),
		fmt.Sprintf("paired %.2f×; %s; %s with ours, %s with ostree", pairedRatio(wall[ours], wall[theirs]), breakdownNote(bds), dirtyNote(dirty[ours]), dirtyNote(dirty[theirs])))
	for side, g := range []string{"≤1.5×", "reported"} {
		bp, rp := p99(base[side]), p99(during[side])
		q := float64(rp) / float64(bp)
		verdict := g
		if side == ours {
			verdict = goal(q <= 1.5, g)
		}
		rep.add(fmt.Sprintf("fsync loop p99 during %s / without cleanup", names[side]),
			fmtMs(rp), fmtMs(bp), fmt.Sprintf("%.2f×", q), verdict,
			spreadMs(runP99[side]), spreadMs(baseP99[side]),
			fmt.Sprintf("p99 of all runs' fsyncs pooled (%d during, %d without); per-run p99 medians %s / %s; median of the per-run ratios %.2f×",
				len(during[side]), len(base[side]), fmtMs(runP99[side].median()), fmtMs(baseP99[side].median()), pairedRatio(runP99[side], baseP99[side])))
	}
}

// dirtyNote is the median and the 10th–90th percentiles of dirty page
// cache samples.
func dirtyNote(v []int64) string {
	if len(v) == 0 {
		return "dirty: no samples"
	}
	c := slices.Clone(v)
	slices.Sort(c)
	at := func(q float64) string { return fmt.Sprintf("%.2f", float64(c[int(q*float64(len(c)-1))])/(1<<30)) }
	return fmt.Sprintf("dirty page cache %s GB (p10 %s, p90 %s)", at(0.5), at(0.1), at(0.9))
}

// fmtMs shows a latency in milliseconds with two decimals.
func fmtMs(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/1e6) }

func spreadMs(s sample) string {
	c := s.sorted()
	if len(c) == 0 {
		return "-"
	}
	return fmtMs(c[0]) + "–" + fmtMs(c[len(c)-1])
}

// contentionWatch: a running watcher (the watcher benchmark's setup, a
// small /etc) applies a batch of 10 /etc edits, under load: the batch's
// wall time (from the first write to the watcher's "merge current"
// status, the 250 ms debounce included) and the fsync loop's p99 meanwhile,
// against the p99 of windows of the same length without a batch.
func contentionWatch(t *testing.T, c *contention, runs int, rep *table) {
	w := newWatchEnv(t, watchOptions{seed: 51})
	p := w.startWatcher()
	var wall sample
	var batchP99, quietP99 sample // per window
	var dirty []int64
	for i := 0; i < runs; i++ {
		t.Run(fmt.Sprintf("watch/%d", i), func(t *testing.T) {
			stop := c.start(t)
			var names []string
			for k := 0; k < watchEdits; k++ {
				names = append(names, fmt.Sprintf("contention-%d.conf", k))
			}
			content := fmt.Sprintf("run %d\n", i)
			m := underLoad(t, func() (time.Time, time.Time) {
				mark := w.notify.mark()
				start := time.Now()
				for _, n := range names {
					writeFile(t, filepath.Join(w.b.EtcDir(), n), content)
				}
				waitFor(t, "the watcher's batch", 2*time.Minute, func() bool {
					for _, n := range names {
						got, err := os.ReadFile(filepath.Join(w.staged.EtcDir(), n))
						if err != nil || string(got) != content {
							return false
						}
					}
					return slices.ContainsFunc(w.notify.since(mark), func(m string) bool {
						return strings.HasPrefix(m, "STATUS=merge current for ")
					})
				})
				return start, time.Now()
			})
			stop()
			// Windows of the batch's length cut from the baseline: the
			// noise of p99 over so short a window.
			bp := p99(m.run)
			var quiet sample
			for k := 0; k+len(m.run) <= len(m.base) && len(m.run) > 0; k += len(m.run) {
				quiet = append(quiet, p99(m.base[k:k+len(m.run)]))
			}
			t.Logf("batch %d: %s; fsync p99 %s during (%d fsyncs), without: %s over %d windows of as many fsyncs; %s",
				i, m.wall, fmtMs(bp), len(m.run), spreadMs(quiet), len(quiet), dirtyNote(m.dirty))
			dirty = append(dirty, m.dirty...)
			wall = append(wall, m.wall)
			batchP99 = append(batchP99, bp)
			quietP99 = append(quietP99, quiet...)
		})
	}
	w.stop(p)
	if t.Failed() {
		t.FailNow()
	}
	rep.add(fmt.Sprintf("watcher batch of %d /etc edits under load: wall", watchEdits),
		fmtDur(wall.median()), "-", "-", "reported", wall.spread(), "-",
		"first write to the watcher's status, 250 ms debounce included; "+dirtyNote(dirty)+watcherSyncNote())
	// Within noise: the batch windows' median p99 is no higher than the
	// 90th percentile of the p99s of as long windows without a batch.
	q := quietP99.sorted()
	noise := time.Duration(0)
	if len(q) > 0 {
		noise = q[min(len(q)-1, int(math.Ceil(0.9*float64(len(q))))-1)]
	}
	r := float64(batchP99.median()) / float64(quietP99.median())
	rep.add("fsync loop p99 during a watcher batch / without",
		fmtMs(batchP99.median()), fmtMs(quietP99.median()), fmt.Sprintf("%.2f×", r),
		goal(batchP99.median() <= noise, "within noise"),
		spreadMs(batchP99), spreadMs(quietP99),
		fmt.Sprintf("medians of per-window p99; noise: 90th percentile of the windows without a batch, %s", fmtMs(noise)))
}

// watcherSyncNote says whether the watcher built here still ends its
// batches with syncfs (before issue 15's change to the merge engine).
func watcherSyncNote() string {
	data, err := os.ReadFile(filepath.Join(repoRoot(), "finalize", "paths.go"))
	if err == nil && strings.Contains(string(data), "Syncfs(") {
		return "; measured with the watcher that still ends each batch with syncfs"
	}
	return ""
}

// repoRoot is the module's directory (tests run in test/).
func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}
