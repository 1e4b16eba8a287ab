package watch

import (
	"context"
	"fmt"
	"io/fs"
	"maps"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// mirror is a handler that keeps a copy of the tree's state (path ->
// type+content) using only what the batches tell it: if the watcher ever
// misses a change, the mirror diverges from the tree for good.
type mirror struct {
	root string
	mu   sync.Mutex
	m    map[string]string
	log  []Batch
}

func newMirror(root string) *mirror { return &mirror{root: root, m: map[string]string{}} }

func describe(path string) (string, bool) {
	st, err := os.Lstat(path)
	if err != nil {
		return "", false
	}
	switch {
	case st.IsDir():
		return fmt.Sprintf("dir %o", st.Mode().Perm()), true
	case st.Mode()&fs.ModeSymlink != 0:
		t, _ := os.Readlink(path)
		return "link " + t, true
	default:
		b, _ := os.ReadFile(path)
		return fmt.Sprintf("file %o %s", st.Mode().Perm(), b), true
	}
}

// snapshot reads the whole tree below rel ("" = all) into dst.
func snapshot(root, rel string, dst map[string]string) {
	base := root
	if rel != "" {
		base = filepath.Join(root, rel)
	}
	filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		r, _ := filepath.Rel(root, p)
		if r == "." {
			return nil
		}
		if desc, ok := describe(p); ok {
			dst[r] = desc
		}
		return nil
	})
}

func (m *mirror) handle(_ context.Context, b Batch) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.log = append(m.log, b)
	if b.Rescan {
		m.m = map[string]string{}
		snapshot(m.root, "", m.m)
		return nil
	}
	for _, p := range b.Paths {
		for k := range m.m {
			if k == p || strings.HasPrefix(k, p+"/") {
				delete(m.m, k)
			}
		}
		if desc, ok := describe(filepath.Join(m.root, p)); ok {
			m.m[p] = desc
			if strings.HasPrefix(desc, "dir") {
				snapshot(m.root, p, m.m)
			}
		}
	}
	return nil
}

func (m *mirror) batches() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.log)
}

func (m *mirror) equal() (bool, string) {
	want := map[string]string{}
	snapshot(m.root, "", want)
	m.mu.Lock()
	defer m.mu.Unlock()
	if maps.Equal(want, m.m) {
		return true, ""
	}
	for k, v := range want {
		if m.m[k] != v {
			return false, fmt.Sprintf("%s: tree %q, mirror %q", k, v, m.m[k])
		}
	}
	for k, v := range m.m {
		if _, ok := want[k]; !ok {
			return false, fmt.Sprintf("%s: gone from tree, mirror %q", k, v)
		}
	}
	return false, "?"
}

// start runs a watcher on root with a mirror handler.
func start(t *testing.T, root string, opts Options) (*Watcher, *mirror, context.CancelFunc, chan error) {
	t.Helper()
	if opts.Debounce == 0 {
		opts.Debounce = 20 * time.Millisecond
	}
	w, err := New(root, opts)
	if err != nil {
		t.Fatal(err)
	}
	m := newMirror(root)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, m.handle) }()
	t.Cleanup(func() {
		cancel()
		<-done
		w.Close()
	})
	// The first batch (the start rescan) tells us the handler is live.
	deadline := time.Now().Add(10 * time.Second)
	for m.batches() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no start batch")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return w, m, cancel, done
}

// converge polls until the mirror equals the tree, with a deadline.
func converge(t *testing.T, m *mirror) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var why string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, why = m.equal(); ok {
			return
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Fatalf("mirror never converged: %s", why)
}

func write(t *testing.T, p, s string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestEditsReachHandler(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "a/b/c.conf"), "1")
	_, m, _, _ := start(t, root, Options{})
	converge(t, m)
	write(t, filepath.Join(root, "a/b/c.conf"), "2")
	os.Chmod(filepath.Join(root, "a/b/c.conf"), 0o600)
	write(t, filepath.Join(root, "new/deep/dir/x"), "x")
	os.Symlink("target", filepath.Join(root, "new/link"))
	os.Remove(filepath.Join(root, "a/b/c.conf"))
	os.MkdirAll(filepath.Join(root, "d1/d2/d3"), 0o700)
	write(t, filepath.Join(root, "d1/d2/d3/f"), "f")
	converge(t, m)
	if !m.log[0].Rescan || m.log[0].Reason != "start" {
		t.Fatalf("first batch = %+v, want a start rescan", m.log[0])
	}
}

// A burst of 10,000 events, with the handler slow so the kernel queue may
// overflow: whatever happens, the mirror ends exact.
func TestBurst(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewSource(seed))
	root := t.TempDir()
	_, m, _, _ := start(t, root, Options{MaxPaths: 512})
	converge(t, m)
	for i := 0; i < 10000; i++ {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", r.Intn(50)))
		switch r.Intn(4) {
		case 0, 1:
			write(t, filepath.Join(dir, fmt.Sprintf("f%03d", r.Intn(200))), fmt.Sprint(i))
		case 2:
			os.Remove(filepath.Join(dir, fmt.Sprintf("f%03d", r.Intn(200))))
		case 3:
			os.Chmod(filepath.Join(dir, fmt.Sprintf("f%03d", r.Intn(200))), fs.FileMode(0o600+r.Intn(0o77)))
		}
	}
	converge(t, m)
}

