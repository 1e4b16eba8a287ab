// Package watch turns inotify events under a directory tree (the booted
// /etc) into debounced batches of changed paths.
//
// # Contract
//
// The watch set is established before the caller's first full scan: New adds
// a watch on every directory, and the first batch Run delivers is a Rescan.
// From then on every change under the root reaches the handler either as a
// path in a batch or through a later Rescan batch. Whenever the watcher
// cannot vouch for its watch set (queue overflow, a watched directory renamed,
// an error adding a watch, an error from inotify), it rebuilds the watch set
// from scratch and then delivers a Rescan batch: never a silent miss.
//
// Paths are relative to the root, cleaned, without a leading slash. A path
// in a batch may no longer exist (removed), or be a directory that appeared
// with content (the handler treats a directory path as its whole subtree).
package watch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Batch is one unit of work for the handler.
type Batch struct {
	// Rescan means: compare everything (the watcher may have missed events).
	// Paths may still list what is known to have changed.
	Rescan bool
	// Reason says why a rescan is needed ("start", "overflow", ...).
	Reason string
	// Paths changed since the last batch, sorted and without duplicates.
	Paths []string
}

// Options tune batching. The zero value uses the defaults.
type Options struct {
	// Debounce is how long the tree must stay quiet before a batch is
	// delivered (default 250ms).
	Debounce time.Duration
	// MaxDelay caps how long a path waits under continuous activity
	// (default 2s, or Debounce if that is longer).
	MaxDelay time.Duration
	// MaxPaths delivers a batch early once this many paths wait (default 4096).
	MaxPaths int
	// Queued, if set, is told the paths that became pending (so `status`
	// can show them while they wait). It runs on a goroutine of its own,
	// never concurrently with itself or with the handler, so a slow Queued
	// (a store transaction with an fsync) never stalls the reading of
	// events: paths that arrive meanwhile are coalesced into its next call.
	// Before a batch is handled, every Queued call in progress has returned
	// and paths not yet told are dropped (the batch applies them), so a
	// Queued call never follows the batch that applied its paths.
	Queued func(paths []string)
}

func (o *Options) defaults() {
	if o.Debounce <= 0 {
		o.Debounce = 250 * time.Millisecond
	}
	if o.MaxDelay <= 0 {
		// Never shorter than the debounce asked for: a MaxDelay below it
		// would make the debounce meaningless.
		o.MaxDelay = max(2*time.Second, o.Debounce)
	}
	if o.MaxPaths <= 0 {
		o.MaxPaths = 4096
	}
}

// Watcher watches one tree. It is used by one goroutine (Run).
type Watcher struct {
	root string
	opts Options
	fsw  *fsnotify.Watcher
	dirs map[string]bool // watched directories, relative ("" is the root)

	// faults lets tests inject what inotify would report (overflow).
	faults chan error
}

// New establishes watches on root and every directory below it (symlinks
// are not followed). Call it before the baseline scan.
func New(root string, opts Options) (*Watcher, error) {
	opts.defaults()
	root = filepath.Clean(root)
	st, err := os.Lstat(root)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", root, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("watch %s: not a directory", root)
	}
	w := &Watcher{root: root, opts: opts, faults: make(chan error, 1)}
	if err := w.rebuild(); err != nil {
		return nil, err
	}
	return w, nil
}

// Close releases the inotify instance.
func (w *Watcher) Close() error {
	if w.fsw == nil {
		return nil
	}
	return w.fsw.Close()
}

// Dirs reports how many directories are watched.
func (w *Watcher) Dirs() int { return len(w.dirs) }

// rebuild replaces the inotify instance and watches the whole tree again. A
// fresh instance drops every stale watch (a renamed directory keeps its
// inotify watch under its old name), so after rebuild the watch set is exact.
func (w *Watcher) rebuild() error {
	if w.fsw != nil {
		w.fsw.Close()
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: inotify: %w", w.root, err)
	}
	w.fsw = fsw
	w.dirs = map[string]bool{}
	return w.addTree("")
}

