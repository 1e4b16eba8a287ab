package watch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A flood in one directory is collapsed into the directory: no batch
// carries more than DirLimit of its entries, and the mirror (which takes a
// directory path as its subtree) still converges.
func TestDirFloodCollapses(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "svc"), 0o755)
	const limit = 16
	_, m, _, _ := start(t, root, Options{DirLimit: limit, Debounce: 50 * time.Millisecond})
	for i := range 500 {
		write(t, filepath.Join(root, "svc", fmt.Sprintf("f%d", i)), "x")
	}
	write(t, filepath.Join(root, "other"), "y")
	converge(t, m)
	m.mu.Lock()
	defer m.mu.Unlock()
	collapsed := false
	for _, b := range m.log {
		if len(b.Paths) > limit+1 {
			t.Fatalf("a batch carries %d paths (directory bound %d): %v", len(b.Paths), limit, b.Paths[:limit+2])
		}
		for _, p := range b.Paths {
			collapsed = collapsed || p == "svc"
		}
	}
	if !collapsed {
		t.Fatal("the flooded directory never stood for its entries")
	}
}

// A handler that keeps failing with Retry is called with backoff, not once
// per batch of events; the paths it failed on come back, and once it
// succeeds a Rescan batch brings the mirror level.
func TestRetryBacksOff(t *testing.T) {
	root := t.TempDir()
	w, err := New(root, Options{Debounce: 2 * time.Millisecond, MaxDelay: 5 * time.Millisecond,
		RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	m := newMirror(root)
	var failing atomic.Bool
	failing.Store(true)
	var mu sync.Mutex
	var failed, after []Batch
	handle := func(ctx context.Context, b Batch) error {
		if failing.Load() {
			mu.Lock()
			failed = append(failed, b)
			mu.Unlock()
			return Retry(errors.New("racing writer"))
		}
		mu.Lock()
		after = append(after, b)
		mu.Unlock()
		return m.handle(ctx, b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, handle) }()
	defer func() { cancel(); <-done }()
	// A writer that never stops for a second: without backoff every
	// few milliseconds would make a batch.
	begin := time.Now()
	var writes int
	for time.Since(begin) < time.Second {
		write(t, filepath.Join(root, fmt.Sprintf("f%d", writes%50)), fmt.Sprint(writes))
		writes++
	}
	elapsed := time.Since(begin)
	mu.Lock()
	n := len(failed)
	mu.Unlock()
	// The backoff doubles from 50ms to 200ms: over the writer's time at
	// most 2 + elapsed/50ms calls even on a fast machine (counted against
	// the time that passed, so a slow machine only makes fewer).
	if bound := 2 + int(elapsed/(50*time.Millisecond)); n > bound {
		t.Fatalf("%d failing batches in %v (%d writes): no backoff (bound %d)", n, elapsed, writes, bound)
	}
	t.Logf("%d failing batches in %v for %d writes", n, elapsed, writes)
	failing.Store(false)
	converge(t, m)
	mu.Lock()
	defer mu.Unlock()
	if len(after) == 0 || !after[0].Rescan {
		t.Fatalf("first batch after the failures %+v, want a Rescan", after)
	}
}