func TestDirectoryRenamedAwayAndBack(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	write(t, filepath.Join(root, "sub/inner/f"), "1")
	_, m, _, _ := start(t, root, Options{})
	converge(t, m)
	if err := os.Rename(filepath.Join(root, "sub"), filepath.Join(outside, "sub")); err != nil {
		t.Fatal(err)
	}
	converge(t, m)
	// Changes made while away are not ours; once back they must show.
	write(t, filepath.Join(outside, "sub/inner/f"), "changed while away")
	write(t, filepath.Join(outside, "sub/inner/g"), "new while away")
	if err := os.Rename(filepath.Join(outside, "sub"), filepath.Join(root, "sub2")); err != nil {
		t.Fatal(err)
	}
	converge(t, m)
	// Edits inside the moved-back tree are seen under their new names.
	write(t, filepath.Join(root, "sub2/inner/f"), "after")
	converge(t, m)
	// Rename within the tree.
	if err := os.Rename(filepath.Join(root, "sub2"), filepath.Join(root, "sub3")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "sub3/inner/h"), "h")
	converge(t, m)
}

func TestOverflowForcesRescan(t *testing.T) {
	root := t.TempDir()
	w, m, _, _ := start(t, root, Options{})
	converge(t, m)
	w.injectFault(errOverflow)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var found bool
		m.mu.Lock()
		for _, b := range m.log {
			found = found || (b.Rescan && b.Reason == "overflow")
		}
		m.mu.Unlock()
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no rescan after an injected overflow")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Cancelling Run (SIGTERM in the command) flushes what is pending.
func TestCancelFlushesPending(t *testing.T) {
	root := t.TempDir()
	var queued sync.Map
	_, m, cancel, done := start(t, root, Options{Debounce: time.Hour, MaxDelay: time.Hour, Queued: func(p []string) {
		for _, s := range p {
			queued.Store(s, true)
		}
	}})
	converge(t, m)
	write(t, filepath.Join(root, "late"), "x")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := queued.Load("late"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("path never queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup
	if ok, why := m.equal(); !ok {
		t.Fatalf("pending path not flushed on cancel: %s", why)
	}
	// The last batch is a rescan (a change still on its way from the
	// kernel is covered too) and still names what was pending.
	last := m.log[len(m.log)-1]
	if !last.Rescan || last.Reason != "stop" || !slices.Contains(last.Paths, "late") {
		t.Fatalf("last batch %+v, want a stop rescan naming late", last)
	}
}

// A long debounce is not cut short by the default MaxDelay.
func TestMaxDelayDefaultFollowsDebounce(t *testing.T) {
	o := Options{Debounce: time.Hour}
	o.defaults()
	if o.MaxDelay != time.Hour {
		t.Fatalf("MaxDelay = %v for a debounce of an hour", o.MaxDelay)
	}
	o = Options{}
	o.defaults()
	if o.Debounce != 250*time.Millisecond || o.MaxDelay != 2*time.Second {
		t.Fatalf("defaults: %+v", o)
	}
}

// A slow Queued (the store's fsync) neither stalls the events nor gets one
// call per path: calls are coalesced, and they never overlap a batch (so a
// Queued call never records paths that the batch in progress is applying).
func TestSlowQueuedIsCoalesced(t *testing.T) {
	root := t.TempDir()
	var calls, told, overlaps atomic.Int64
	var inQueued, inHandler atomic.Bool
	w, err := New(root, Options{Queued: func(p []string) {
		inQueued.Store(true)
		defer inQueued.Store(false)
		if inHandler.Load() {
			overlaps.Add(1)
		}
		time.Sleep(20 * time.Millisecond) // a slow store transaction, not synchronisation
		if inHandler.Load() {
			overlaps.Add(1)
		}
		calls.Add(1)
		told.Add(int64(len(p)))
	}})
	if err != nil {
		t.Fatal(err)
	}
	m := newMirror(root)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- w.Run(ctx, func(ctx context.Context, b Batch) error {
			inHandler.Store(true)
			defer inHandler.Store(false)
			if inQueued.Load() {
				overlaps.Add(1)
			}
			return m.handle(ctx, b)
		})
	}()
	defer func() {
		cancel()
		<-done
		w.Close()
	}()
	converge(t, m)
	for i := 0; i < 2000; i++ {
		write(t, filepath.Join(root, fmt.Sprintf("d%d/f%d", i%20, i)), "x")
	}
	converge(t, m)
	rescans := 0
	m.mu.Lock()
	for _, b := range m.log[1:] {
		if b.Rescan {
			rescans++
		}
	}
	m.mu.Unlock()
	t.Logf("%d Queued calls told %d paths; %d rescans", calls.Load(), told.Load(), rescans)
	// Reading events never waits for Queued, so the kernel queue does not
	// overflow (no rescan) and most paths are told (those that a batch
	// took before their call need not be), in few calls. (Called inline,
	// one 20ms call per event, it told under 100.)
	if rescans > 0 || told.Load() < 1500 || calls.Load() > told.Load()/10 {
		t.Fatalf("%d Queued calls told %d of 2,020 paths, %d rescans: events stalled or calls not coalesced", calls.Load(), told.Load(), rescans)
	}
	if overlaps.Load() > 0 {
		t.Fatalf("Queued ran while a batch was handled (%d times)", overlaps.Load())
	}
}