// addTree watches rel and every directory below it. It watches a directory
// before listing it, so entries created meanwhile are either listed or
// evented.
func (w *Watcher) addTree(rel string) error {
	abs := w.abs(rel)
	if err := w.fsw.Add(abs); err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, os.ErrNotExist) {
			return nil // gone already: its removal is evented on the parent
		}
		return fmt.Errorf("watch %s: %w", abs, err)
	}
	w.dirs[rel] = true
	ents, err := os.ReadDir(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("watch %s: %w", abs, err)
	}
	for _, e := range ents {
		if e.Type()&fs.ModeType == fs.ModeDir {
			if err := w.addTree(join(rel, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *Watcher) abs(rel string) string {
	if rel == "" {
		return w.root
	}
	return w.root + "/" + rel
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// rel maps an event name to a path relative to the root; ok is false for
// names outside the root.
func (w *Watcher) rel(name string) (string, bool) {
	if name == w.root {
		return "", true
	}
	if !strings.HasPrefix(name, w.root+"/") {
		return "", false
	}
	return name[len(w.root)+1:], true
}

// Run delivers batches to handle until ctx is done. The first batch is a
// Rescan (reason "start"). When ctx is cancelled, Run delivers a last
// batch, a Rescan (reason "stop") with the paths pending, with a fresh
// context so the handler can finish the flush SIGTERM asks for, and
// returns nil. The last batch is a Rescan because a change made just
// before the cancellation may still be on its way from the kernel (or
// ready on the channel but not chosen by select): only a rescan covers
// everything that changed before Run returned. A handler error stops Run
// and is returned.
func (w *Watcher) Run(ctx context.Context, handle func(context.Context, Batch) error) error {
	pending := map[string]bool{}
	rescan, reason := true, "start"
	var first time.Time // when the oldest pending change arrived
	timer := time.NewTimer(0)
	defer timer.Stop()
	q := startQueuer(w.opts.Queued)
	defer q.stop()

	flush := func(hctx context.Context) error {
		if !rescan && len(pending) == 0 {
			return nil
		}
		q.drop()
		b := Batch{Rescan: rescan, Reason: reason, Paths: make([]string, 0, len(pending))}
		for p := range pending {
			b.Paths = append(b.Paths, p)
		}
		sort.Strings(b.Paths)
		pending = map[string]bool{}
		rescan, reason = false, ""
		first = time.Time{}
		return handle(hctx, b)
	}
	needRescan := func(why string) error {
		if err := w.rebuild(); err != nil {
			return err
		}
		rescan = true
		if reason == "" || reason == "start" {
			reason = why
		}
		return nil
	}
	arm := func() {
		d := w.opts.Debounce
		if !first.IsZero() {
			if left := w.opts.MaxDelay - time.Since(first); left < d {
				d = max(left, 0)
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(d)
	}

	for {
		select {
		case <-ctx.Done():
			rescan = true
			if reason == "" {
				reason = "stop"
			}
			return flush(context.WithoutCancel(ctx))
		case <-timer.C:
			if err := flush(ctx); err != nil {
				return err
			}
		case err := <-w.faults:
			if err := needRescan(rescanReason(err)); err != nil {
				return err
			}
			arm()
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return fmt.Errorf("watch %s: inotify closed", w.root)
			}
			if err := needRescan(rescanReason(err)); err != nil {
				return err
			}
			arm()
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return fmt.Errorf("watch %s: inotify closed", w.root)
			}
			if err := w.event(ev, pending, needRescan, q.add); err != nil {
				return err
			}
			if first.IsZero() {
				first = time.Now()
			}
			if len(pending) >= w.opts.MaxPaths {
				if err := flush(ctx); err != nil {
					return err
				}
				continue
			}
			arm()
		}
	}
}

// rescanReason names why an inotify error forces a rescan.
func rescanReason(err error) string {
	if errors.Is(err, fsnotify.ErrEventOverflow) {
		return "overflow"
	}
	return "inotify error: " + err.Error()
}

func (w *Watcher) event(ev fsnotify.Event, pending map[string]bool, needRescan func(string) error, queued func([]string)) error {
	rel, ok := w.rel(filepath.Clean(ev.Name))
	if !ok || rel == "" {
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			// The root itself went away or moved: nothing we hold is valid.
			return needRescan("root " + ev.Op.String())
		}
		return nil
	}
	var fresh []string
	mark := func(p string) {
		if !pending[p] {
			pending[p] = true
			fresh = append(fresh, p)
		}
	}
	mark(rel)
	switch {
	case ev.Has(fsnotify.Rename) && w.dirs[rel]:
		// A watched directory moved away: its subtree's watches now report
		// under stale names. Rebuild rather than patch them up.
		if err := needRescan("directory renamed: " + rel); err != nil {
			return err
		}
	case ev.Has(fsnotify.Remove) && w.dirs[rel]:
		for d := range w.dirs {
			if d == rel || strings.HasPrefix(d, rel+"/") {
				delete(w.dirs, d)
			}
		}
	case ev.Has(fsnotify.Create):
		if st, err := os.Lstat(ev.Name); err == nil && st.IsDir() {
			// A new directory (or one moved in): watch it, then the handler
			// copies it whole since its path is pending; anything created
			// inside before the watch existed is covered by that.
			if err := w.addTree(rel); err != nil {
				if err := needRescan(err.Error()); err != nil {
					return err
				}
			}
		}
	}
	if len(fresh) > 0 {
		queued(fresh)
	}
	return nil
}

// queuer calls Options.Queued off the event loop: add never blocks, the
// paths added while a call is in progress go into the next call together.
type queuer struct {
	fn     func([]string)
	mu     sync.Mutex // guards buf
	buf    []string
	callMu sync.Mutex // held during a call of fn
	kick   chan struct{}
	done   chan struct{}
}

func startQueuer(fn func([]string)) *queuer {
	q := &queuer{fn: fn, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if fn == nil {
		close(q.done)
		return q
	}
	go func() {
		defer close(q.done)
		for range q.kick {
			q.callMu.Lock()
			q.mu.Lock()
			b := q.buf
			q.buf = nil
			q.mu.Unlock()
			if len(b) > 0 {
				q.fn(b)
			}
			q.callMu.Unlock()
		}
	}()
	return q
}

// add hands paths to the next call of fn.
func (q *queuer) add(paths []string) {
	if q.fn == nil {
		return
	}
	q.mu.Lock()
	q.buf = append(q.buf, paths...)
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default: // a call is already due; it takes these too
	}
}

// drop waits for a call in progress and forgets the paths not yet told:
// the batch about to be handled holds them all.
func (q *queuer) drop() {
	if q.fn == nil {
		return
	}
	q.callMu.Lock()
	q.mu.Lock()
	q.buf = nil
	q.mu.Unlock()
	q.callMu.Unlock()
}

// stop ends the goroutine after its call in progress (Run returns only
// then, so fn is never called after Run).
func (q *queuer) stop() {
	if q.fn != nil {
		close(q.kick)
	}
	<-q.done
}

// injectFault makes Run behave as if inotify had reported err (tests).
func (w *Watcher) injectFault(err error) { w.faults <- err }
