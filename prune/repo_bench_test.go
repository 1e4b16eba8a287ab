package prune

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// BenchmarkRepoPlanUsrShare: ComputePlan on a bare-user-only repository
// holding a commit of the host's /usr/share (kept by a ref) and an orphan
// commit of /usr/share/doc with one file changed, against
// `ostree prune --refs-only --depth=0 --no-prune` on the same repository in
// the same iteration (warm page cache for both). Reports ostree's time as
// ostree-ns/op and the ratio.
func BenchmarkRepoPlanUsrShare(b *testing.B) {
	harness.RequireOstree(b)
	dir := b.TempDir()
	repo := filepath.Join(dir, "repo")
	run := func(args ...string) {
		b.Helper()
		if out, err := exec.Command("ostree", append([]string{"--repo=" + repo}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("ostree %v: %v\n%s", args, err, out)
		}
	}
	run("init", "--mode=bare-user-only")
	run("commit", "--branch=share", "--tree=dir=/usr/share", "--owner-uid=0", "--owner-gid=0")
	run("commit", "--orphan", "--tree=dir=/usr/share/doc", "--owner-uid=0", "--owner-gid=0")
	r, err := ostree.OpenRepo(repo)
	if err != nil {
		b.Fatal(err)
	}
	var ostreeTotal time.Duration
	var p *Plan
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		start := time.Now()
		run("prune", "--refs-only", "--depth=0", "--no-prune")
		ostreeTotal += time.Since(start)
		roots, err := RepoLive{Repo: r}.LiveRoots(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		p, err = ComputePlan(context.Background(), RepoLister(r), roots, FileSuffix(r), RepoChildren(r))
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	ours := b.Elapsed()
	b.ReportMetric(float64(ostreeTotal.Nanoseconds())/float64(b.N), "ostree-ns/op")
	b.ReportMetric(float64(ours)/float64(ostreeTotal), "ratio")
	b.ReportMetric(float64(p.Stats.Listed), "objects")
	b.ReportMetric(float64(p.Stats.Objects), "planned")
}
