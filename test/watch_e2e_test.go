package test

// Longer than 500 lines on purpose: the watcher's end-to-end scenarios
// share one fixture (watchEnv).

// The `watch` command against the real ostree 2022.7. Each scenario boots a
// machine, stages an update with the real `ostree admin deploy --stage`,
// forks the machine (the fork finalizes with ostree alone), runs our
// `stage` and then `ostree-prefinalize watch` inside the booted namespace,
// and edits the booted /etc from outside while it watches. The fork gets
// the same edits (replayed, deterministic) and its own finalization; the
// staged etc we keep current must equal ostree's merge entry by entry,
// first while the watcher still runs (it did the work, not the seal) and
// again after `finalize --pre` and the real finalize-staged (which must not
// merge: we took over).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// notifyDst is where the test's notification socket directory is bound
// inside the booted namespace (a tmpfs per run, so nothing lands in /run).
const notifyDst = "/tmp/notify"

// notifyListener is the systemd side of sd_notify: a unixgram socket that
// collects every datagram the watcher sends.
type notifyListener struct {
	dir  string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
}

func newNotifyListener(t *testing.T) *notifyListener {
	t.Helper()
	// Not t.TempDir(): a socket path is limited to 108 bytes.
	dir, err := os.MkdirTemp("", "wn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyListener{dir: dir, conn: conn}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, strings.Split(strings.TrimRight(string(buf[:k]), "\n"), "\n")...)
			n.mu.Unlock()
		}
	}()
	return n
}

// mark is how many lines have arrived so far (for waiting on later ones).
func (n *notifyListener) mark() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.msgs)
}

// since returns the lines that arrived after mark.
func (n *notifyListener) since(mark int) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs[min(mark, len(n.msgs)):]...)
}

