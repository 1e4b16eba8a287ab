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
//
// # Safety and bounds
//
// The tree may be written by unprivileged users while a root process
// watches it: no directory is ever opened, listed or watched through a
// symlink (see inotify.go). When the kernel gives no more watches the
// watcher degrades to periodic Rescan batches (ModeRescan) instead of
// failing. Work under a flood is bounded: DirLimit paths per directory per
// batch, MaxPending paths in all, one rebuild of the watch set per batch,
// and a handler that fails with Retry is called again only after an
// exponential backoff.
package watch

// Longer than 500 lines on purpose: the watcher's fd-based watch set and
// its event loop share one set of invariants (a watch only on a directory
// opened beneath its parent without symlinks); the raw inotify calls are in
// inotify.go.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
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

// Modes of the watcher (Watcher.Mode).
const (
	// ModeInotify: every directory is watched; changes arrive as events.
	ModeInotify = "inotify"
	// ModeRescan: the kernel would not give enough inotify watches
	// (fs.inotify.max_user_watches) or instances; the watcher delivers a
	// Rescan batch every Options.RescanEvery and tries inotify again then.
	ModeRescan = "rescan"
)

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
	// MaxPending bounds the paths held while batches are held back (after
	// a failed batch): beyond it they are dropped and the next batch is a
	// Rescan (reason "pending overflow"). Default 4*MaxPaths.
	MaxPending int
	// DirLimit bounds the paths one directory contributes to a batch: past
	// it the directory itself is pending (the handler treats it as its
	// whole subtree) and further events in it cost only their reading
	// (default 256).
	DirLimit int
	// RescanEvery is the period of rescans in ModeRescan (default 30s).
	RescanEvery time.Duration
	// RetryMin and RetryMax bound the exponential backoff after a batch
	// the handler failed with Retry (defaults 1s and 5m).
	RetryMin, RetryMax time.Duration
	// MaxWatches, if positive, makes the watcher act as if the kernel
	// gave at most this many watches (ENOSPC past it): tests of ModeRescan
	// that must not lower the machine-wide fs.inotify.max_user_watches.
	MaxWatches int
	// Mode, if set, is told the watcher's mode and why, at the start of
	// Run and whenever it changes (on Run's goroutine).
	Mode func(mode, reason string)
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
	if o.MaxPending <= 0 {
		o.MaxPending = 4 * o.MaxPaths
	}
	if o.DirLimit <= 0 {
		o.DirLimit = 256
	}
	if o.RescanEvery <= 0 {
		o.RescanEvery = 30 * time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = max(5*time.Minute, o.RetryMin)
	}
}

// Watcher watches one tree. It is used by one goroutine (Run).
type Watcher struct {
	root   string
	rootFD int // the root directory, opened once without following symlinks
	opts   Options
	in     *inotify       // nil in ModeRescan
	dirs   map[string]int // watched directories (relative, "" is the root) -> wd
	wds    map[int]string // wd -> watched directory

	mode, modeReason string
	// stale: the watch set no longer matches the tree (a watched
	// directory moved, an error adding a watch): it is rebuilt once,
	// just before the next batch, however many events said so.
	stale bool

	// faults lets tests inject what inotify would report (overflow).
	faults chan error
}

// errOverflow is what an IN_Q_OVERFLOW reports.
var errOverflow = errors.New("inotify queue overflow")

