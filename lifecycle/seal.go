package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/etcmerge"
	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

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
	return refresh(ctx, &cfg, snap, paths, store.EtcPrecomputed)
}

// ErrNoMerge: there is no precomputed merge to keep current.
var ErrNoMerge = errors.New("no precomputed /etc merge")

func refresh(ctx context.Context, cfg *Config, snap *snapshot, paths []string, newState string) (int, error) {
	sys := snap.sys
	if snap.storeErr != nil {
		return 0, snap.storeErr
	}
	if sys.Staged == nil || !sameID(snap.state.Staged, idOf(sys.Staged)) {
		return 0, fmt.Errorf("%w for the staged deployment (restage needed)", ErrNoMerge)
	}
	switch snap.state.EtcState {
	case store.EtcPrecomputed, store.EtcDirty, store.EtcSealed:
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
	policy := snap.state.Policy
	redoPolicy := snap.tookOver() && policyStale(policy, all)
	if redoPolicy {
		if newState == store.EtcSealed {
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
			r := fallback(ctx, cfg, sys, fmt.Sprintf("%v (ostree's finalization runs the same commands)", err))
			return n, fmt.Errorf("%w: %s", ErrNoMerge, r.Reason)
		}
	}
	if newState == store.EtcSealed {
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
		st.EtcState, st.Policy = newState, policy
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
		if st.EtcState == store.EtcPrecomputed || st.EtcState == store.EtcSealed {
			st.EtcState = store.EtcDirty
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
		if st.EtcState == store.EtcDirty {
			st.EtcReason = fmt.Sprintf("more than %d paths waiting: the whole etc will be reconciled", MaxPendingPaths)
			return tx.PutState(st)
		}
		return nil
	})
}

// PreResult says what `finalize --pre` did.
type PreResult struct {
	Staged  *store.StagedID `json:"staged"`
	Etc     EtcResult       `json:"etc"`
	Seconds float64         `json:"seconds"`
}

// Pre seals the precomputed merge before ostree's finalization: what
// changed since the last refresh is applied and made durable. On any doubt
// it falls back: ostree's original staged state restored and the staged
// etc reset to the new defaults, so that ostree's own merge runs as if we
// had never been there. It returns an error only when even that was not
// possible (then finalization is locked).
func Pre(ctx context.Context, cfg Config) (res *PreResult, err error) {
	cfg.defaults()
	cfg.resolveChoices(ctx)
	werr := withWritableSysroot(cfg.Sysroot, func() error {
		res, err = pre(ctx, cfg)
		return nil
	})
	if werr == nil {
		return res, err
	}
	// The staged etc cannot be written (read-only and no remount): we can
	// neither seal nor reset it. Do less: put ostree's staged state back
	// (it lives in /run) and, if our merge is in the staged etc, lock
	// finalization rather than let ostree merge over a state we cannot
	// vouch for.
	snap, lerr := load(&cfg)
	if lerr != nil || snap.sys.Staged == nil {
		return nil, werr
	}
	res = &PreResult{Staged: idOf(snap.sys.Staged)}
	switch snap.state.EtcState {
	case store.EtcPrecomputed, store.EtcDirty, store.EtcSealed:
	default:
		if !snap.tookOver() {
			return res, werr
		}
	}
	res.Etc = fallback(ctx, &cfg, snap.sys, werr.Error())
	return res, werr
}

func pre(ctx context.Context, cfg Config) (*PreResult, error) {
	start := time.Now()
	unlock, err := lifecycleLock(ctx, cfg.RunDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	snap, err := load(&cfg)
	if err != nil {
		return nil, err
	}
	sys := snap.sys
	res := &PreResult{Etc: EtcResult{State: store.EtcNone}}
	if sys.Staged == nil {
		cfg.Log.Info("finalize --pre: nothing staged")
		return res, nil
	}
	res.Staged = idOf(sys.Staged)
	done := func(r EtcResult) (*PreResult, error) {
		res.Etc, res.Seconds = r, time.Since(start).Seconds()
		if strings.Contains(r.Reason, "fallback failed") {
			return res, errors.New(r.Reason)
		}
		return res, nil
	}

	if snap.storeErr != nil {
		// We cannot trust anything we recorded; if the disk holds our
		// rewrite, the backup copy restores ostree's state.
		return done(fallback(ctx, &cfg, sys, fmt.Sprintf("runtime store unreadable: %v", snap.storeErr)))
	}
	if !sameID(snap.state.Staged, res.Staged) {
		if snap.state.Staged != nil {
			cfg.Log.Info("finalize --pre: the precomputed state is for another staged deployment; leaving ostree's state alone")
		}
		return done(EtcResult{State: store.EtcNone, Reason: "nothing precomputed for this staged deployment"})
	}
	switch snap.state.EtcState {
	case store.EtcPrecomputed, store.EtcDirty, store.EtcSealed:
	default:
		// Nothing of ours in the staged etc that ostree's merge would not
		// redo, unless a write of ours was interrupted (a stage killed
		// mid-merge leaves temporary files and half-copied directories
		// that ostree would keep) or our rewrite of the staged state is on
		// disk without its record (a stage killed between the two): then
		// reset, and make sure the staged state is ostree's own.
		switch {
		case snap.tookOver():
			return done(fallback(ctx, &cfg, sys, "takeover recorded without a precomputed merge"))
		case snap.orig != nil && isTakeoverOf(snap.disk, snap.orig):
			return done(fallback(ctx, &cfg, sys, "the staged state is our rewrite but no precomputed merge was recorded (stage interrupted)"))
		case snap.applying:
			return done(fallback(ctx, &cfg, sys, "an earlier write of the staged etc was interrupted"))
		}
		return done(EtcResult{State: snap.state.EtcState, Reason: snap.state.EtcReason})
	}
	if _, err := refresh(ctx, &cfg, snap, nil, store.EtcSealed); errors.Is(err, errPolicyStale) {
		return done(fallback(ctx, &cfg, sys, err.Error()+": ostree merges and refreshes"))
	} else if err != nil {
		return done(fallback(ctx, &cfg, sys, fmt.Sprintf("sealing the /etc merge: %v", err)))
	}
	r := EtcResult{State: store.EtcSealed, Takeover: snap.tookOver(), Reason: "sealed"}
	if r.Takeover {
		r.Policy = snap.state.Policy
	} else {
		// Say why ostree still merges, as stage did: status shows the
		// reason of the last step.
		r.Reason = "sealed; ostree merges on top (no takeover at staging)"
	}
	if err := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		st.EtcState, st.EtcReason, st.Takeover, st.Policy = r.State, r.Reason, r.Takeover, r.Policy
		return tx.PutState(st)
	}); err != nil {
		return done(fallback(ctx, &cfg, sys, fmt.Sprintf("recording the seal: %v", err)))
	}
	cfg.Log.Info("sealed the /etc merge", slog.String(msgid.Key, msgid.Seal), "takeover", r.Takeover, "seconds", time.Since(start).Seconds())
	return done(r)
}

