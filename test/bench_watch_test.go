package test

// The watcher benchmark of `make bench` (issue 5): RSS and CPU of
// `ostree-prefinalize watch` on a booted machine whose /etc has 5,000 files
// in 500 directories, idle and during a burst of 10,000 operations, read
// from /proc/PID/status (VmRSS, VmHWM) and /proc/PID/stat (utime+stime).
// Goal: at most 30 MB resident.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// watchBenchShape is the generated part of the benchmark's /etc: with the
// fixed files and the local edits, just over 5,000 files in 500 directories.
var watchBenchShape = harness.Shape{Files: 5000, Dirs: 500, Depth: 3, MinSize: 64, MaxSize: 2048, Symlinks: 20}

// watchRSSGoal is issue 5's goal for the watcher's resident memory.
const watchRSSGoal = 30 << 20

// procSample is what /proc says about a process at one instant.
type procSample struct {
	rss, hwm   int64   // bytes
	anon, file int64   // RssAnon, RssFile: bytes
	cpu        float64 // seconds of user+system time
}

// readProc reads VmRSS and VmHWM from /proc/PID/status and utime+stime
// from /proc/PID/stat (clock ticks of USER_HZ, which is 100 on Linux).
func readProc(pid int) (procSample, error) {
	var s procSample
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, l := range strings.Split(string(st), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM" && k != "RssAnon" && k != "RssFile") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return s, fmt.Errorf("/proc/%d/status: %q", pid, l)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return s, fmt.Errorf("/proc/%d/status: %q: %w", pid, l, err)
		}
		switch k {
		case "VmRSS":
			s.rss = n << 10
		case "VmHWM":
			s.hwm = n << 10
		case "RssAnon":
			s.anon = n << 10
		case "RssFile":
			s.file = n << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// The command name (field 2) may hold spaces; fields after the last
	// ')' start at field 3 (state), so utime and stime (14, 15) are at 11, 12.
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(f) < 13 {
		return s, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	stt, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return s, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	s.cpu = float64(ut+stt) / 100
	return s, nil
}

// findTagged finds the host pid of the process whose environment holds
// tag and whose command line starts with argv0 (only the command itself
// has the tag in its environment: `env -i` sets it at the last exec).
func findTagged(tag, argv0 string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil || !bytes.Contains(append([]byte{0}, env...), []byte("\x00"+tag+"\x00")) {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(cl), argv0+"\x00") {
			return pid
		}
	}
	return 0
}

// phaseResult is one row of the report.
type phaseResult struct {
	name               string
	wall               time.Duration
	cpu                float64
	peakRSS, hwm       int64
	peakAnon, peakFile int64
	endRSS             int64
	samples            int
}

// measurePhase samples a process every 10ms for at least minDur and until
// done returns true, and reports the peak RSS seen, the VmHWM and the CPU
// used meanwhile.
func measurePhase(t *testing.T, pid int, name string, minDur, maxDur time.Duration, done func() bool) phaseResult {
	t.Helper()
	start := time.Now()
	first, err := readProc(pid)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	r := phaseResult{name: name}
	last := first
	for {
		s, err := readProc(pid)
		if err != nil {
			t.Fatalf("%s: the watcher died? %v", name, err)
		}
		last = s
		r.samples++
		r.peakRSS = max(r.peakRSS, s.rss)
		r.peakAnon, r.peakFile = max(r.peakAnon, s.anon), max(r.peakFile, s.file)
		el := time.Since(start)
		if el >= minDur && (done == nil || done()) {
			break
		}
		if el > maxDur {
			t.Fatalf("%s: not done within %s", name, maxDur)
		}
		time.Sleep(10 * time.Millisecond) // the sampling rate of a measurement
	}
	r.wall = time.Since(start)
	r.cpu = last.cpu - first.cpu
	r.hwm, r.endRSS = last.hwm, last.rss
	return r
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

// TestWatchBench measures the watcher idle and during a burst.
func TestWatchBench(t *testing.T) {
	requireBench(t)
	tag := fmt.Sprintf("OSTREE_PREFINALIZE_BENCH_TAG=%d-%d", os.Getpid(), time.Now().UnixNano())
	w := newWatchEnv(t, watchOptions{seed: 50, etc: &watchBenchShape, env: []string{tag}})
	nFiles, nDirs := 0, 0
	filepath.WalkDir(w.b.EtcDir(), func(p string, d os.DirEntry, err error) error {
		if err == nil {
			if d.IsDir() {
				nDirs++
			} else {
				nFiles++
			}
		}
		return nil
	})
	p := w.startWatcher()
	var pid int
	pollUntil(t, "the watcher's pid", 10*time.Second, func() (bool, string) {
		pid = findTagged(tag, "ostree-prefinalize")
		return pid > 0, "not found in /proc"
	})
	// The start rescan is applied once the state is precomputed with
	// nothing pending; the idle phase starts after it.
	pollUntil(t, "the start batch applied", 60*time.Second, func() (bool, string) {
		st := w.status()
		return st.Etc.State == "precomputed" && st.Etc.PendingPaths == 0, fmt.Sprintf("%+v", st.Etc)
	})
	var rows []phaseResult
	rows = append(rows, measurePhase(t, pid, "idle after start", 10*time.Second, time.Minute, nil))

	seed := uint64(time.Now().UnixNano())
	t.Logf("burst seed %d", seed)
	gen := generatedEtc(w.tree)
	burstDone := make(chan struct{})
	var burstTime time.Duration
	go func() {
		defer close(burstDone)
		start := time.Now()
		burstEdit(seed, 10000, gen)(t, w.b.EtcDir(), w.away)
		burstTime = time.Since(start)
	}()
	// The burst phase ends when the edits are done and the watcher has
	// applied all of them: status shows nothing pending and the last
	// write of the burst (a marker file) has reached the staged etc.
	marker := filepath.Join(w.staged.EtcDir(), "burst-done.conf")
	rows = append(rows, measurePhase(t, pid, "burst of 10,000 operations", 0, 10*time.Minute, func() bool {
		select {
		case <-burstDone:
		default:
			return false
		}
		if _, err := os.Lstat(filepath.Join(w.b.EtcDir(), "burst-done.conf")); err != nil {
			writeFile(t, filepath.Join(w.b.EtcDir(), "burst-done.conf"), "done\n")
		}
		if _, err := os.Lstat(marker); err != nil {
			return false
		}
		st := w.status()
		return st.Etc.PendingPaths == 0
	}))
	w.edits = append(w.edits, burstEdit(seed, 10000, gen), func(t *testing.T, etc, _ string) {
		writeFile(t, filepath.Join(etc, "burst-done.conf"), "done\n")
	})
	rows = append(rows, measurePhase(t, pid, "idle after the burst", 10*time.Second, time.Minute, nil))
	w.stop(p)

	// The burst ended in the exact merge (the benchmark must not measure
	// a watcher that cuts corners).
	want := w.expected("")
	if ok, why := converged(w.staged.EtcDir(), want); !ok {
		t.Fatalf("after the burst the staged etc is not ostree's merge: %s", why)
	}

	rep := &table{}
	rep.title = append(rep.title,
		"## watcher benchmark",
		fmt.Sprintf("machine: %d CPUs, shared with other jobs; booted /etc: %d files, %d directories; burst written in %s; goal: RSS <= %s",
			runtime.NumCPU(), nFiles, nDirs, burstTime.Round(time.Millisecond), mb(watchRSSGoal)))
	rep.add("phase", "wall", "CPU (user+sys)", "CPU %", "peak VmRSS (anon + file)", "VmRSS at end", "VmHWM", "goal")
	for _, r := range rows {
		rep.add(r.name, r.wall.Round(10*time.Millisecond).String(), fmt.Sprintf("%.2f s", r.cpu),
			fmt.Sprintf("%.1f%%", 100*r.cpu/r.wall.Seconds()),
			fmt.Sprintf("%s (%s + %s)", mb(r.peakRSS), mb(r.peakAnon), mb(r.peakFile)), mb(r.endRSS), mb(r.hwm),
			goal(r.hwm <= watchRSSGoal, "VmHWM ≤"+mb(watchRSSGoal)))
	}
	t.Logf("\n%s", rep)
	if hwm := rows[len(rows)-1].hwm; hwm > watchRSSGoal {
		t.Errorf("watcher peak RSS (VmHWM) %s is over the goal of %s", mb(hwm), mb(watchRSSGoal))
	}
}
