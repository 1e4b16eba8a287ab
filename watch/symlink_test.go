package watch

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// watchedInodes reads the inodes the inotify instance watches from
// /proc/self/fdinfo (the kernel's own account, not the watcher's).
// Every inotify instance of the process counts (the watcher replaces its
// instance when it rebuilds).
func watchedInodes(t *testing.T) map[uint64]bool {
	t.Helper()
	out := map[uint64]bool{}
	ents, err := os.ReadDir("/proc/self/fdinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		addInodes(t, string(b), out)
	}
	return out
}

func addInodes(t *testing.T, fdinfo string, out map[uint64]bool) {
	sc := bufio.NewScanner(strings.NewReader(fdinfo))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "inotify ") {
			continue
		}
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "ino:"); ok {
				n, err := strconv.ParseUint(v, 16, 64)
				if err != nil {
					t.Fatal(err)
				}
				out[n] = true
			}
		}
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

func TestOpenDirRefusesSymlinks(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	os.Mkdir(filepath.Join(root, "d"), 0o755)
	os.Symlink(outside, filepath.Join(root, "link"))
	os.Symlink(outside, filepath.Join(root, "d", "link"))
	os.Symlink("..", filepath.Join(root, "up"))
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, name := range []string{"link", "d/link", "up", "up/x", "..", "d/../.."} {
		if cfd, err := openDir(fd, name); err == nil {
			unix.Close(cfd)
			t.Errorf("openDir(%q) followed a symlink or left the tree", name)
		}
	}
	cfd, err := openDir(fd, "d")
	if err != nil {
		t.Fatalf("openDir(d): %v", err)
	}
	unix.Close(cfd)
}

// TestSymlinkSwapNeverWatchesOutside: a writer swapping a directory and a
// symlink to a directory outside the tree, in a loop, never gets a watch
// placed on the outside directory (checked against the kernel's list).
func TestSymlinkSwapNeverWatchesOutside(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	os.Mkdir(secret, 0o700)
	os.Mkdir(filepath.Join(secret, "sub"), 0o700)
	forbidden := map[uint64]bool{inode(t, outside): true, inode(t, secret): true, inode(t, filepath.Join(secret, "sub")): true}
	os.Symlink(outside, filepath.Join(root, "static-link"))
	start(t, root, Options{})
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d, l, tmp := filepath.Join(root, "d"), filepath.Join(root, "l"), filepath.Join(root, "tmp")
		for i := 0; !stop.Load(); i++ {
			os.Mkdir(d, 0o755)
			os.Mkdir(filepath.Join(d, "x"), 0o755)
			os.Symlink(secret, l)
			// d (a directory) and l (a symlink to secret) trade places.
			os.Rename(d, tmp)
			os.Rename(l, d)
			os.Rename(tmp, l)
			os.Rename(l, tmp)
			os.Rename(d, l)
			os.RemoveAll(tmp)
			os.Remove(l)
			os.RemoveAll(d)
		}
	}()
	// The watcher runs on its own goroutine; sample what the kernel
	// watches while the swaps go on.
	for i := 0; i < 2000; i++ {
		for ino := range watchedInodes(t) {
			if forbidden[ino] {
				stop.Store(true)
				wg.Wait()
				t.Fatalf("inode %d outside the tree is watched (sample %d)", ino, i)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
}

func TestBudgetDegradesToRescan(t *testing.T) {
	root := t.TempDir()
	for i := range 10 {
		os.MkdirAll(filepath.Join(root, fmt.Sprint(i), "x"), 0o755)
	}
	var mu sync.Mutex
	var modes []string
	w, err := New(root, Options{MaxWatches: 5, Debounce: 10 * time.Millisecond, RescanEvery: 20 * time.Millisecond, Mode: func(m, r string) {
		mu.Lock()
		modes = append(modes, m+": "+r)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if m, r := w.Mode(); m != ModeRescan || !strings.Contains(r, "no space") {
		t.Fatalf("mode %q (%s), want rescan after ENOSPC", m, r)
	}
	m := newMirror(root)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, m.handle) }()
	defer func() { cancel(); <-done }()
	write(t, filepath.Join(root, "3", "x", "f"), "hello")
	converge(t, m)
	// Periodic rescans keep coming: no inotify, yet the mirror follows.
	n := m.batches()
	write(t, filepath.Join(root, "7", "g"), "again")
	converge(t, m)
	for m.batches() < n+2 {
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	mu.Lock()
	defer mu.Unlock()
	if len(modes) == 0 || !strings.HasPrefix(modes[0], ModeRescan) {
		t.Fatalf("Mode told %q, want rescan first", modes)
	}
}