// PostResult says what `finalize --post` did.
type PostResult struct {
	Persisted bool          `json:"persisted"`
	Deleted   *prune.Result `json:"deleted,omitempty"`
	Reason    string        `json:"reason,omitempty"`
	Objects   int64         `json:"objects"`
	Bytes     int64         `json:"bytes"`
}

// ErrPrediction: the deployment list after finalization is not the one the
// plan was computed for; the plan is not persisted.
var ErrPrediction = errors.New("deployment list differs from the prediction")

// Post runs after ostree's finalization succeeded: it checks that the
// deployment list is the predicted one and persists the plan under the
// physical sysroot for the next boot (or, with deleteNow, deletes at once).
// When anything does not match, nothing is persisted and the reason is
// returned and recorded.
func Post(ctx context.Context, cfg Config, deleteNow bool) (*PostResult, error) {
	cfg.defaults()
	snap, err := load(&cfg)
	if err != nil {
		return nil, err
	}
	res := &PostResult{}
	fail := func(why string, err error) (*PostResult, error) {
		// status shows the cause too (e.g. which write failed, and how).
		if err != nil && !strings.Contains(why, err.Error()) {
			why += ": " + err.Error()
		}
		res.Reason = why
		cfg.Log.Warn("finalize --post: plan not persisted", "reason", why)
		if uerr := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
			st, err := tx.State()
			if err != nil {
				return err
			}
			st.PruneState, st.PruneReason = store.PruneInvalid, why
			return tx.PutState(st)
		}); uerr != nil {
			// Nothing was persisted either way; only status keeps the
			// older reason. The returned error says why.
			cfg.Log.Warn("recording why no plan was persisted", "err", uerr)
		}
		return res, err
	}
	if snap.storeErr != nil {
		return fail("runtime store unreadable", snap.storeErr)
	}
	if snap.state.PruneState != store.PrunePlanned || snap.plan == nil {
		res.Reason = "no plan"
		return res, nil
	}
	if snap.sys.Staged != nil {
		return fail("a deployment is still staged: ostree did not finalize", nil)
	}
	var predicted []byte
	if err := store.ViewRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		predicted = tx.Blob(blobPredicted)
		return nil
	}); err != nil {
		return fail("runtime store unreadable", err)
	}
	var now []string
	for _, d := range snap.sys.Deployments {
		now = append(now, d.OSName+" "+d.DeployName())
	}
	if string(predicted) != strings.Join(now, "\n") {
		return fail(fmt.Sprintf("deployments are [%s], predicted [%s]", strings.Join(now, ", "), strings.ReplaceAll(string(predicted), "\n", ", ")),
			fmt.Errorf("%w", ErrPrediction))
	}
	plan, err := prune.UnmarshalPlan(snap.plan)
	if err != nil {
		return fail("stored plan unreadable", err)
	}
	if plan.RootsHash != snap.state.RootsHash {
		return fail("stored plan does not match its roots hash", prune.ErrBadPlan)
	}
	res.Objects, res.Bytes = int64(plan.Stats.Objects), int64(plan.Stats.Bytes)
	// A read-only /sysroot is made writable for the write only (as ostree
	// does); everything above only read.
	if deleteNow {
		var r prune.Result
		err := withWritableSysroot(cfg.Sysroot, func() (err error) {
			r, err = executePlan(ctx, &cfg, snap.sys, plan)
			return err
		})
		res.Deleted = &r
		if err != nil {
			return res, err
		}
		markCleaned(&cfg)
		return res, nil
	}
	if err := withWritableSysroot(cfg.Sysroot, func() error {
		return store.WritePlan(cfg.Sysroot, store.PersistedPlan{
			Plan: snap.plan, RootsHash: plan.RootsHash, Staged: *snap.state.Staged,
			Objects: res.Objects, Bytes: res.Bytes, CreatedAt: time.Now(),
		})
	}); err != nil {
		return fail("writing the plan", err)
	}
	res.Persisted = true
	cfg.Log.Info("prune plan persisted for the next boot", slog.String(msgid.Key, msgid.PlanPersisted), "objects", res.Objects, "bytes", res.Bytes, "path", store.PlanPath(cfg.Sysroot))
	markCleaned(&cfg)
	return res, nil
}