// pollUntil polls cond every 20ms until it holds, failing the test at the
// deadline with cond's last explanation. The interval is a polling rate,
// never synchronisation: only the condition ends the wait.
func pollUntil(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s: %s", what, timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// editFn changes an etc (the booted one, or the fork's: the same calls on
// both). away is a directory outside etc on the same filesystem, for
// renames out of etc and back. It must be deterministic in the state of etc.
type editFn func(t *testing.T, etc, away string)

type watchOptions struct {
	seed int64
	etc  *harness.Shape
	// next also commits a newer tree on testos/next before the fork, for a
	// re-stage while watching.
	next bool
	// env is extra KEY=VALUE for every command in the booted namespace.
	env []string
}

// watchEnv is one scenario: the booted machine A (ours), its fork B (ostree
// alone), the staged deployment, and the edits made to A so far.
type watchEnv struct {
	*parityEnv
	t          *testing.T
	b          *harness.BootedHost
	ostreeOnly *harness.BootedHost
	staged     harness.Deployment
	notify     *notifyListener
	tree       *harness.Tree // the booted tree
	away       string
	edits      []editFn
}

func newWatchEnv(t *testing.T, o watchOptions) *watchEnv {
	e := newParityEnv(t)
	n := newNotifyListener(t)
	e.opts.Binds = append(e.opts.Binds, harness.Bind{Src: n.dir, Dst: notifyDst})
	e.opts.Env = append(e.opts.Env, "NOTIFY_SOCKET="+notifyDst+"/sock")
	e.opts.Env = append(e.opts.Env, o.env...)
	t.Logf("seed %d", o.seed)
	tr := harness.NewTree(harness.TreeOptions{Seed: o.seed, Etc: o.etc})
	e.commit("testos/main", tr)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	w := &watchEnv{parityEnv: e, t: t, b: e.boot(d), notify: n, tree: tr, away: t.TempDir()}
	// Local changes from before the update, so that the merge has work.
	w.b.MustShell(`set -e
echo changed >> /etc/hostname
echo early > /etc/early.conf
mkdir -p /etc/early.d/sub && echo x > /etc/early.d/sub/f && ln -s ../../early.conf /etc/early.d/sub/link
`)
	tr2, _ := tr.Churn(0.2, o.seed+1)
	e.commit("testos/main", tr2)
	w.staged = w.b.Stage("testos/main")
	if o.next {
		tr3, _ := tr2.Churn(0.2, o.seed+2)
		e.commit("testos/next", tr3)
	}
	w.ostreeOnly = w.b.Copy(t)
	out := w.b.MustRun("ostree-prefinalize", "stage", "--json")
	var sr lifecycle.StageResult
	if err := json.Unmarshal([]byte(out), &sr); err != nil || sr.Etc.State != "precomputed" || !sr.Etc.Takeover {
		t.Fatalf("stage: %v\n%s", err, out)
	}
	return w
}

// edit applies fn to the booted etc now and records it for the fork.
func (w *watchEnv) edit(fn editFn) {
	w.t.Helper()
	fn(w.t, w.b.EtcDir(), w.away)
	w.edits = append(w.edits, fn)
}

// startWatcher starts `ostree-prefinalize -v watch ARGS...` in the booted
// namespace and waits for its READY=1 and for the STATUS= that says the
// start rescan was applied. The watch is established before READY=1, so
// every edit made after this returns is seen, and in a batch of its own.
func (w *watchEnv) startWatcher(args ...string) *harness.Proc {
	w.t.Helper()
	return w.startWatcherArgv(append([]string{"ostree-prefinalize", "-v", "watch"}, args...))
}

// startWatcherArgv is startWatcher with the whole command line (a wrapper
// such as setpriv before the watcher).
func (w *watchEnv) startWatcherArgv(argv []string) *harness.Proc {
	w.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	mark := w.notify.mark()
	p, err := w.b.Start(ctx, argv...)
	if err != nil {
		cancel()
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() {
		cancel() // kills the namespace if the test ended early
		<-p.Done()
	})
	pollUntil(w.t, "READY=1 and the start batch from the watcher", 60*time.Second, func() (bool, string) {
		select {
		case <-p.Done():
			_, stderr, err := p.Wait()
			w.t.Fatalf("watcher exited before READY=1: %v\n%s", err, stderr)
		default:
		}
		ready, current := false, false
		for _, m := range w.notify.since(mark) {
			ready = ready || m == "READY=1"
			current = current || (ready && strings.HasPrefix(m, "STATUS=merge current for "))
		}
		return current, fmt.Sprintf("received %q", w.notify.since(mark))
	})
	return p
}

func (w *watchEnv) status() lifecycle.Status { return statusOf(w.t, w.b) }

// stop sends SIGTERM and requires exit status 0, with nothing pending and
// the watcher no longer running afterwards.
func (w *watchEnv) stop(p *harness.Proc) string {
	w.t.Helper()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		w.t.Fatalf("SIGTERM: %v", err)
	}
	_, stderr, err := p.Wait()
	if err != nil {
		w.t.Fatalf("watcher after SIGTERM: %v\n%s", err, stderr)
	}
	st := w.status()
	if st.Watcher.Running || st.Etc.PendingPaths != 0 {
		w.t.Fatalf("status after the watcher stopped: %+v", st)
	}
	return stderr
}

// expected finalizes the fork with ostree alone after replaying every edit
// on it, and returns the manifest of its new /etc: the oracle.
func (w *watchEnv) expected(restage string) harness.Manifest {
	w.t.Helper()
	away := w.t.TempDir()
	for _, fn := range w.edits {
		fn(w.t, w.ostreeOnly.EtcDir(), away)
	}
	if restage != "" {
		w.ostreeOnly.Stage(restage)
	}
	res, err := w.ostreeOnly.FinalizeStaged(context.Background())
	if err != nil || !res.Merged {
		w.t.Fatalf("ostree-only finalize-staged: merged=%v err=%v\n%s", res.Merged, err, res.Stdout)
	}
	next := w.ostreeOnly.Sysroot.NextBoot(w.t, w.opts)
	m, err := harness.TreeManifest(next.EtcDir(), harness.ManifestOptions{Xattrs: true})
	if err != nil {
		w.t.Fatal(err)
	}
	return m
}

// converged reports whether dir's manifest is want (a tree being written
// may fail to walk: that is "not yet").
func converged(dir string, want harness.Manifest) (bool, string) {
	m, err := harness.TreeManifest(dir, harness.ManifestOptions{Xattrs: true})
	if err != nil {
		return false, err.Error()
	}
	d := m.Diff(want)
	if d == nil {
		return true, ""
	}
	if len(d) > 10 {
		d = append(d[:10], fmt.Sprintf("... %d more", len(d)-10))
	}
	return false, fmt.Sprintf("%d differences:\n%s", len(d), strings.Join(d, "\n"))
}

