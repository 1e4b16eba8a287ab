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
	// A debounce long enough that, even on a loaded machine, the writes come
	// faster than it: they pile up into few batches.
	_, m, _, _ := start(t, root, Options{DirLimit: limit, Debounce: 500 * time.Millisecond})
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

// While batches are held back after a failure, the pending set stays
// within MaxPending: past it the paths are dropped and the next batch is
// a Rescan that brings the mirror level.
func TestPendingCapWhileBackingOff(t *testing.T) {
	root := t.TempDir()
	for i := range 7 {
		// Directories watched from the start: every file is an event.
		if err := os.Mkdir(filepath.Join(root, fmt.Sprintf("d%d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const maxPending = 10
	w, err := New(root, Options{Debounce: 2 * time.Millisecond, MaxDelay: 5 * time.Millisecond, MaxPending: maxPending,
		RetryMin: 2 * time.Second, RetryMax: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	m := newMirror(root)
	var fail atomic.Int32
	fail.Store(1)
	var mu sync.Mutex
	var log []Batch
	handle := func(ctx context.Context, b Batch) error {
		mu.Lock()
		log = append(log, b)
		mu.Unlock()
		if fail.Load() > 0 && b.Reason != "start" {
			return Retry(errors.New("failing"))
		}
		return m.handle(ctx, b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, handle) }()
	defer func() { cancel(); <-done }()
	failed := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, b := range log {
			if b.Reason != "start" {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		mu.Lock()
		started := len(log) > 0
		mu.Unlock()
		if started {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no start batch")
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	// One failed batch, then many paths while the watcher backs off.
	write(t, filepath.Join(root, "first"), "x")
	for deadline := time.Now().Add(20 * time.Second); failed() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no failed batch")
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	for i := range 100 {
		write(t, filepath.Join(root, fmt.Sprintf("d%d", i%7), fmt.Sprintf("f%d", i)), "x")
	}
	fail.Store(0)
	converge(t, m)
	mu.Lock()
	defer mu.Unlock()
	for _, b := range log {
		t.Logf("batch: rescan %v (%s), %d paths", b.Rescan, b.Reason, len(b.Paths))
		if len(b.Paths) > maxPending {
			t.Fatalf("a batch carries %d paths, cap %d (reason %q)", len(b.Paths), maxPending, b.Reason)
		}
	}
}