// markCleaned records that the runtime plan has been handed on.
func markCleaned(cfg *Config) {
	// The plan is persisted already; failing here only leaves status
	// saying "planned" until the runtime store goes with the reboot.
	if err := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		st.PruneState, st.PruneReason = store.PruneNone, "handed to cleanup"
		if err := tx.PutBlob(store.BlobPlan, nil); err != nil {
			return err
		}
		return tx.PutState(st)
	}); err != nil {
		cfg.Log.Warn("recording that the plan was handed to cleanup", "err", err)
	}
}

// executePlan deletes the plan's objects under the exclusive repository
// lock, with the live roots of now: every ref plus the commit of every
// deployment on disk, the staged one included (ostree's cleanup adds the
// deployments to the refs; a deployment staged since planning must keep
// its objects whatever finalization will later decide).
func executePlan(ctx context.Context, cfg *Config, sys *ostree.Sysroot, plan *prune.Plan) (prune.Result, error) {
	// ExecuteSysroot first removes the image refs of a plan with image GC,
	// each re-checked against these deployments.
	return prune.ExecuteSysroot(ctx, sys, plan, cfg.LockTimeout, cfg.Progress)
}

// CleanupResult is what `cleanup --json` prints.
type CleanupResult struct {
	Pending    bool    `json:"pending"` // a plan was there
	Objects    int     `json:"objects"` // deleted
	Bytes      uint64  `json:"bytes"`   // freed
	KeptLive   int     `json:"kept_live"`
	Remaining  int     `json:"remaining"`
	Seconds    float64 `json:"seconds"`
	RootsMoved bool    `json:"roots_changed"`
	Reason     string  `json:"reason,omitempty"`
	// RefsRemoved and RefsKept count the image-store refs of a plan with
	// image GC (removed, or kept because they moved or came into use).
	RefsRemoved int `json:"refs_removed,omitempty"`
	RefsKept    int `json:"refs_kept,omitempty"`
}

