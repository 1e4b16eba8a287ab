package test

// The /etc merge benchmark of `make bench` (issue 4): on a booted machine
// whose /etc has ≥3,000 files and ≥100 changed paths, our `finalize --pre`
// against ostree's own merge, measured as real `finalize-staged` with the
// merge (ostree alone) minus `finalize-staged` without it (after our
// takeover), on identical copies of the same staged machine; and the whole
// shutdown path both ways. Median of benchRuns runs, printed as a table.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// etcBenchShape is the generated part of the benchmark's /etc.
var etcBenchShape = harness.Shape{Files: 3200, Dirs: 160, Depth: 3, MinSize: 64, MaxSize: 4096, Symlinks: 60}

// timedRun runs cmdline inside the booted namespace and returns its wall
// time measured inside (the namespace setup is not timed), its exit status
// and its stdout.
func timedRun(t *testing.T, b *harness.BootedHost, cmdline string) (time.Duration, int, string) {
	t.Helper()
	script := `t0=$(date +%s%N); ` + cmdline + ` >/tmp/.out 2>/tmp/.err; rc=$?; t1=$(date +%s%N); echo "$rc $((t1-t0))"; cat /tmp/.out; cat /tmp/.err >&2`
	out, errOut, err := b.Shell(context.Background(), script)
	if err != nil {
		t.Fatalf("%s: %v", cmdline, err)
	}
	first, rest, _ := strings.Cut(out, "\n")
	var rc int
	var ns int64
	if _, err := fmt.Sscan(first, &rc, &ns); err != nil {
		t.Fatalf("timing %q: %q: %v", cmdline, first, err)
	}
	if rc != 0 {
		t.Fatalf("%s: exit status %d\n%s%s", cmdline, rc, rest, errOut)
	}
	return time.Duration(ns), rc, rest
}

// etcBenchEdits builds ≥100 changed paths of the booted /etc as shell:
// content, mode, owner, removal, added files and an added directory tree,
// spread over the generated files.
func etcBenchEdits(gen []string, rev int) (string, int) {
	var etc []string
	for _, p := range gen {
		if rest, ok := strings.CutPrefix(p, "usr/etc/"); ok {
			etc = append(etc, "/etc/"+rest)
		}
	}
	var b strings.Builder
	b.WriteString("set -e\n")
	n := 0
	step := len(etc) / 130
	for i := 0; i < 130; i++ {
		p := etc[(i*step+rev*7)%len(etc)]
		switch {
		case i < 70:
			fmt.Fprintf(&b, "echo 'local edit %d' >> %s\n", rev, p)
		case i < 90:
			fmt.Fprintf(&b, "chmod 0600 %s\n", p)
		case i < 100:
			fmt.Fprintf(&b, "chown 1000:1000 %s\n", p)
		default:
			fmt.Fprintf(&b, "rm -f %s\n", p)
		}
		n++
	}
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, "echo 'added %d' > /etc/bench-added-%d-%d.conf\n", i, rev, i)
		n++
	}
	fmt.Fprintf(&b, "mkdir -p /etc/bench-dir-%d/sub && for i in $(seq 1 10); do echo $i > /etc/bench-dir-%d/sub/f$i; done\n", rev, rev)
	n += 12
	return b.String(), n
}