// waitStaged polls until the staged etc equals want: the watcher applied
// every edit by itself.
func (w *watchEnv) waitStaged(staged harness.Deployment, want harness.Manifest) {
	w.t.Helper()
	pollUntil(w.t, "the staged etc equal to ostree's merge", 120*time.Second, func() (bool, string) {
		return converged(staged.EtcDir(), want)
	})
}

// sealAndCompare runs finalize --pre, the real finalize-staged (which must
// not merge), and compares the new deployment's /etc with want.
func (w *watchEnv) sealAndCompare(want harness.Manifest) {
	w.t.Helper()
	out := w.b.MustRun("ostree-prefinalize", "finalize", "--pre")
	if st := w.status(); st.Etc.State != "sealed" || !st.Etc.Takeover {
		w.t.Fatalf("status after --pre: %+v\n%s", st, out)
	}
	res, err := w.b.FinalizeStaged(context.Background())
	if err != nil {
		w.t.Fatalf("finalize-staged: %v", err)
	}
	if res.Merged {
		w.t.Fatalf("ostree merged /etc although we took over:\n%s", res.Stdout)
	}
	next := w.s.NextBoot(w.t, w.opts)
	if ok, why := converged(next.EtcDir(), want); !ok {
		w.t.Fatalf("the new /etc differs from ostree's own merge: %s", why)
	}
}

// exists / gone / contains are conditions on a path of the staged etc.
func hasContent(p, want string) func() (bool, string) {
	return func() (bool, string) {
		b, err := os.ReadFile(p)
		if err != nil {
			return false, err.Error()
		}
		return string(b) == want, fmt.Sprintf("%s holds %q", p, b)
	}
}

func isGone(p string) func() (bool, string) {
	return func() (bool, string) {
		_, err := os.Lstat(p)
		return errors.Is(err, fs.ErrNotExist), fmt.Sprintf("%s: %v", p, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(s), 0o644))
}

// generatedEtc lists the generated regular files of the booted tree's
// usr/etc, relative to etc (the files of the new defaults' ancestors).
func generatedEtc(tr *harness.Tree) []string {
	var out []string
	for p, f := range tr.Entries {
		if strings.HasPrefix(p, "usr/etc/") && f.IsRegular() && strings.HasSuffix(p, ".conf") {
			out = append(out, strings.TrimPrefix(p, "usr/etc/"))
		}
	}
	sort.Strings(out)
	return out
}

// generatedDirs lists the generated directories of the booted tree's
// usr/etc, relative to etc: they exist in orig, in the booted etc and in
// the new defaults.
func generatedDirs(tr *harness.Tree) []string {
	var out []string
	for p, f := range tr.Entries {
		if strings.HasPrefix(p, "usr/etc/") && f.Dir && strings.HasSuffix(p, ".d") {
			out = append(out, strings.TrimPrefix(p, "usr/etc/"))
		}
	}
	sort.Strings(out)
	return out
}

// 1. Edits made while watching reach the staged etc; SIGTERM applies what
// is pending and exits 0; the seal and ostree's finalization give exactly
// ostree's merge.
func TestWatchEditsReachStagedEtc(t *testing.T) {
	harness.ForEachOracle(t, testWatchEditsReachStagedEtc)
}