// Cleanup deletes the persisted plan's objects (next boot) and removes the
// plan when done. Cancelled (SIGTERM), it stops promptly and persists what
// is left, so the next run resumes.
func Cleanup(ctx context.Context, cfg Config) (*CleanupResult, error) {
	cfg.defaults()
	start := time.Now()
	res := &CleanupResult{}
	pp, err := store.ReadPlan(cfg.Sysroot)
	if errors.Is(err, store.ErrNotExist) {
		res.Reason = "nothing pending"
		return res, nil
	}
	if err != nil {
		return res, err
	}
	res.Pending = true
	plan, err := prune.UnmarshalPlan(pp.Plan)
	if err != nil {
		return res, fmt.Errorf("persisted plan %s: %w", store.PlanPath(cfg.Sysroot), err)
	}
	if plan.RootsHash != pp.RootsHash {
		return res, fmt.Errorf("persisted plan %s: roots hash does not match the plan: %w", store.PlanPath(cfg.Sysroot), prune.ErrBadPlan)
	}
	sys, err := ostree.LoadSysroot(cfg.Sysroot, ostree.LoadOptions{RunDir: cfg.RunDir})
	if err != nil {
		return res, err
	}
	// Every write below (deletions, the rewritten or removed plan) goes
	// through a writable sysroot, remounted privately when /sysroot is
	// read-only, as ostree does.
	err = withWritableSysroot(cfg.Sysroot, func() error {
		r, err := executePlan(ctx, &cfg, sys, plan)
		res.Objects, res.Bytes, res.KeptLive, res.Remaining, res.RootsMoved = r.Deleted, r.BytesFreed, r.KeptLive, r.Remaining, r.RootsChanged
		res.RefsRemoved, res.RefsKept = r.RefsRemoved, r.RefsKept
		res.Seconds = time.Since(start).Seconds()
		if err != nil && r.Remaining == 0 && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			// Stopped, but the unlinks in flight (up to four) finished
			// the plan and were synced (a failed sync puts entries back to
			// pending): it is done, not interrupted.
			err = nil
		}
		if err != nil {
			// Keep the progress made (deleted or kept-live entries leave
			// the plan) so the next run resumes where this one stopped.
			// Execute reports only durable deletions as done, so the
			// rewritten plan never forgets an object that a power loss
			// could bring back.
			if r.Remaining > 0 && (r.Deleted > 0 || r.KeptLive > 0) {
				if perr := persistRemaining(&cfg, pp, plan); perr != nil {
					return errors.Join(err, perr)
				}
			}
			res.Reason = "stopped; the rest resumes next time"
			return err
		}
		return store.RemovePlan(cfg.Sysroot)
	})
	if err != nil {
		return res, err
	}
	cfg.Log.Info("cleanup done", slog.String(msgid.Key, msgid.CleanupDone), "objects", res.Objects, "bytes", res.Bytes, "kept_live", res.KeptLive, "seconds", res.Seconds)
	return res, nil
}

// persistRemaining rewrites the persisted plan with only what is left.
func persistRemaining(cfg *Config, pp *store.PersistedPlan, plan *prune.Plan) error {
	rest, err := plan.MarshalBinary()
	if err != nil {
		return err
	}
	if bytes.Equal(rest, pp.Plan) {
		return nil
	}
	pend := plan.Pending()
	return store.WritePlan(cfg.Sysroot, store.PersistedPlan{
		Plan: rest, RootsHash: plan.RootsHash, Staged: pp.Staged,
		Objects: int64(pend.Objects), Bytes: int64(pend.Bytes), CreatedAt: pp.CreatedAt,
	})
}