// TestEtcMergeBench compares our seal with ostree's merge. Two workloads:
// "after stage": every change is made after `stage`, so `finalize --pre`
// applies all of them (no watcher ran: the worst case); "before stage":
// the changes precede staging (or a watcher kept up), so `finalize --pre`
// only verifies.
func TestEtcMergeBench(t *testing.T) {
	requireBench(t)
	runs := benchRuns(t)
	e := newParityEnv(t)
	t1 := harness.NewTree(harness.TreeOptions{Seed: 40, Etc: &etcBenchShape})
	e.commit("testos/main", t1)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	t2, churn := t1.Churn(0.02, 41)
	e.s.CommitWith("testos/main", t2, harness.CommitOptions{Timestamp: etcNewTime})
	gen := t1.Generated()
	nEtc := 0
	for p := range t1.Entries {
		if strings.HasPrefix(p, "usr/etc/") {
			nEtc++
		}
	}
	base := e.boot(d)

	rep := &table{}
	rep.title = append(rep.title,
		"## /etc merge benchmark",
		fmt.Sprintf("machine: %d CPUs, shared with other jobs; %s; %d runs per cell, median (min–max); times measured inside the booted namespace",
			runtime.NumCPU(), ostreeVersion(t), runs))
	rep.add("workload", "measurement", "median", "min–max", "notes")

	edits, nChanged := etcBenchEdits(gen, 1)
	for _, when := range []string{"after stage", "before stage"} {
		staged := base.Copy(t)
		if when == "before stage" {
			staged.MustShell(edits)
		}
		sd := staged.Stage("testos/main")
		var pre, preInner, withMerge, withoutMerge, mergeCost, oursPath sample
		var counts string
		for i := 0; i < runs; i++ {
			ours, theirs := staged.Copy(t), staged.Copy(t)
			var sr lifecycle.StageResult
			if err := json.Unmarshal([]byte(ours.MustRun("ostree-prefinalize", "stage", "--json")), &sr); err != nil || !sr.Etc.Takeover {
				t.Fatalf("stage: %+v, %v", sr.Etc, err)
			}
			if when == "after stage" {
				ours.MustShell(edits)
				theirs.MustShell(edits)
			}
			settle(t, false)
			dp, _, out := timedRun(t, ours, "ostree-prefinalize finalize --pre --json")
			var pr lifecycle.PreResult
			if err := json.Unmarshal([]byte(out), &pr); err != nil || pr.Etc.State != "sealed" || !pr.Etc.Takeover {
				t.Fatalf("finalize --pre: %+v, %v\n%s", pr.Etc, err, out)
			}
			settle(t, false)
			dA, _, outA := timedRun(t, ours, "ostree admin finalize-staged")
			settle(t, false)
			dB, _, outB := timedRun(t, theirs, "ostree admin finalize-staged")
			ra, rb := harness.ParseFinalize(outA, ""), harness.ParseFinalize(outB, "")
			if ra.Merged || !rb.Merged {
				t.Fatalf("merged after ours %v (want false), alone %v (want true)", ra.Merged, rb.Merged)
			}
			if i == 0 {
				counts = fmt.Sprintf("ostree: %d modified, %d removed, %d added", rb.Modified, rb.Removed, rb.Added)
				// The result is ostree's (checked once per workload: the
				// parity tests check it thoroughly).
				dir := func(h *harness.BootedHost) string {
					return h.Sysroot.DeploymentDir(sd.OS, sd.Checksum, sd.Serial) + "/etc"
				}
				requireSameManifest(t, "bench: the new /etc differs from ostree's", etcManifest(t, dir(ours), when == "before stage"), etcManifest(t, dir(theirs), when == "before stage"))
			}
			pre = append(pre, dp)
			preInner = append(preInner, time.Duration(pr.Seconds*float64(time.Second)))
			withoutMerge = append(withoutMerge, dA)
			withMerge = append(withMerge, dB)
			mergeCost = append(mergeCost, max(dB-dA, 0))
			oursPath = append(oursPath, dp+dA)
		}
		r := float64(pre.median()) / float64(max(mergeCost.median(), 1))
		rep.add(when, "ours: finalize --pre (command)", fmtDur(pre.median()), pre.spread(),
			fmt.Sprintf("%.2f× ostree's merge (goal %s)", r, goal(r <= 0.1, "≤0.1×")))
		rep.add(when, "ours: finalize --pre (its own timer)", fmtDur(preInner.median()), preInner.spread(),
			fmt.Sprintf("%.2f× ostree's merge", float64(preInner.median())/float64(max(mergeCost.median(), 1))))
		rep.add(when, "ostree: finalize-staged with merge", fmtDur(withMerge.median()), withMerge.spread(), counts)
		rep.add(when, "ostree: finalize-staged, merge taken over", fmtDur(withoutMerge.median()), withoutMerge.spread(), "")
		rep.add(when, "ostree's merge (with − without, per run)", fmtDur(mergeCost.median()), mergeCost.spread(), "")
		rep.add(when, "shutdown, ours: --pre + finalize-staged", fmtDur(oursPath.median()), oursPath.spread(),
			fmt.Sprintf("%.2f× ostree alone", float64(oursPath.median())/float64(withMerge.median())))
		rep.add(when, "shutdown, ostree alone: finalize-staged", fmtDur(withMerge.median()), withMerge.spread(), "")
		if os.Getenv("OSTREE_PREFINALIZE_BENCH_STRACE") == "1" {
			// Where --pre spends its time, on one more copy (not timed).
			ours := staged.Copy(t)
			ours.MustRun("ostree-prefinalize", "stage")
			if when == "after stage" {
				ours.MustShell(edits)
			}
			settle(t, false)
			out := ours.MustShell("strace -f -c -w -o /tmp/.strace ostree-prefinalize finalize --pre >/dev/null 2>&1; head -25 /tmp/.strace")
			t.Logf("%s: finalize --pre, syscall time:\n%s", when, out)
		}
	}
	rep.title = append(rep.title, fmt.Sprintf("workload: /etc of %d entries (%d generated files); %d changed paths of the booted /etc (70 content, 20 chmod, 10 chown, 30 removed, 20 added files, 1 added directory of 12 entries); the update modifies/removes/adds %d/%d/%d generated files",
		nEtc, etcBenchShape.Files, nChanged, len(churn.Modified), len(churn.Removed), len(churn.Added)))
	fmt.Printf("\n%s\n", rep)
}