func testWatchEditsReachStagedEtc(t *testing.T) {
	w := newWatchEnv(t, watchOptions{seed: 11})
	p := w.startWatcher()
	staged := w.staged.EtcDir()
	gen := generatedEtc(w.tree)

	w.edit(func(t *testing.T, etc, _ string) { writeFile(t, filepath.Join(etc, "watched.conf"), "one\n") })
	pollUntil(t, "a new file", 30*time.Second, hasContent(filepath.Join(staged, "watched.conf"), "one\n"))

	w.edit(func(t *testing.T, etc, _ string) { writeFile(t, filepath.Join(etc, "watched.conf"), "two\n") })
	pollUntil(t, "a modified file", 30*time.Second, hasContent(filepath.Join(staged, "watched.conf"), "two\n"))

	w.edit(func(t *testing.T, etc, _ string) {
		writeFile(t, filepath.Join(etc, "new.d/deep/er/f"), "deep\n")
		must(t, os.Symlink("er/f", filepath.Join(etc, "new.d/deep/link")))
	})
	pollUntil(t, "a new directory tree", 30*time.Second, hasContent(filepath.Join(staged, "new.d/deep/link"), "deep\n"))

	w.edit(func(t *testing.T, etc, _ string) { must(t, os.Remove(filepath.Join(etc, gen[0]))) })
	pollUntil(t, "a removed default", 30*time.Second, isGone(filepath.Join(staged, gen[0])))

	w.edit(func(t *testing.T, etc, _ string) { must(t, os.RemoveAll(filepath.Join(etc, "early.d"))) })
	pollUntil(t, "a removed local directory", 30*time.Second, isGone(filepath.Join(staged, "early.d")))

	w.edit(func(t *testing.T, etc, _ string) {
		must(t, os.Chmod(filepath.Join(etc, gen[1]), 0o600))
		must(t, os.Lchown(filepath.Join(etc, gen[2]), 1000, 1001))
	})
	pollUntil(t, "mode and owner", 30*time.Second, func() (bool, string) {
		a, err1 := os.Lstat(filepath.Join(staged, gen[1]))
		b, err2 := os.Lstat(filepath.Join(staged, gen[2]))
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		uid := b.Sys().(*syscall.Stat_t).Uid
		return a.Mode().Perm() == 0o600 && uid == 1000, fmt.Sprintf("mode %v uid %d", a.Mode(), uid)
	})

	// The last edit is followed at once by SIGTERM: its event may not even
	// have been read, and the watcher must still apply it before exiting.
	w.edit(func(t *testing.T, etc, _ string) { writeFile(t, filepath.Join(etc, "hostname"), "at-shutdown\n") })
	stderr := w.stop(p)
	want := w.expected("")
	if ok, why := converged(staged, want); !ok {
		t.Fatalf("after SIGTERM the staged etc is not ostree's merge: %s\nwatcher log:\n%s", why, stderr)
	}
	w.sealAndCompare(want)
}

// burstEdit is n random operations (create, modify, remove, chmod, chown,
// rename, symlink, directory creation and removal) over 60 new directories
// and the generated defaults, deterministic in seed.
func burstEdit(seed uint64, n int, gen []string) editFn {
	return func(t *testing.T, etc, _ string) {
		r := rand.New(rand.NewPCG(seed, 5))
		for i := 0; i < n; i++ {
			d := filepath.Join(etc, fmt.Sprintf("burst/b%02d", r.IntN(60)))
			f := filepath.Join(d, fmt.Sprintf("f%03d", r.IntN(100)))
			g := filepath.Join(etc, gen[r.IntN(len(gen))])
			k := r.IntN(20)
			aux := r.IntN(1 << 16)
			switch {
			case k < 8:
				os.MkdirAll(d, 0o755)
				os.WriteFile(f, []byte(fmt.Sprintf("%d %d\n", i, aux)), 0o644)
			case k < 10:
				os.Remove(f)
			case k < 11:
				os.Chmod(f, fs.FileMode(0o600|aux&0o77))
			case k < 12:
				os.Lchown(f, 1000+aux%3, 1000)
			case k < 13:
				sub := filepath.Join(d, fmt.Sprintf("s%d", aux%4))
				os.MkdirAll(sub, 0o750)
				os.WriteFile(filepath.Join(sub, "g"), []byte(fmt.Sprint(i)), 0o640)
			case k < 14:
				os.RemoveAll(filepath.Join(d, fmt.Sprintf("s%d", aux%4)))
			case k < 15:
				os.Rename(f, filepath.Join(etc, fmt.Sprintf("burst/b%02d/f%03d", aux%60, aux%100)))
			case k < 16:
				os.Symlink(fmt.Sprintf("f%03d", aux%100), f)
			case k < 18:
				os.WriteFile(g, []byte(fmt.Sprintf("default changed %d\n", i)), 0o644)
			case k < 19:
				os.Chmod(g, fs.FileMode(0o600|aux&0o77))
			default:
				os.Remove(g)
			}
		}
	}
}