// New establishes watches on root and every directory below it (symlinks
// are not followed). Call it before the baseline scan. When the kernel's
// inotify budget is exhausted it still succeeds, in ModeRescan.
func New(root string, opts Options) (*Watcher, error) {
	opts.defaults()
	root = strings.TrimRight(root, "/")
	if root == "" {
		root = "/"
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", root, err)
	}
	w := &Watcher{root: root, rootFD: fd, opts: opts, faults: make(chan error, 1)}
	if err := w.rebuild(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return w, nil
}

// Close releases the inotify instance and the root.
func (w *Watcher) Close() error {
	if w.rootFD >= 0 {
		unix.Close(w.rootFD)
		w.rootFD = -1
	}
	if w.in == nil {
		return nil
	}
	err := w.in.Close()
	w.in = nil
	return err
}

// Dirs reports how many directories are watched.
func (w *Watcher) Dirs() int { return len(w.dirs) }

// Mode reports ModeInotify or ModeRescan, and why.
func (w *Watcher) Mode() (mode, reason string) { return w.mode, w.modeReason }

// rebuild replaces the inotify instance and watches the whole tree again. A
// fresh instance drops every stale watch (a renamed directory keeps its
// inotify watch under its old name), so after rebuild the watch set is exact.
// When the kernel's budget runs out it switches to ModeRescan (and returns
// nil); only a root that cannot be read is an error.
func (w *Watcher) rebuild() error {
	if w.in != nil {
		w.in.Close()
		w.in = nil
	}
	w.dirs, w.wds, w.stale = map[string]int{}, map[int]string{}, false
	in, err := newInotify()
	if err == nil {
		w.in = in
		// A fresh open file description (a dup would share the offset
		// an earlier listing left at the end).
		var fd int
		if fd, err = openDir(w.rootFD, "."); err == nil {
			err = w.addTree("", fd)
		}
	}
	switch {
	case err == nil:
		w.mode, w.modeReason = ModeInotify, ""
		return nil
	case errors.Is(err, errBudget):
		if w.in != nil {
			w.in.Close()
			w.in = nil
		}
		w.dirs, w.wds = map[string]int{}, map[int]string{}
		w.mode = ModeRescan
		w.modeReason = fmt.Sprintf("%v: rescanning every %s (raise fs.inotify.max_user_watches)", err, w.opts.RescanEvery)
		return nil
	default:
		return fmt.Errorf("watch %s: %w", w.root, err)
	}
}

// addTree watches the directory open at fd (rel below the root) and every
// directory below it, and closes fd. It watches a directory before listing
// it, so entries created meanwhile are either listed or evented.
func (w *Watcher) addTree(rel string, fd int) error {
	defer unix.Close(fd)
	if w.opts.MaxWatches > 0 && len(w.dirs) >= w.opts.MaxWatches {
		return fmt.Errorf("inotify_add_watch: %w (%w)", unix.ENOSPC, errBudget)
	}
	wd, err := w.in.add(fd)
	if err != nil {
		return fmt.Errorf("watch %s: %w", w.abs(rel), err)
	}
	if old, ok := w.wds[wd]; ok && old != rel {
		delete(w.dirs, old) // the same directory under a new name
	}
	w.dirs[rel], w.wds[wd] = wd, rel
	names, err := subdirs(fd)
	if err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("watch %s: %w", w.abs(rel), err)
	}
	for _, name := range names {
		cfd, err := openDir(fd, name)
		if err != nil {
			if gone(err) || errors.Is(err, unix.EACCES) {
				// Not a directory (any more), or swapped for a symlink:
				// never followed. The swap is evented on this directory.
				continue
			}
			return fmt.Errorf("watch %s: %w", w.abs(join(rel, name)), err)
		}
		if err := w.addTree(join(rel, name), cfd); err != nil {
			return err
		}
	}
	return nil
}

