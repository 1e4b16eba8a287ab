package test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// Helpers of the benchmarks: the gate, the statistics, page-cache control,
// the real-file churn and the scalable synthetic repository.

// BenchEnv is the switch that runs the benchmarks (`make bench` sets it,
// `make test` never does): they take many minutes, write gigabytes and drop
// the machine's page cache.
const BenchEnv = "OSTREE_PREFINALIZE_BENCH"

// requireBench skips unless BenchEnv=1; with it on, the end-to-end
// requirements (root, the ostree command) fail rather than skip.
func requireBench(t *testing.T) {
	t.Helper()
	if os.Getenv(BenchEnv) != "1" {
		t.Skipf("benchmark: set %s=1 (make bench does)", BenchEnv)
	}
	if !harness.Enabled() {
		t.Setenv(harness.E2EEnv, "1")
	}
	harness.RequireRoot(t)
}

// benchRuns is the number of timed runs per measurement (at least 5;
// OSTREE_PREFINALIZE_BENCH_RUNS raises it).
func benchRuns(t *testing.T) int {
	n := 5
	if s := os.Getenv("OSTREE_PREFINALIZE_BENCH_RUNS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("OSTREE_PREFINALIZE_BENCH_RUNS=%q: want a positive integer", s)
		}
		n = v
	}
	return n
}

// sample is the timings of one measured side, one per run.
type sample []time.Duration