// floodEdit makes n attribute events that the kernel cannot coalesce
// (chmod alternating over 8 files): more than inotify's queue holds
// (fs.inotify.max_queued_events, 16384 by default) when nobody reads. The
// files are in etc itself, whose watch exists (a new directory would be
// watched only once its creation event has been read).
func floodEdit(n int) editFn {
	return func(t *testing.T, etc, _ string) {
		var fs []string
		for k := 0; k < 8; k++ {
			f := filepath.Join(etc, fmt.Sprintf("flood%d.conf", k))
			writeFile(t, f, "flood\n")
			fs = append(fs, f)
		}
		for i := 0; i < n; i++ {
			must(t, os.Chmod(fs[i%8], 0o600|os.FileMode(i/8%64)))
		}
	}
}

// floodSize is enough events to overflow this machine's inotify queue
// even after the reader's buffer took its share.
func floodSize(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	must(t, err)
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	must(t, err)
	return 2*n + 8192
}

// stagedTmps lists the temporary files of unfinished writes in dir: one
// there means the watcher is applying a batch right now.
func stagedTmps(dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".prefinalize-tmp-") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// 2. A burst of 10,000 operations across many directories, then, while the
// watcher applies it (and so reads no events), a flood that overflows the
// kernel queue: the watcher rescans and still ends in the exact merge.
func TestWatchBurst(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	w := newWatchEnv(t, watchOptions{seed: 12, etc: &harness.Shape{Files: 300, Dirs: 40, Depth: 3, MinSize: 16, MaxSize: 200}})
	t.Logf("burst seed %d", seed)
	p := w.startWatcher()
	start := time.Now()
	w.edit(burstEdit(seed, 10000, generatedEtc(w.tree)))
	t.Logf("burst of 10,000 operations took %s", time.Since(start))
	pollUntil(t, "the watcher applying the burst", 60*time.Second, func() (bool, string) {
		return len(stagedTmps(w.staged.EtcDir())) > 0, "no write in progress"
	})
	w.edit(floodEdit(floodSize(t)))
	want := w.expected("")
	w.waitStaged(w.staged, want)
	t.Logf("staged etc exact %s after the burst started", time.Since(start))
	stderr := w.stop(p)
	t.Logf("batches applied: %d; rescans: %d overflow, %d in all", strings.Count(stderr, "msg=applied"),
		strings.Count(stderr, "reason=overflow"), strings.Count(stderr, "rescan=true"))
	if testing.Verbose() {
		t.Logf("watcher log:\n%s", stderr)
	}
	if !strings.Contains(stderr, "reason=overflow") {
		t.Errorf("the flood did not overflow the inotify queue: the overflow path was not exercised")
	}
	w.sealAndCompare(want)
}

// 3. A watched directory renamed out of etc and back, with edits in
// between, on both sides of the rename.
func TestWatchDirectoryRenamedAwayAndBack(t *testing.T) {
	w := newWatchEnv(t, watchOptions{seed: 13})
	p := w.startWatcher()
	staged := w.staged.EtcDir()
	w.edit(func(t *testing.T, etc, _ string) {
		writeFile(t, filepath.Join(etc, "moving/inner/a.conf"), "a\n")
		writeFile(t, filepath.Join(etc, "moving/b.conf"), "b\n")
	})
	pollUntil(t, "the directory", 30*time.Second, hasContent(filepath.Join(staged, "moving/inner/a.conf"), "a\n"))

	w.edit(func(t *testing.T, etc, away string) {
		must(t, os.Rename(filepath.Join(etc, "moving"), filepath.Join(away, "moving")))
	})
	pollUntil(t, "the directory gone", 30*time.Second, isGone(filepath.Join(staged, "moving")))

	// Edits while away are not in etc; one edit in etc meanwhile.
	w.edit(func(t *testing.T, etc, away string) {
		writeFile(t, filepath.Join(away, "moving/inner/a.conf"), "changed away\n")
		writeFile(t, filepath.Join(away, "moving/inner/new.conf"), "new away\n")
		must(t, os.Remove(filepath.Join(away, "moving/b.conf")))
		writeFile(t, filepath.Join(etc, "meanwhile.conf"), "meanwhile\n")
	})
	pollUntil(t, "the edit meanwhile", 30*time.Second, hasContent(filepath.Join(staged, "meanwhile.conf"), "meanwhile\n"))
	if _, err := os.Lstat(filepath.Join(staged, "moving")); err == nil {
		t.Fatal("the renamed-away directory came back in the staged etc")
	}

	w.edit(func(t *testing.T, etc, away string) {
		must(t, os.Rename(filepath.Join(away, "moving"), filepath.Join(etc, "moving")))
	})
	pollUntil(t, "the directory back with what changed away", 30*time.Second,
		hasContent(filepath.Join(staged, "moving/inner/new.conf"), "new away\n"))

	// Edits below the directory after it came back must be seen (its
	// watches are new) and so must a second rename inside etc.
	w.edit(func(t *testing.T, etc, _ string) {
		writeFile(t, filepath.Join(etc, "moving/inner/after.conf"), "after\n")
	})
	pollUntil(t, "an edit inside the returned directory", 30*time.Second,
		hasContent(filepath.Join(staged, "moving/inner/after.conf"), "after\n"))
	w.edit(func(t *testing.T, etc, _ string) {
		must(t, os.Rename(filepath.Join(etc, "moving"), filepath.Join(etc, "moved")))
		writeFile(t, filepath.Join(etc, "moved/inner/later.conf"), "later\n")
	})
	pollUntil(t, "a rename inside etc", 30*time.Second, hasContent(filepath.Join(staged, "moved/inner/later.conf"), "later\n"))

	want := w.expected("")
	w.waitStaged(w.staged, want)
	w.stop(p)
	w.sealAndCompare(want)
}