// addNew watches a directory that appeared at rel, opened beneath the root
// with no symlink in any component.
func (w *Watcher) addNew(rel string) error {
	fd, err := openDir(w.rootFD, rel)
	if err != nil {
		if gone(err) || errors.Is(err, unix.EACCES) {
			return nil
		}
		return err
	}
	return w.addTree(rel, fd)
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

// Retry wraps a handler error that should not stop Run: the batch's paths
// stay pending and the next batch, a Rescan, comes after an exponential
// backoff (Options.RetryMin doubling up to RetryMax, reset by a batch that
// succeeds), so a batch that keeps failing costs one full rescan per
// backoff period, not one per event.
func Retry(err error) error { return retryError{err} }

type retryError struct{ err error }

func (e retryError) Error() string { return e.err.Error() }
func (e retryError) Unwrap() error { return e.err }

// Run delivers batches to handle until ctx is done. The first batch is a
// Rescan (reason "start"). When ctx is cancelled, Run delivers a last
// batch, a Rescan (reason "stop") with the paths pending, with a fresh
// context so the handler can finish the flush SIGTERM asks for, and
// returns nil. The last batch is a Rescan because a change made just
// before the cancellation may still be on its way from the kernel (or
// ready on the channel but not chosen by select): only a rescan covers
// everything that changed before Run returned. A handler error stops Run
// and is returned, unless it is a Retry.
func (w *Watcher) Run(ctx context.Context, handle func(context.Context, Batch) error) error {
	b := &batcher{w: w, pending: map[string]bool{}, dirN: map[string]int{}, whole: map[string]bool{}}
	b.rescan, b.reason = true, "start"
	var first time.Time // when the oldest pending change arrived
	var notBefore time.Time
	backoff := time.Duration(0)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var period *time.Ticker // ModeRescan only
	defer func() {
		if period != nil {
			period.Stop()
		}
	}()
	q := startQueuer(w.opts.Queued)
	defer q.stop()
	b.queued = q.add

	lastMode := ""
	tellMode := func() {
		if w.mode == lastMode {
			return
		}
		lastMode = w.mode
		if w.opts.Mode != nil {
			w.opts.Mode(w.mode, w.modeReason)
		}
		switch {
		case w.mode == ModeRescan && period == nil:
			period = time.NewTicker(w.opts.RescanEvery)
		case w.mode == ModeInotify && period != nil:
			period.Stop()
			period = nil
		}
	}
	tellMode()
	arm := func(d time.Duration) {
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(d, 0))
	}
	armDebounce := func() {
		d := w.opts.Debounce
		if !first.IsZero() {
			if left := w.opts.MaxDelay - time.Since(first); left < d {
				d = left
			}
		}
		if left := time.Until(notBefore); left > d {
			d = left
		}
		arm(d)
	}
	flush := func(hctx context.Context, final bool) error {
		if !b.rescan && len(b.pending) == 0 {
			return nil
		}
		if !final && time.Now().Before(notBefore) {
			arm(time.Until(notBefore)) // backing off after a failed batch
			return nil
		}
		if w.stale && !final {
			// One rebuild for everything that made the watch set doubtful
			// since the last batch, before the handler compares.
			if err := w.rebuild(); err != nil {
				return err
			}
			tellMode()
		}
		q.drop()
		batch := b.take()
		first = time.Time{}
		err := handle(hctx, batch)
		var retry retryError
		switch {
		case err == nil:
			backoff, notBefore = 0, time.Time{}
			return nil
		case final || !errors.As(err, &retry):
			return err
		}
		// Keep what the batch held; the next one compares everything.
		backoff = min(max(2*backoff, w.opts.RetryMin), w.opts.RetryMax)
		notBefore = time.Now().Add(backoff)
		b.putBack(batch, "retry after a failed batch: "+retry.err.Error())
		arm(backoff)
		return nil
	}

	for {
		var events <-chan []event
		var errs <-chan error
		if w.in != nil {
			events, errs = w.in.events, w.in.errs
		}
		var tick <-chan time.Time
		if period != nil {
			tick = period.C
		}
		select {
		case <-ctx.Done():
			b.markRescan("stop")
			return flush(context.WithoutCancel(ctx), true)
		case <-timer.C:
			if err := flush(ctx, false); err != nil {
				return err
			}
		case <-tick:
			// ModeRescan: try inotify again (the budget may have been
			// raised or freed); either way the batch is a full rescan.
			w.stale = true
			b.markRescan("periodic rescan (" + w.mode + " mode)")
			if err := flush(ctx, false); err != nil {
				return err
			}
		case err := <-w.faults:
			w.stale = true
			b.markRescan(rescanReason(err))
			armDebounce()
		case err := <-errs:
			w.stale = true
			b.markRescan(rescanReason(err))
			armDebounce()
		case evs := <-events:
			for _, ev := range evs {
				w.event(ev, b)
			}
			if first.IsZero() {
				first = time.Now()
			}
			b.tell()
			if len(b.pending) >= w.opts.MaxPaths && time.Now().After(notBefore) {
				if err := flush(ctx, false); err != nil {
					return err
				}
				continue
			}
			armDebounce()
		}
	}
}

// rescanReason names why an inotify error forces a rescan.
func rescanReason(err error) string {
	if errors.Is(err, errOverflow) {
		return "overflow"
	}
	return "inotify error: " + err.Error()
}

// batcher holds what the next batch will carry, bounded: at most
// MaxPending paths, at most DirLimit per directory.
type batcher struct {
	w       *Watcher
	pending map[string]bool
	rescan  bool
	reason  string
	dirN    map[string]int  // paths pending per directory (this batch)
	whole   map[string]bool // directories pending as a whole (this batch)
	fresh   []string        // pending since the last tell
	queued  func([]string)
}

func (b *batcher) markRescan(why string) {
	b.rescan = true
	if b.reason == "" || b.reason == "start" {
		b.reason = why
	}
}

// mark makes rel pending, within the bounds.
func (b *batcher) mark(rel string) {
	if rel == "" {
		return // the root itself: its entries are marked one by one
	}
	dir := parent(rel)
	for d := dir; ; d = parent(d) {
		if b.whole[d] {
			return // covered by a directory pending as a whole
		}
		if d == "" {
			break
		}
	}
	if b.pending[rel] {
		return
	}
	if b.dirN[dir]++; b.dirN[dir] > b.w.opts.DirLimit {
		// A flood in one directory: the directory stands for its
		// entries (the handler takes a directory path as its subtree).
		b.whole[dir] = true
		if dir == "" {
			b.markRescan("event flood in the root directory")
		}
		for p := range b.pending {
			if strings.HasPrefix(p, dir+"/") || dir == "" {
				delete(b.pending, p)
			}
		}
		rel = dir
		if rel == "" {
			return
		}
	}
	if len(b.pending) >= b.w.opts.MaxPending {
		b.dropPending()
		return
	}
	b.pending[rel] = true
	b.fresh = append(b.fresh, rel)
}

