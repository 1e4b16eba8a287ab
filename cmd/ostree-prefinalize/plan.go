package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
)

// planLockTimeout bounds the wait for ostree's shared repository lock: only
// a running prune (which holds it exclusive) makes us wait.
const planLockTimeout = 5 * time.Minute

func newPlanCmd(g *globalOpts) *cobra.Command {
	var asJSON, asList bool
	var imageGC func() (bool, error)
	c := &cobra.Command{
		Use:   "plan [--json | --list] [--image-gc]",
		Short: "Show the mock prune for the staged transition (or for now when nothing is staged)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if asJSON && asList {
				return usageError{errors.New("plan: --json and --list cannot be used together")}
			}
			format := "text"
			switch {
			case asJSON:
				format = "json"
			case asList:
				format = "list"
			}
			gc, err := imageGC()
			if err != nil {
				return err
			}
			return runPlan(c.Context(), g, format, gc, c.OutOrStdout(), os.Stderr)
		},
	}
	imageGC = addImageGCFlag(c)
	c.Flags().BoolVar(&asJSON, "json", false, "print the plan summary as JSON")
	c.Flags().BoolVar(&asList, "list", false, "print one object per line, <checksum>.<type>, sorted")
	return c
}

// planResult is what the plan command computed: the lifecycle's one Plan.
type planResult struct{ *lifecycle.Plan }

// computePlan loads the sysroot, predicts the post-finalization deployments
// and their roots, and plans the prune under ostree's shared repo lock.
func computePlan(ctx context.Context, g *globalOpts, imageGC bool) (*planResult, error) {
	p, err := lifecycle.ComputePlan(ctx, lifecycle.Config{Sysroot: g.sysroot, RunDir: g.runDir, ImageGC: imageGC, LockTimeout: planLockTimeout})
	if err != nil {
		return nil, err
	}
	return &planResult{p}, nil
}

func runPlan(ctx context.Context, g *globalOpts, format string, imageGC bool, stdout io.Writer, stderr *os.File) error {
	stop := startProgress(stderr, "planning")
	r, err := computePlan(ctx, g, imageGC)
	stop()
	if err != nil {
		return err
	}
	switch format {
	case "list":
		return r.Prune.WriteList(stdout)
	case "json":
		b, err := json.MarshalIndent(r.jsonForm(), "", "  ")
		if err != nil {
			return err
		}
		_, err = stdout.Write(append(b, '\n'))
		return err
	}
	return r.writeText(stdout)
}

// deploymentJSON names a deployment in `plan --json`.
type deploymentJSON struct {
	OSName   string `json:"osname"`
	Checksum string `json:"checksum"`
	Serial   int    `json:"serial"`
	Staged   bool   `json:"staged,omitempty"` // the staged deployment being finalized
	Booted   bool   `json:"booted,omitempty"`
	Pinned   bool   `json:"pinned,omitempty"`
}

// planJSON is `plan --json`: the plan's Summary (objects, bytes,
// roots_hash, roots, file_suffix, per-type counts) plus what finalization
// does to the deployments, and the planned figures of the prune figures'
// vocabulary (lifecycle.PlannedFigures). Field names are stable: add,
// never rename.
type planJSON struct {
	prune.Summary
	lifecycle.PlannedFigures
	// Staged is whether a deployment is staged; Locked whether its
	// finalization is locked (the plan is then for the current list).
	Staged      bool             `json:"staged"`
	Locked      bool             `json:"locked"`
	Deployments []deploymentJSON `json:"deployments"`
	Dropped     []deploymentJSON `json:"dropped"`
}

func (r *planResult) toJSON(ds []*ostree.Deployment) []deploymentJSON {
	out := make([]deploymentJSON, 0, len(ds))
	for _, d := range ds {
		out = append(out, deploymentJSON{
			OSName: d.OSName, Checksum: d.Checksum.String(), Serial: d.Serial,
			Staged: r.Sysroot.Staged != nil && d.Same(r.Sysroot.Staged),
			Booted: d.Booted, Pinned: d.Pinned,
		})
	}
	return out
}