// 4. The watcher killed with SIGKILL while it applies a big batch, in the
// middle of writing a file: the seal still produces the exact merge, and
// the temporary file of the interrupted write is gone.
func TestWatchKilledMidBatch(t *testing.T) {
	w := newWatchEnv(t, watchOptions{seed: 14, etc: &harness.Shape{Files: 1000, Dirs: 20, Depth: 2, MinSize: 16, MaxSize: 200}})
	p := w.startWatcher()
	staged := w.staged.EtcDir()
	// Every default rewritten in place: the files' directories keep their
	// stat, so a temporary file that an interrupted write leaves in the
	// staged etc is not in any directory the seal would reconcile anyway.
	gen := generatedEtc(w.tree)
	w.edit(func(t *testing.T, etc, _ string) {
		for i, g := range gen {
			// Large enough that most of a write is the copy and its fsync.
			data := fmt.Sprintf("rewritten %d\n%s", i, strings.Repeat(fmt.Sprintf("line %d\n", i), 4000))
			must(t, os.WriteFile(filepath.Join(etc, g), []byte(data), 0o644))
		}
	})
	// Kill it while a write is half done: stop it when a temporary file
	// is in the staged etc, and kill it if one still is (else let it run
	// on and look again).
	tmps := func() []string { return stagedTmps(staged) }
	var left []string
	pollUntil(t, "the watcher stopped in the middle of a write", 60*time.Second, func() (bool, string) {
		if len(tmps()) == 0 {
			return false, "no temporary file seen"
		}
		must(t, p.Signal(syscall.SIGSTOP))
		if left = tmps(); len(left) > 0 {
			return true, ""
		}
		must(t, p.Signal(syscall.SIGCONT))
		return false, "the write ended before the watcher stopped"
	})
	must(t, p.Signal(syscall.SIGKILL))
	if _, _, err := p.Wait(); err == nil {
		t.Fatal("the watcher exited 0 after SIGKILL")
	}
	st := w.status()
	t.Logf("after SIGKILL: temporary files left %q, status %+v", left, st.Etc)
	if st.Watcher.Running {
		t.Fatalf("a killed watcher shows as running: %+v", st)
	}
	// More edits after the kill, seen only by the seal; in place, so no
	// directory's stat changes.
	w.edit(func(t *testing.T, etc, _ string) {
		for _, g := range gen[:10] {
			must(t, os.WriteFile(filepath.Join(etc, g), []byte("after the kill\n"), 0o644))
		}
	})
	want := w.expected("")
	w.sealAndCompare(want)
}

