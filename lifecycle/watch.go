package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/etcmerge"
	"github.com/ostree-prefinalize/ostree-prefinalize/internal/lockwait"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
	"github.com/ostree-prefinalize/ostree-prefinalize/watch"
)

// WatchOptions tune Watch; the zero value is the service's behaviour.
type WatchOptions struct {
	// Notify receives sd_notify-style status lines ("READY=1" once, then
	// "STATUS=..."); nil ignores them.
	Notify func(state string)
	// Debounce is the watcher's quiet period (default 250ms).
	Debounce time.Duration
	// Poll is how often the staged state file is checked for a re-stage
	// (default 1s).
	Poll time.Duration
	// RescanEvery is the period of full rescans when the kernel's inotify
	// budget is exhausted (watch.ModeRescan; default 30s).
	RescanEvery time.Duration
	// MaxWatches, if positive, caps the inotify watches as if the kernel
	// had (tests of the rescan mode; 0 = the kernel's limit).
	MaxWatches int

	// mode records the watcher's mode for `status` (set by Watch).
	mode func(mode, reason string)
}

// Watch keeps the staged etc current until ctx is done: inotify on the
// booted etc (established before anything is compared, see package watch)
// drives Refresh. A re-stage (the staged state file replaced by ostree) is
// noticed and the state rebuilt by Stage for the new deployment. When ctx
// ends (SIGTERM) it applies what is pending and returns nil.
func Watch(ctx context.Context, cfg Config, o WatchOptions) error {
	cfg.defaults()
	cfg.resolveChoices(ctx)
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	notify := func(s string) {
		if o.Notify != nil {
			o.Notify(s)
		}
	}
	// holdWatchLock creates its file in the state directory: check that
	// directory first (store.ErrUnsafe), as lifecycleLock does.
	if _, err := store.RuntimeDir(cfg.RunDir); err != nil {
		return err
	}
	lock, err := holdWatchLock(cfg.RunDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	o.mode = func(mode, reason string) {
		if err := writeWatcherMode(lock, mode, reason); err != nil {
			cfg.Log.Warn("recording the watcher's mode for status", "err", err)
		}
		if mode == watch.ModeRescan {
			cfg.Log.Warn("inotify unavailable; falling back to periodic rescans", "reason", reason)
		}
	}
	ready := false
	for ctx.Err() == nil {
		known, err := watchOnce(ctx, &cfg, o, func(status string) {
			if !ready {
				notify("READY=1")
				ready = true
			}
			notify("STATUS=" + status)
		})
		if err != nil {
			return err
		}
		if known == nil && ctx.Err() == nil {
			// Nothing to watch: wait for the staged state to change.
			if err := waitStagedChange(ctx, &cfg, o.Poll, nil); err != nil {
				return nil
			}
		}
	}
	return nil
}

// stageGrace bounds how long a stage the watcher runs itself may go on
// once SIGTERM came.
const stageGrace = time.Minute

// watchOnce watches for one staged deployment; it returns when ctx ends or
// the staged state changes (the caller loops). It returns nil bytes when
// there is nothing to watch.
func watchOnce(ctx context.Context, cfg *Config, o WatchOptions, status func(string)) ([]byte, error) {
	snap, err := load(cfg)
	if err != nil {
		return nil, err
	}
	if snap.sys.Staged == nil {
		status("nothing staged")
		return nil, nil
	}
	if snap.storeErr != nil || !sameID(snap.state.Staged, idOf(snap.sys.Staged)) || snap.state.EtcState == "" {
		// Not precomputed for this deployment yet: do it now. A SIGTERM
		// meanwhile lets it finish (bounded): a stage cut short falls
		// back to ostree's merge and throws the work away.
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		// (A grace timer still armed after Stage returned cancels a
		// context that is done already.)
		stop := context.AfterFunc(ctx, func() { time.AfterFunc(stageGrace, cancel) })
		_, err := Stage(sctx, *cfg)
		stop()
		cancel()
		if err != nil {
			cfg.Log.Warn("stage from the watcher", "err", err)
		}
		if snap, err = load(cfg); err != nil {
			return nil, err
		}
	}
	switch etcStateOf(snap.state.EtcState) {
	case EtcPrecomputed, EtcDirty, EtcSealed:
	default:
		status("not watching: " + snap.state.EtcReason)
		// Watch only for a re-stage.
		if err := waitStagedChange(ctx, cfg, o.Poll, snap.disk); err != nil {
			return snap.disk, nil
		}
		return snap.disk, nil
	}
	p := pathsOf(snap.sys)
	w, err := watch.New(p.modified, watch.Options{
		Debounce:    o.Debounce,
		RescanEvery: o.RescanEvery,
		MaxWatches:  o.MaxWatches,
		Mode:        o.mode,
		Queued: func(paths []string) {
			if err := MarkPending(*cfg, paths); err != nil {
				cfg.Log.Warn("recording pending paths", "err", err)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	defer w.Close()
	if mode, why := w.Mode(); mode == watch.ModeRescan {
		status(fmt.Sprintf("watching %s for %s by periodic rescans: %s", p.modified, snap.sys.Staged, why))
	} else {
		status(fmt.Sprintf("watching %s for %s (%d directories)", p.modified, snap.sys.Staged, w.Dirs()))
	}

	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	restage := make(chan struct{}, 1)
	go func() {
		if waitStagedChange(inner, cfg, o.Poll, snap.disk) == nil {
			restage <- struct{}{}
			cancel()
		}
	}()
	err = w.Run(inner, func(bctx context.Context, b watch.Batch) error {
		// A batch in progress is finished, not cut short, when SIGTERM or
		// a re-stage ends the watch: its paths have left the watcher's
		// pending set, and SIGTERM promises to apply what is pending
		// (an interrupted apply would leave it to the seal).
		n, err := Refresh(context.WithoutCancel(bctx), *cfg, b.Paths)
		switch {
		case errors.Is(err, ErrNoMerge) || errors.Is(err, ErrStagedChanged):
			cancel() // re-stage or fallback: the outer loop decides
			return nil
		case err != nil:
			// The seal will retry everything; say why now. The watcher
			// backs off (exponentially, up to minutes) before its next
			// batch, a full rescan: a batch that keeps failing (a writer
			// racing every apply) costs one reconcile per backoff period,
			// not one per event.
			cfg.Log.Warn("applying changed paths", "err", err, "paths", len(b.Paths))
			status("apply failed: " + err.Error())
			return watch.Retry(err)
		}
		if n > 0 || b.Rescan {
			cfg.Log.Debug("applied", "paths", len(b.Paths), "written", n, "rescan", b.Rescan, "reason", b.Reason)
		}
		status(fmt.Sprintf("merge current for %s", snap.sys.Staged))
		return nil
	})
	if err != nil {
		return nil, err
	}
	select {
	case <-restage:
		cfg.Log.Info("staged state changed; rebuilding")
	default:
	}
	return snap.disk, nil
}

// waitStagedChange polls the staged state file until its bytes differ from
// known (nil: until one appears) or ctx ends (then it returns ctx.Err()).
// Our own takeover rewrite is not a change.
func waitStagedChange(ctx context.Context, cfg *Config, every time.Duration, known []byte) error {
	t := time.NewTicker(every)
	defer t.Stop()
	var takeover []byte
	// An unreadable store leaves takeover nil: our own rewrite then counts
	// as a change, which costs a rebuild, never a missed re-stage.
	_ = store.ViewRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		takeover = tx.Blob(blobTakeover)
		return nil
	})
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		cur, err := os.ReadFile(stagedPath(cfg.RunDir))
		if err != nil {
			cur = nil
		}
		if bytes.Equal(cur, known) || (takeover != nil && bytes.Equal(cur, takeover)) {
			continue
		}
		return nil
	}
}

// lifecycleLock serialises the steps that write the staged etc or the
// staged state (stage, a watcher batch, finalize --pre): they may run at
// once (the path unit re-triggers stage while the watcher works).
func lifecycleLock(ctx context.Context, runDir string) (func(), error) {
	// The directory is checked before the lock file is created in it: a
	// symlinked or writable-by-others state directory is store.ErrUnsafe.
	dir, err := store.RuntimeDir(runDir)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "lifecycle.lock"), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockwait.Poll(ctx, 50*time.Millisecond, func() (bool, error) {
		return lockwait.TryFlock(int(f.Fd()), unix.LOCK_EX)
	}); err != nil {
		f.Close()
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, fmt.Errorf("waiting for another ostree-prefinalize step: %w", err)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

// Refresh brings the staged etc up to date with the booted etc: every path
// whose stat differs from the recorded baseline, plus the given paths (from
// inotify), is merged again, and the baseline becomes the new stat of the
// booted etc. The new baseline and the changed paths come from one stat
// walk made before anything is merged, so a change racing with Refresh
// differs from the new baseline and is picked up next time: nothing is
// ever marked seen without having been applied.
//
// It is the watcher's batch and the core of the seal. It returns how many
// entries were written. With no precomputed merge for the live staged
// deployment it does nothing (and says why in the error).
func Refresh(ctx context.Context, cfg Config, paths []string) (n int, err error) {
	cfg.defaults()
	cfg.resolveChoices(ctx)
	werr := withWritableSysroot(cfg.Sysroot, func() error {
		n, err = refreshLocked(ctx, cfg, paths)
		return nil
	})
	if werr != nil {
		return 0, werr
	}
	return n, err
}

func refreshLocked(ctx context.Context, cfg Config, paths []string) (int, error) {
	unlock, err := lifecycleLock(ctx, cfg.RunDir)
	if err != nil {
		return 0, err
	}
	defer unlock()
	snap, err := load(&cfg)
	if err != nil {
		return 0, err
	}
	return refresh(ctx, &cfg, snap, paths, EtcPrecomputed)
}

// ErrNoMerge: there is no precomputed merge to keep current.
var ErrNoMerge = errors.New("no precomputed /etc merge")

func refresh(ctx context.Context, cfg *Config, snap *snapshot, paths []string, newState EtcState) (int, error) {
	sys := snap.sys
	if snap.storeErr != nil {
		return 0, snap.storeErr
	}
	if sys.Staged == nil || !sameID(snap.state.Staged, idOf(sys.Staged)) {
		return 0, fmt.Errorf("%w for the staged deployment (restage needed)", ErrNoMerge)
	}
	switch etcStateOf(snap.state.EtcState) {
	case EtcPrecomputed, EtcDirty, EtcSealed:
	default:
		return 0, fmt.Errorf("%w (state %q: %s)", ErrNoMerge, snap.state.EtcState, snap.state.EtcReason)
	}
	var old etcmerge.Baseline
	if err := old.UnmarshalBinary(snap.baseline); err != nil {
		return 0, fmt.Errorf("baseline: %w", err)
	}
	p := pathsOf(sys)
	nb, changed, err := old.Rescan(ctx, p.modified)
	if err != nil {
		return 0, err
	}
	all := append(slices.Clone(changed), paths...)
	all = append(all, snap.pending...)
	policy := PolicyState(snap.state.Policy)
	redoPolicy := snap.tookOver() && policyStale(policy, all)
	if redoPolicy {
		if newState == EtcSealed {
			// Too late to run semodule again (that is ostree's shutdown
			// work, and ours would race nothing but cost the same): the
			// caller falls back and ostree merges and refreshes.
			return 0, fmt.Errorf("%w (%s)", errPolicyStale, firstPolicyInput(all))
		}
		// The output of the earlier refresh is in the staged etc: the
		// whole etc goes back to the exact merge, then semodule runs on
		// it again, as after a fresh merge.
		cfg.Log.Info("an input of the SELinux policy changed; merging the whole etc and refreshing the policy again", "path", firstPolicyInput(all))
		all = append(all, "")
	}
	n := 0
	// (With the mark already set and nothing changed, the whole etc is
	// still reconciled: the mark is cleared below only after that.)
	if len(all) > 0 || snap.applying {
		interrupted, err := beginApplying(cfg.RunDir)
		if err != nil {
			return 0, err
		}
		if interrupted {
			// An earlier refresh died while writing (SIGKILL, power
			// loss): a temporary file of an unfinished write may be left
			// in a directory that no path of ours names. Reconciling the
			// whole etc removes it (and redoes anything half done).
			// MarkPending sets the same mark when it drops an overflowing
			// pending set.
			cfg.Log.Info("an earlier apply was interrupted (or too many paths were pending); reconciling the whole staged etc")
			all = append(all, "")
		}
		n, err = etcmerge.MergePaths(ctx, cfg.FS, p.orig, p.modified, p.newEtc, p.defaults, all)
		if err != nil {
			return n, err
		}
	}
	if redoPolicy {
		if policy, err = refreshPolicy(ctx, cfg, sys.DeploymentDir(sys.Staged)); err != nil {
			r := fallback(ctx, cfg, sys, fmt.Errorf("%w (ostree's finalization runs the same commands)", err))
			return n, fmt.Errorf("%w: %s", ErrNoMerge, r.Reason)
		}
	}
	if newState == EtcSealed {
		// The seal alone makes the staged etc durable (stage and the
		// watcher's batches do not flush): see FS.Syncfs.
		if err := etcmerge.SyncEtc(cfg.FS, p.newEtc); err != nil {
			return n, err
		}
	}
	nbBytes, err := nb.MarshalBinary()
	if err != nil {
		return n, err
	}
	err = store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		if !sameID(st.Staged, idOf(sys.Staged)) {
			return fmt.Errorf("%w: the store moved to another staged deployment", ErrStagedChanged)
		}
		if err := tx.RemovePending(append(slices.Clone(paths), snap.pending...)...); err != nil {
			return err
		}
		if err := tx.PutBlob(store.BlobBaseline, nbBytes); err != nil {
			return err
		}
		if err := tx.PutBlob(blobApplying, nil); err != nil {
			return err
		}
		st.EtcState, st.Policy = string(newState), string(policy)
		if len(all) > 0 {
			st.EtcReason = fmt.Sprintf("applied %d changed paths", len(all))
		}
		return tx.PutState(st)
	})
	return n, err
}

// blobApplying is set while a refresh writes the staged etc and cleared
// with the new baseline: found set, it means a refresh died mid-write.
const blobApplying = "applying"

// beginApplying marks a refresh as writing and reports whether the mark
// was already there (the previous one never finished).
func beginApplying(runDir string) (interrupted bool, err error) {
	err = store.UpdateRuntime(runDir, func(tx *store.RuntimeTx) error {
		interrupted = tx.Blob(blobApplying) != nil
		if interrupted {
			return nil
		}
		return tx.PutBlob(blobApplying, []byte{1})
	})
	return interrupted, err
}

// endApplying clears the mark of beginApplying once the staged etc is in a
// known state again.
func endApplying(runDir string) error {
	return store.UpdateRuntime(runDir, func(tx *store.RuntimeTx) error {
		return tx.PutBlob(blobApplying, nil)
	})
}

// MaxPendingPaths bounds the pending set of the store: past it the set is
// dropped and the next refresh (or the seal) reconciles the whole etc, so
// a writer that keeps batches failing cannot grow it without bound.
const MaxPendingPaths = 8192

// MarkPending records paths the watcher has seen but not applied yet, so
// that `status` shows them and the seal applies them even if the watcher
// dies before its batch.
func MarkPending(cfg Config, paths []string) error {
	cfg.defaults()
	return store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		if s := etcStateOf(st.EtcState); s == EtcPrecomputed || s == EtcSealed {
			st.EtcState = string(EtcDirty)
			st.EtcReason = "changes waiting to be applied"
			if err := tx.PutState(st); err != nil {
				return err
			}
		}
		if _, n := tx.Pending(1); n+len(paths) <= MaxPendingPaths {
			return tx.AddPending(paths...)
		}
		// Overflow: the mark of an unfinished write makes the next
		// refresh and the seal reconcile the whole etc, which covers
		// every path dropped here. The mark is set before the paths go,
		// in the same transaction.
		if err := tx.PutBlob(blobApplying, []byte("pending overflow")); err != nil {
			return err
		}
		all, _ := tx.Pending(0)
		if err := tx.RemovePending(all...); err != nil {
			return err
		}
		if etcStateOf(st.EtcState) == EtcDirty {
			st.EtcReason = fmt.Sprintf("more than %d paths waiting: the whole etc will be reconciled", MaxPendingPaths)
			return tx.PutState(st)
		}
		return nil
	})
}