func (s sample) sorted() []time.Duration {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// median of the runs (the mean of the middle two for an even count).
func (s sample) median() time.Duration {
	c := s.sorted()
	if len(c) == 0 {
		return 0
	}
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// spread is "min–max" of the runs.
func (s sample) spread() string {
	c := s.sorted()
	if len(c) == 0 {
		return "-"
	}
	return fmtDur(c[0]) + "–" + fmtDur(c[len(c)-1])
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	default:
		return fmt.Sprintf("%.0fms", float64(d)/float64(time.Millisecond))
	}
}

// ratio is ours/theirs of the medians.
func ratio(ours, theirs sample) float64 {
	if theirs.median() == 0 {
		return 0
	}
	return float64(ours.median()) / float64(theirs.median())
}

// pairedRatio is the median over runs of ours[i]/theirs[i]: the sides of
// one run are measured back to back, so on a shared machine this is less
// exposed to load that comes and goes than the ratio of the medians.
func pairedRatio(ours, theirs sample) float64 {
	var rs []float64
	for i := range min(len(ours), len(theirs)) {
		if theirs[i] > 0 {
			rs = append(rs, float64(ours[i])/float64(theirs[i]))
		}
	}
	if len(rs) == 0 {
		return 0
	}
	slices.Sort(rs)
	if len(rs)%2 == 1 {
		return rs[len(rs)/2]
	}
	return (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2
}

// table collects the report's rows and prints them aligned.
type table struct {
	mu    sync.Mutex
	title []string
	rows  [][]string
}

// add appends a row and prints it at once (the whole run takes long; the
// aligned table comes at the end).
func (tb *table) add(cols ...string) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.rows = append(tb.rows, cols)
	if len(tb.rows) > 1 {
		fmt.Printf("bench: %s\n", strings.Join(cols, " | "))
	}
}

func (tb *table) String() string {
	var w []int
	for _, r := range tb.rows {
		for i, c := range r {
			if i >= len(w) {
				w = append(w, 0)
			}
			w[i] = max(w[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	for _, l := range tb.title {
		b.WriteString(l + "\n")
	}
	for _, r := range tb.rows {
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", w[i]-len([]rune(c))))
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// dropCaches writes back and then drops the page cache, dentries and inodes
// of the whole machine (`sync; echo 3 > /proc/sys/vm/drop_caches`): the cold
// state of a next-boot cleanup.
func dropCaches(t testing.TB) {
	t.Helper()
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		t.Fatalf("dropping the page cache: %v", err)
	}
}

// settle makes the state before a timed run the same for every side: the
// copy that was just made is written back (so that no side pays for another
// one's dirty pages, e.g. in a syncfs), and with cold the caches are dropped.
func settle(t testing.TB, cold bool) {
	t.Helper()
	if cold {
		dropCaches(t)
	} else {
		unix.Sync()
	}
}

// churnStats says what realChurn did.
type churnStats struct {
	Files, Modified, Removed, Added int
}

// realChurn changes the regular files under dir/roots[i] as harness Tree.Churn
// changes generated ones, deterministically in (seed, rev): of the N files
// (sorted by path), frac·N get new content (a line appended), frac/2·N are
// removed, and frac/2·N new files are added next to kept ones (a kept file's
// content plus a line). Hardlinked files are changed through one name.
func realChurn(dir string, roots []string, frac float64, seed uint64, rev int) (churnStats, error) {
	var files []string
	for _, root := range roots {
		err := filepath.WalkDir(filepath.Join(dir, root), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.Type().IsRegular() {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			return churnStats{}, err
		}
	}
	sort.Strings(files)
	st := churnStats{Files: len(files)}
	if len(files) == 0 {
		return st, fmt.Errorf("churn: no regular files under %s %v", dir, roots)
	}
	r := rand.New(rand.NewPCG(seed, uint64(rev)))
	perm := r.Perm(len(files))
	nMod := int(frac * float64(len(files)))
	nRem := int(frac / 2 * float64(len(files)))
	nAdd := nRem
	for i, k := range perm[:nMod] {
		f, err := os.OpenFile(files[k], os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return st, err
		}
		_, err = fmt.Fprintf(f, "\n# churn seed=%d rev=%d n=%d\n", seed, rev, i)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return st, fmt.Errorf("churn %s: %w", files[k], err)
		}
		st.Modified++
	}
	for _, k := range perm[nMod : nMod+nRem] {
		if err := os.Remove(files[k]); err != nil {
			return st, fmt.Errorf("churn %s: %w", files[k], err)
		}
		st.Removed++
	}
	kept := perm[nMod+nRem:]
	for j := 0; j < nAdd; j++ {
		src := files[kept[r.IntN(len(kept))]]
		dst := filepath.Join(filepath.Dir(src), fmt.Sprintf(".churn-r%d-%d", rev, j))
		if err := copyWithLine(src, dst, fmt.Sprintf("\n# churn add seed=%d rev=%d n=%d\n", seed, rev, j)); err != nil {
			return st, fmt.Errorf("churn %s: %w", dst, err)
		}
		st.Added++
	}
	return st, nil
}

func copyWithLine(src, dst, line string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		_, err = io.WriteString(out, line)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// peakHeap samples the heap in use every 10 ms until stopped and returns
// the peak above the level at the start (after a GC).
func peakHeap() (stop func() uint64) {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > peak.Load() {
			peak.Store(ms.HeapInuse)
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(10 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				sample()
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		sample()
		if p := peak.Load(); p > base.HeapInuse {
			return p - base.HeapInuse
		}
		return 0
	}
}

// buildBinary builds the command into a temporary directory (the Go build
// cache makes this cheap), so the benchmark never measures a stale bin/.
func buildBinary(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ostree-prefinalize")
	cmd := exec.Command("go", "build", "-o", out, "github.com/ostree-prefinalize/ostree-prefinalize/cmd/ostree-prefinalize")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// synthRepo is an in-memory repository of about `mids`·25k objects whose
// children are computed from the names (so the benchmark measures the walk
// and the plan, not a stored graph): three commits, each a root tree of
// `mids` directories of 35 leaf directories of 500 files; each commit after
// the first changes 20% of the leaves entirely (leaf j changes in commit k
// when j%5 == k); one shared dirmeta; 2% garbage files. Roots are commits 1
// and 2, so the plan is commit 0's own objects plus the garbage. mids = 40
// is 1,002,087 listed objects, the shape of prune's BenchmarkPlan1M (less
// its one .commitmeta); this one scales, to show that planning is linear.
type synthRepo struct{ mids uint64 }

const (
	synCommits  = 3
	synLeafsPer = 35
	synFiles    = 500
)

const (
	synKindCommit = iota + 1
	synKindRoot
	synKindMid
	synKindLeaf
	synKindFile
	synKindDirMeta
	synKindGarbage
)

func (s synthRepo) leaves() uint64  { return s.mids * synLeafsPer }
func (s synthRepo) garbage() uint64 { return s.mids * 500 }

func synID(kind, v, j, f uint64) ostree.Checksum {
	id := kind<<56 | v<<48 | j<<24 | f
	var c ostree.Checksum
	binary.LittleEndian.PutUint64(c[0:8], splitmix(id))
	binary.LittleEndian.PutUint64(c[8:16], splitmix(id^0x5555))
	binary.LittleEndian.PutUint64(c[16:24], id)
	return c
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

func synDecode(c ostree.Checksum) (kind, v, j uint64) {
	id := binary.LittleEndian.Uint64(c[16:24])
	return id >> 56, id >> 48 & 0xff, id >> 24 & 0xffffff
}

// synVer is the commit that last changed leaf j as of commit k.
func synVer(j, k uint64) uint64 {
	for kk := k; kk >= 1; kk-- {
		if j%5 == kk {
			return kk
		}
	}
	return 0
}

func (s synthRepo) roots() []ostree.ObjectName {
	return []ostree.ObjectName{
		{Checksum: synID(synKindCommit, 1, 0, 0), Type: ostree.ObjCommit},
		{Checksum: synID(synKindCommit, 2, 0, 0), Type: ostree.ObjCommit},
	}
}

func (s synthRepo) children(_ context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
	kind, v, j := synDecode(o.Checksum)
	meta := ostree.ObjectName{Checksum: synID(synKindDirMeta, 0, 0, 0), Type: ostree.ObjDirMeta}
	switch {
	case o.Type == ostree.ObjCommit && kind == synKindCommit:
		emit(ostree.ObjectName{Checksum: synID(synKindRoot, v, 0, 0), Type: ostree.ObjDirTree})
		emit(meta)
	case o.Type == ostree.ObjDirTree && kind == synKindRoot:
		for m := uint64(0); m < s.mids; m++ {
			emit(ostree.ObjectName{Checksum: synID(synKindMid, v, m, 0), Type: ostree.ObjDirTree})
			emit(meta)
		}
	case o.Type == ostree.ObjDirTree && kind == synKindMid:
		for jj := j * synLeafsPer; jj < (j+1)*synLeafsPer; jj++ {
			emit(ostree.ObjectName{Checksum: synID(synKindLeaf, synVer(jj, v), jj, 0), Type: ostree.ObjDirTree})
			emit(meta)
		}
	case o.Type == ostree.ObjDirTree && kind == synKindLeaf:
		for f := uint64(0); f < synFiles; f++ {
			emit(ostree.ObjectName{Checksum: synID(synKindFile, v, j, f), Type: ostree.ObjFile})
		}
	}
	return nil
}

// ListObjects lists every object with a size, as a lister that stats would.
func (s synthRepo) ListObjects(fn func(o ostree.ObjectName, size int64) error) error {
	emit := func(c ostree.Checksum, t ostree.ObjectType, size int64) error {
		return fn(ostree.ObjectName{Checksum: c, Type: t}, size)
	}
	if err := emit(synID(synKindDirMeta, 0, 0, 0), ostree.ObjDirMeta, 120); err != nil {
		return err
	}
	for k := uint64(0); k < synCommits; k++ {
		if err := emit(synID(synKindCommit, k, 0, 0), ostree.ObjCommit, 400); err != nil {
			return err
		}
		if err := emit(synID(synKindRoot, k, 0, 0), ostree.ObjDirTree, 3000); err != nil {
			return err
		}
		for m := uint64(0); m < s.mids; m++ {
			if err := emit(synID(synKindMid, k, m, 0), ostree.ObjDirTree, 2500); err != nil {
				return err
			}
		}
		for j := uint64(0); j < s.leaves(); j++ {
			if synVer(j, k) != k {
				continue
			}
			if err := emit(synID(synKindLeaf, k, j, 0), ostree.ObjDirTree, 30000); err != nil {
				return err
			}
			for f := uint64(0); f < synFiles; f++ {
				if err := emit(synID(synKindFile, k, j, f), ostree.ObjFile, int64(1000+f)); err != nil {
					return err
				}
			}
		}
	}
	for i := uint64(0); i < s.garbage(); i++ {
		if err := emit(synID(synKindGarbage, 0, 0, i), ostree.ObjFile, 4096); err != nil {
			return err
		}
	}
	return nil
}

// expected is (listed, planned) as the construction says.
func (s synthRepo) expected() (listed, planned int) {
	var leaves [synCommits]uint64
	for j := uint64(0); j < s.leaves(); j++ {
		for k := uint64(0); k < synCommits; k++ {
			if synVer(j, k) == k {
				leaves[k]++
			}
		}
	}
	listed = 1 + int(s.garbage())
	for k := 0; k < synCommits; k++ {
		listed += 2 + int(s.mids) + int(leaves[k])*(1+synFiles)
	}
	// Commit 0's own: the commit, its root and mids, its leaves that no
	// later commit keeps (those changed in commit 1 or 2) with their files.
	var gone uint64
	for j := uint64(0); j < s.leaves(); j++ {
		if synVer(j, 1) != 0 && synVer(j, 2) != 0 {
			gone++
		}
	}
	planned = 2 + int(s.mids) + int(gone)*(1+synFiles) + int(s.garbage())
	return listed, planned
}