func (r *planResult) jsonForm() planJSON {
	return planJSON{
		Summary:        r.Prune.Summary(),
		PlannedFigures: lifecycle.Planned(r.Prune.Stats),
		Staged:         r.Sysroot.Staged != nil,
		Locked:         r.Sysroot.Staged != nil && r.Sysroot.StagedLocked,
		Deployments:    r.toJSON(r.Deployments),
		Dropped:        r.toJSON(r.Dropped),
	}
}

func (r *planResult) writeText(w io.Writer) error {
	bw := bufio.NewWriter(w)
	s, p := r.Sysroot, r.Prune
	switch {
	case s.Staged == nil:
		if st := filepath.Join(s.RunDir, "ostree/staged-deployment"); s.Booted == nil && fileExists(st) {
			fmt.Fprintf(bw, "Not booted into %s: %s is ignored, as ostree ignores it.\n", s.Path, st)
		}
		fmt.Fprintf(bw, "Nothing staged: plan for the current deployments (what `ostree admin cleanup` deletes now).\n")
	case s.StagedLocked:
		fmt.Fprintf(bw, "Staged: %s (finalization locked: ostree will not finalize it; plan for the current deployments)\n", s.Staged)
	default:
		fmt.Fprintf(bw, "Staged: %s\n", s.Staged)
	}
	fmt.Fprintf(bw, "Deployments after finalization:\n")
	for _, d := range r.toJSON(r.Deployments) {
		fmt.Fprintf(bw, "  %s %s.%d%s\n", d.OSName, d.Checksum, d.Serial, marks(d))
	}
	if len(r.Dropped) > 0 {
		fmt.Fprintf(bw, "Dropped:\n")
		for _, d := range r.toJSON(r.Dropped) {
			fmt.Fprintf(bw, "  %s %s.%d%s\n", d.OSName, d.Checksum, d.Serial, marks(d))
		}
	}
	fmt.Fprintf(bw, "Roots: %d commits, hash %s\n", len(p.Roots), p.RootsHash)
	st := p.Stats
	fmt.Fprintf(bw, "Objects to delete: %d (%s)\n", st.Objects, humanBytes(st.Bytes))
	for _, t := range []struct {
		name string
		ts   prune.TypeStats
	}{{"commit", st.Commit}, {"commitmeta", st.CommitMeta}, {"dirtree", st.DirTree}, {"dirmeta", st.DirMeta}, {p.FileSuffix, st.File}} {
		fmt.Fprintf(bw, "  %-10s %9d  %s\n", t.name, t.ts.Objects, humanBytes(t.ts.Bytes))
	}
	writeImages(bw, p.Summary().Images)
	return bw.Flush()
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func marks(d deploymentJSON) string {
	m := ""
	if d.Staged {
		m += " (staged)"
	}
	if d.Booted {
		m += " (booted)"
	}
	if d.Pinned {
		m += " (pinned)"
	}
	return m
}

// humanBytes prints a size as GLib's g_format_size does (SI units), so it
// reads like ostree's "Freed objects" line.
func humanBytes(n uint64) string {
	if n < 1000 {
		return fmt.Sprintf("%d bytes", n)
	}
	v := float64(n)
	for _, u := range []string{"kB", "MB", "GB", "TB", "PB"} {
		v /= 1000
		if v < 1000 {
			return fmt.Sprintf("%.1f %s", v, u)
		}
	}
	return fmt.Sprintf("%.1f EB", v/1000)
}

// startProgress shows "<what>… Ns" on f, rewritten in place every second,
// once the work has taken a second, when f is a terminal; the returned
// function stops it and clears the line. Nothing is written otherwise, so
// scripts and journals see only the result.
func startProgress(f *os.File, what string) (stop func()) {
	if f == nil {
		return func() {}
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		shown := false
		for {
			select {
			case <-done:
				if shown {
					fmt.Fprint(f, "\r\033[K")
				}
				return
			case now := <-tick.C:
				fmt.Fprintf(f, "\r\033[K%s… %ds", what, int(now.Sub(start).Seconds()))
				shown = true
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}