// 5. status answers while the watcher runs: running, the pending paths of
// an open debounce window, and not running after it stopped.
func TestWatchStatus(t *testing.T) {
	w := newWatchEnv(t, watchOptions{seed: 15})
	if st := w.status(); st.Watcher.Running {
		t.Fatalf("watcher running before it started: %+v", st)
	}
	p := w.startWatcher("--debounce", "1h")
	staged := w.staged.EtcDir()
	pollUntil(t, "watcher.running", 30*time.Second, func() (bool, string) {
		st := w.status()
		return st.Watcher.Running, fmt.Sprintf("%+v", st)
	})
	w.edit(func(t *testing.T, etc, _ string) {
		writeFile(t, filepath.Join(etc, "pending-a.conf"), "a\n")
		writeFile(t, filepath.Join(etc, "pending-b.conf"), "b\n")
	})
	pollUntil(t, "pending paths in status", 30*time.Second, func() (bool, string) {
		st := w.status()
		return st.Watcher.Running && st.Etc.PendingPaths >= 2 && st.Etc.State == "dirty", fmt.Sprintf("%+v", st)
	})
	// The window is an hour long: nothing applied yet.
	if _, err := os.Lstat(filepath.Join(staged, "pending-a.conf")); err == nil {
		t.Fatal("a pending path was applied inside the debounce window")
	}
	want := w.expected("")
	w.stop(p) // checks running false, pending 0
	if ok, why := converged(staged, want); !ok {
		t.Fatalf("SIGTERM did not apply the pending paths: %s", why)
	}
	if st := w.status(); st.Etc.State != "precomputed" {
		t.Fatalf("status after stop: %+v", st)
	}
	w.sealAndCompare(want)
}

// 6. A re-stage while watching (a newer commit staged by ostree): the
// watcher rebuilds the state for the new staged deployment, whose merge
// ends exact.
func TestWatchRestage(t *testing.T) {
	w := newWatchEnv(t, watchOptions{seed: 16, next: true})
	p := w.startWatcher()
	w.edit(func(t *testing.T, etc, _ string) { writeFile(t, filepath.Join(etc, "before-restage.conf"), "1\n") })
	pollUntil(t, "an edit for the first staged deployment", 30*time.Second,
		hasContent(filepath.Join(w.staged.EtcDir(), "before-restage.conf"), "1\n"))

	mark := w.notify.mark()
	staged2 := w.b.Stage("testos/next")
	if staged2.Checksum == w.staged.Checksum {
		t.Fatalf("re-stage staged the same commit %s", staged2.Checksum)
	}
	pollUntil(t, "the watcher rebuilt for the new staged deployment", 60*time.Second, func() (bool, string) {
		st := w.status()
		ok := st.Staged != nil && st.Staged.Checksum == staged2.Checksum && st.Etc.Takeover &&
			(st.Etc.State == "precomputed" || st.Etc.State == "dirty")
		watching := false
		for _, m := range w.notify.since(mark) {
			watching = watching || (strings.HasPrefix(m, "STATUS=watching") && strings.Contains(m, staged2.Checksum))
		}
		return ok && watching, fmt.Sprintf("%+v; notified %q", st, w.notify.since(mark))
	})
	w.edit(func(t *testing.T, etc, _ string) {
		writeFile(t, filepath.Join(etc, "after-restage.conf"), "2\n")
		writeFile(t, filepath.Join(etc, "before-restage.conf"), "changed\n")
	})
	pollUntil(t, "an edit for the new staged deployment", 30*time.Second,
		hasContent(filepath.Join(staged2.EtcDir(), "after-restage.conf"), "2\n"))
	want := w.expected("testos/next")
	w.waitStaged(staged2, want)
	w.stop(p)
	w.sealAndCompare(want)
}

// 7. sd_notify: READY=1 (and STATUS= lines) reach NOTIFY_SOCKET.
func TestWatchNotify(t *testing.T) {
	w := newWatchEnv(t, watchOptions{seed: 17})
	mark := w.notify.mark()
	p := w.startWatcher() // waits for READY=1
	msgs := w.notify.since(mark)
	ready := false
	for _, m := range msgs {
		ready = ready || m == "READY=1"
	}
	if !ready {
		t.Fatalf("no READY=1 in %q", msgs)
	}
	pollUntil(t, "STATUS=watching", 30*time.Second, func() (bool, string) {
		for _, m := range w.notify.since(mark) {
			if strings.HasPrefix(m, "STATUS=watching ") && strings.Contains(m, w.staged.Checksum) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%q", w.notify.since(mark))
	})
	w.stop(p)
	if n := strings.Count(strings.Join(w.notify.since(mark), "\n"), "READY=1"); n != 1 {
		t.Fatalf("READY=1 sent %d times: %q", n, w.notify.since(mark))
	}
}