// dropPending forgets the pending paths: the next batch rescans.
func (b *batcher) dropPending() {
	b.pending, b.dirN, b.whole = map[string]bool{}, map[string]int{}, map[string]bool{"": true}
	b.markRescan("pending overflow")
}

// tell hands the fresh paths to Options.Queued.
func (b *batcher) tell() {
	if len(b.fresh) > 0 {
		b.queued(b.fresh)
		b.fresh = nil
	}
}

// take empties the batcher into a batch.
func (b *batcher) take() Batch {
	out := Batch{Rescan: b.rescan, Reason: b.reason, Paths: make([]string, 0, len(b.pending))}
	for p := range b.pending {
		out.Paths = append(out.Paths, p)
	}
	sort.Strings(out.Paths)
	b.pending, b.dirN, b.whole, b.fresh = map[string]bool{}, map[string]int{}, map[string]bool{}, nil
	b.rescan, b.reason = false, ""
	return out
}

// putBack returns a failed batch's paths (bounded) and asks for a rescan.
func (b *batcher) putBack(batch Batch, why string) {
	b.markRescan(why)
	for _, p := range batch.Paths {
		if len(b.pending) >= b.w.opts.MaxPending {
			b.dropPending()
			break
		}
		b.pending[p] = true
	}
	b.fresh = nil // already told
}

func parent(rel string) string {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[:i]
	}
	return ""
}

// event applies one inotify event to the batcher and the watch set.
func (w *Watcher) event(ev event, b *batcher) {
	if ev.mask&unix.IN_Q_OVERFLOW != 0 {
		w.stale = true
		b.markRescan("overflow")
		return
	}
	dir, ok := w.wds[ev.wd]
	if !ok {
		return // a watch already dropped (its directory went away)
	}
	if ev.mask&unix.IN_IGNORED != 0 {
		delete(w.wds, ev.wd)
		if w.dirs[dir] == ev.wd {
			delete(w.dirs, dir)
		}
		return
	}
	rel := dir
	if ev.name != "" {
		rel = join(dir, ev.name)
	}
	self := ev.mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0
	if rel == "" {
		if self {
			// The root itself went away or moved: nothing we hold is valid.
			w.stale = true
			b.markRescan("root removed or moved")
		}
		return
	}
	b.mark(rel)
	isDir := ev.mask&unix.IN_ISDIR != 0 || self
	switch {
	case ev.mask&(unix.IN_MOVED_FROM|unix.IN_MOVE_SELF) != 0 && isDir:
		if _, watched := w.dirs[rel]; watched && !w.stale {
			// A watched directory moved away: its subtree's watches now
			// report under stale names. Rebuild (once, before the next
			// batch) rather than patch them up.
			w.stale = true
			b.markRescan("directory renamed: " + rel)
		}
	case ev.mask&(unix.IN_DELETE|unix.IN_DELETE_SELF) != 0 && isDir:
		for d, wd := range w.dirs {
			if d == rel || strings.HasPrefix(d, rel+"/") {
				delete(w.dirs, d)
				delete(w.wds, wd)
			}
		}
	case ev.mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 && isDir && !w.stale:
		// A new directory (or one moved in): watch it, then the handler
		// copies it whole since its path is pending; anything created
		// inside before the watch existed is covered by that. (With a
		// rebuild due, the rebuild watches it.)
		if err := w.addNew(rel); err != nil {
			w.stale = true
			b.markRescan(err.Error())
		}
	}
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

// queuedEvery bounds how often Options.Queued is called.
const queuedEvery = 100 * time.Millisecond

func startQueuer(fn func([]string)) *queuer {
	q := &queuer{fn: fn, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if fn == nil {
		close(q.done)
		return q
	}
	go func() {
		defer close(q.done)
		var last time.Time
		for range q.kick {
			// At most one call per queuedEvery: under a flood each call
			// (a store transaction with an fsync) takes the paths of
			// the whole interval.
			if d := time.Since(last); d < queuedEvery {
				time.Sleep(queuedEvery - d)
			}
			last = time.Now()
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
