package lifecycle

import (
	"bytes"
	"context"
	"encoding/json"
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

// StageResult says what stage did; it is what `stage --json` prints.
type StageResult struct {
	Staged   *StagedID   `json:"staged"`
	Locked   bool        `json:"locked"`
	Etc      EtcResult   `json:"etc"`
	Prune    PruneResult `json:"prune"`
	Duration float64     `json:"seconds"`
}

// EtcResult is the /etc side of a step.
type EtcResult struct {
	State    EtcState `json:"state"`
	Takeover bool     `json:"takeover"`
	Reason   string   `json:"reason,omitempty"`
	Modified int      `json:"modified"`
	Removed  int      `json:"removed"`
	Added    int      `json:"added"`
	Written  int      `json:"written"` // entries written or removed in the staged etc
	// Policy is what became of the SELinux policy refresh that ostree
	// skips when we take over (Policy*; "" when none is needed).
	Policy PolicyState `json:"selinux_policy,omitempty"`
	// err is the *fallbackError of a fallback that failed too (the
	// state is EtcFallback), or nil.
	err error
}

// PruneResult is the plan side of a step.
type PruneResult struct {
	State     string   `json:"state"`
	Reason    string   `json:"reason,omitempty"`
	Objects   int64    `json:"objects"`
	Bytes     int64    `json:"bytes"`
	RootsHash string   `json:"roots_hash,omitempty"`
	Survivors []string `json:"deployments,omitempty"` // predicted list, "OS CSUM.SERIAL"
	PlannedFigures
	// Images is what undeployed container images hold after finalization
	// (and whether the plan includes it: image GC).
	Images *prune.ImagesReport `json:"images,omitempty"`
}

// Stage precomputes for the staged deployment: the /etc merge into its etc
// (with a baseline of the booted etc for the seal), the takeover of ostree's
// merge when it cannot change ostree's outcome, and the prune plan. It is
// idempotent: run again for the same staged deployment it brings the merge
// up to date and recomputes the plan; for a new one (re-stage) it starts
// over. A merge that fails (ostree would fail the same way at shutdown) is
// reported as an error after falling back to ostree's own state.
func Stage(ctx context.Context, cfg Config) (res *StageResult, err error) {
	cfg.defaults()
	cfg.resolveChoices(ctx)
	// Stage writes the staged etc and, on a fallback, resets it: on a host
	// whose /sysroot is mounted read-only it does so, as ostree does, from
	// a private mount namespace with a read-write remount.
	werr := withWritableSysroot(cfg.Sysroot, func() error {
		res, err = stage(ctx, cfg)
		return nil
	})
	if werr != nil {
		return nil, werr
	}
	return res, err
}

func stage(ctx context.Context, cfg Config) (*StageResult, error) {
	start := time.Now()
	unlock, err := lifecycleLock(ctx, cfg.RunDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	res := &StageResult{Etc: EtcResult{State: EtcNone}, Prune: PruneResult{State: store.PruneNone}}
	if why := bootcComposefsReason(cfg.RunDir); why != "" {
		cfg.Log.Info("stepping aside", "reason", why)
		res.Etc.Reason, res.Prune.Reason = why, why
		return res, nil
	}
	snap, err := load(&cfg)
	if err != nil {
		return nil, err
	}
	sys := snap.sys
	if sys.Staged == nil {
		if sys.Booted == nil {
			cfg.Log.Info("nothing staged (not booted into an ostree deployment)")
		} else {
			cfg.Log.Info("nothing staged")
		}
		if snap.state.Staged != nil {
			if err := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
				if err := tx.Clear(); err != nil {
					return err
				}
				return tx.PutState(store.State{EtcReason: "nothing staged any more", PruneReason: "nothing staged any more"})
			}); err != nil {
				return nil, err
			}
		}
		return res, nil
	}
	if sys.Booted == nil {
		return nil, fmt.Errorf("staged deployment %s: %w", sys.Staged, ErrNotBooted)
	}
	id := idOf(sys.Staged)
	res.Staged, res.Locked = (*StagedID)(id), sys.StagedLocked

	// Which bytes are ostree's? If the disk holds our own rewrite for this
	// deployment, the recorded original; otherwise what is on disk (a fresh
	// stage, a re-stage, or ostree's state restored).
	fresh := true
	orig := snap.disk
	// rewritten: the disk holds our takeover as ostree rewrote it (a lock
	// or unlock of finalization); it stays our takeover, recorded as such.
	rewritten := false
	if snap.storeErr != nil {
		backup, berr := readBackup(cfg.RunDir)
		if berr == nil && isTakeoverOf(snap.disk, backup) {
			orig = ostreeStateNow(&cfg, backup, snap.disk)
		} else if lostTakeover(ctx, sys, snap.disk) != nil {
			// Merging again would keep the takeover of a state we can no
			// longer restore; going on as if ostree had staged without a
			// merge would leave a stale merge in the new etc. fallback
			// finds the state lost and locks finalization.
			r := fallback(ctx, &cfg, sys, fmt.Errorf("runtime store unreadable (%w) and no backup copy of ostree's staged state for this deployment", snap.storeErr))
			return nil, fmt.Errorf("/etc merge: %s; stage the update again to recover", r.Reason)
		}
		// We cannot tell whether a killed earlier run left the staged etc
		// half-written: reconcile it whole (MergePaths over everything)
		// rather than merging on top as if it were pristine.
		fresh = false
		cfg.Log.Warn("runtime store unreadable; starting over", "err", snap.storeErr)
		if err := store.Reset(store.RuntimePath(cfg.RunDir)); err != nil {
			return nil, err
		}
	} else if sameID(snap.state.Staged, id) {
		switch {
		case snap.tookOver():
			orig, fresh = ostreeStateNow(&cfg, snap.orig, snap.disk), false
			if rewritten = !bytes.Equal(snap.disk, snap.takeover); rewritten {
				cfg.Log.Info("ostree rewrote the staged state around our takeover (finalization locked or unlocked); keeping the takeover")
			}
		case snap.orig != nil && bytes.Equal(snap.disk, snap.orig):
			fresh = false
		}
	}
	origState, err := ostree.DecodeStagedState(orig)
	if err != nil {
		return nil, fmt.Errorf("staged state %s: %w", stagedPath(cfg.RunDir), err)
	}

	// Record identity and ostree's bytes before anything else is written,
	// so every later fallback can restore them.
	if err := writeBackup(cfg.RunDir, orig); err != nil {
		return nil, err
	}
	err = store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st := snap.state
		if fresh {
			if err := tx.Clear(); err != nil {
				return err
			}
			st = store.State{EtcState: string(EtcNone), PruneState: store.PruneNone}
		}
		st.Staged = id
		if err := tx.PutBlob(store.BlobOrigStaged, orig); err != nil {
			return err
		}
		if rewritten {
			if err := tx.PutBlob(blobTakeover, snap.disk); err != nil {
				return err
			}
			snap.orig, snap.takeover = orig, snap.disk
		}
		return tx.PutState(st)
	})
	if err != nil {
		return nil, err
	}

	if !fresh && !cfg.NoTakeover && snap.tookOver() && !snap.applying && precomputed(etcStateOf(snap.state.EtcState)) {
		// Run again with our takeover in place (ostree-prefinalize.path
		// starts stage again when the takeover rewrites the staged state):
		// bring the merge up to date as the watcher does, rather than
		// reconciling the whole etc, which would also undo and redo the
		// SELinux policy refresh.
		res.Etc = catchUp(ctx, &cfg, snap)
	} else {
		res.Etc = stageEtc(ctx, &cfg, sys, origState, snap.disk, fresh)
	}
	res.Prune = stagePlan(ctx, &cfg, sys, origState)
	res.Duration = time.Since(start).Seconds()
	if res.Etc.State == EtcFallback {
		return res, fmt.Errorf("/etc merge: %s", res.Etc.Reason)
	}
	return res, nil
}

// precomputed reports whether an etc state holds our merge, complete as of
// its baseline.
func precomputed(state EtcState) bool {
	return state == EtcPrecomputed || state == EtcDirty || state == EtcSealed
}

// catchUp is stage for a merge already precomputed and taken over: what
// changed since the baseline is applied (refresh), the takeover stays.
func catchUp(ctx context.Context, cfg *Config, snap *snapshot) EtcResult {
	n, err := refresh(ctx, cfg, snap, nil, EtcPrecomputed)
	switch {
	case errors.Is(err, ErrNoMerge):
		// refresh fell back already (the policy refresh failed).
		return EtcResult{State: EtcFallback, Reason: err.Error()}
	case err != nil:
		return fallback(ctx, cfg, snap.sys, fmt.Errorf("bringing the /etc merge up to date: %w", err))
	}
	r := EtcResult{State: EtcPrecomputed, Takeover: true, Written: n, Reason: "taken over already; brought up to date"}
	if err := store.ViewRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		r.Policy = PolicyState(st.Policy)
		return err
	}); err != nil {
		// The merge is current (refresh just wrote the store); only the
		// policy note of this result is missing.
		cfg.Log.Warn("reading the SELinux policy state", "err", err)
	}
	cfg.Log.Info("the /etc merge was taken over already; brought it up to date", "written", n)
	return r
}

// stageEtc does the /etc part of Stage and records its outcome.
func stageEtc(ctx context.Context, cfg *Config, sys *ostree.Sysroot, orig *ostree.StagedState, disk []byte, fresh bool) EtcResult {
	r := EtcResult{State: EtcNone}
	log := cfg.Log.With("staged", sys.Staged.String())
	var merge *ostree.Deployment
	if orig.Merge != nil {
		merge = sys.Find(*orig.Merge)
	}
	transient := transientEtcReason(cfg.RunDir)
	switch {
	case transient != "":
		r.Reason = transient
	case stagedDirMissing(sys):
		// Nothing of ours can help: leave everything to ostree, which
		// fails (ostree.Choices.MissingDeploymentDirFailsLoad: from 2025.3
		// at sysroot load, before at finalization). No fallback: it
		// would find no etc to reset and lock finalization, which ostree
		// alone does not do.
		r.State, r.Reason = EtcFallback, fmt.Sprintf("the staged deployment's directory %s is missing: ostree's finalization will fail", sys.DeploymentDir(sys.Staged))
	case orig.Merge == nil:
		r.Reason = "ostree does no /etc merge for this deployment (no merge deployment)"
	case merge == nil:
		r.State, r.Reason = EtcFallback, fmt.Sprintf("merge deployment %s.%d is not deployed: ostree's finalization will fail", orig.Merge.Checksum, orig.Merge.Serial)
	case !merge.Same(sys.Booted):
		r.Reason = "the merge deployment is not the booted one: /etc left to ostree"
	}
	if r.Reason != "" {
		log.Info("no /etc precomputation", "reason", r.Reason)
		recordEtc(cfg, r, nil, nil)
		return r
	}

	p := pathsOf(sys)
	// The baseline is taken before the merge reads anything: a change made
	// while we merge then differs from it, and the seal applies it.
	bl, err := etcmerge.Scan(ctx, p.modified)
	if err == nil {
		// Mark the staged etc as being written until the outcome is
		// recorded: killed in between (SIGKILL, power loss), a temporary
		// file of an unfinished write or a half-copied directory may be
		// left that ostree's merge would keep; the next step sees the mark
		// and reconciles (stage, refresh) or resets (finalize --pre) the
		// whole staged etc.
		_, err = beginApplying(cfg.RunDir)
	}
	if err == nil {
		var n int
		if fresh {
			var rep etcmerge.Report
			rep, err = etcmerge.Merge(ctx, cfg.FS, p.orig, p.modified, p.newEtc)
			r.Modified, r.Removed, r.Added = rep.Modified, rep.Removed, rep.Added
			n = rep.Modified + rep.Removed + rep.Added
		} else {
			n, err = etcmerge.MergePaths(ctx, cfg.FS, p.orig, p.modified, p.newEtc, p.defaults, []string{""})
		}
		r.Written = n
	}
	if err != nil {
		return fallback(ctx, cfg, sys, fmt.Errorf("precomputing the /etc merge: %w", err))
	}
	blBytes, err := bl.MarshalBinary()
	if err != nil {
		return fallback(ctx, cfg, sys, fmt.Errorf("encoding the baseline: %w", err))
	}
	r.State = EtcPrecomputed

	// Take over only when it cannot change ostree's outcome: ostree's
	// refresh of the SELinux policy, skipped with its merge, is then ours.
	why := takeoverBlocker(cfg, sys, merge)
	if why == "" {
		pol, err := refreshPolicy(ctx, cfg, sys.DeploymentDir(sys.Staged))
		if err != nil {
			return fallback(ctx, cfg, sys, fmt.Errorf("%w (ostree's finalization runs the same commands)", err))
		}
		r.Policy = pol
		kargs := orig.Kargs
		if !orig.HasKargs {
			// ostree would copy the merge deployment's options; its ostree=
			// argument is replaced in place when the entry is written, so
			// keeping it keeps the entry byte-identical.
			kargs = slices.Clone(merge.Kargs)
			if kargs == nil {
				kargs = []string{}
			}
		}
		enc, err := orig.EncodeTakeover(kargs)
		if err != nil {
			why = fmt.Sprintf("cannot encode the takeover: %v", err)
		} else if err := writeTakeover(ctx, cfg, enc, disk); err != nil {
			why = fmt.Sprintf("cannot rewrite the staged state: %v", err)
		} else {
			r.Takeover = true
			recordEtc(cfg, r, blBytes, enc)
			log.Info("took over the /etc merge", slog.String(msgid.Key, msgid.Takeover), "modified", r.Modified, "removed", r.Removed, "added", r.Added)
			return r
		}
	}
	r.Reason = why
	if r.Policy == PolicyRefreshed {
		// semodule wrote the staged etc for a takeover that did not
		// happen; ostree's merge and refresh on top of that would not be
		// its own outcome.
		return fallback(ctx, cfg, sys, errors.New(why+" (after the SELinux policy refresh)"))
	}
	if err := restoreStaged(cfg, orig.Raw); err != nil {
		return fallback(ctx, cfg, sys, err)
	}
	recordEtc(cfg, r, blBytes, nil)
	log.Info("precomputed the /etc merge; ostree keeps its own", "reason", why)
	return r
}

// recordEtc stores the etc outcome (and, when given, the baseline and our
// takeover bytes). A store failure here is logged: the on-disk state is
// already consistent, and the next step treats a missing record as doubt.
func recordEtc(cfg *Config, r EtcResult, baseline, takeover []byte) {
	err := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		st.EtcState, st.EtcReason, st.Takeover, st.Policy = string(r.State), r.Reason, r.Takeover, string(r.Policy)
		if r.State == EtcPrecomputed {
			// The merge is complete and recorded with its baseline: the
			// staged etc is no longer in the middle of a write.
			if err := tx.PutBlob(blobApplying, nil); err != nil {
				return err
			}
		}
		if baseline != nil {
			if err := tx.PutBlob(store.BlobBaseline, baseline); err != nil {
				return err
			}
		}
		if err := tx.PutBlob(blobTakeover, takeover); err != nil {
			return err
		}
		return tx.PutState(st)
	})
	if err != nil {
		cfg.Log.Error("recording the /etc state", "err", err)
	}
}

// stagePlan computes and records the mock prune for the staged transition.
func stagePlan(ctx context.Context, cfg *Config, sys *ostree.Sysroot, orig *ostree.StagedState) PruneResult {
	r := PruneResult{State: store.PruneInvalid}
	plan, err := planFor(ctx, cfg, sys, orig)
	if err != nil {
		r.Reason = err.Error()
		cfg.Log.Warn("no prune plan", "err", err)
	} else {
		r = summarize(plan)
	}
	var planBytes, predicted []byte
	if err == nil {
		if planBytes, err = plan.Prune.MarshalBinary(); err != nil {
			// Never "planned" without a plan stored.
			r = PruneResult{State: store.PruneInvalid, Reason: "encoding the prune plan: " + err.Error()}
			cfg.Log.Warn("no prune plan", "err", err)
		} else {
			predicted = []byte(strings.Join(r.Survivors, "\n"))
		}
	}
	uerr := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		st.PruneState, st.PruneReason = r.State, r.Reason
		st.PruneObjects, st.PruneBytes, st.RootsHash = r.Objects, r.Bytes, r.RootsHash
		if err := tx.PutBlob(store.BlobPlan, planBytes); err != nil {
			return err
		}
		if err := tx.PutBlob(blobPredicted, predicted); err != nil {
			return err
		}
		var images []byte
		if r.Images != nil {
			images, _ = json.Marshal(r.Images) // a struct of plain fields: cannot fail
		}
		if err := tx.PutBlob(blobImages, images); err != nil {
			return err
		}
		return tx.PutState(st)
	})
	if uerr != nil {
		cfg.Log.Error("recording the prune plan", "err", uerr)
		r.State, r.Reason = store.PruneInvalid, uerr.Error()
	}
	return r
}

func summarize(plan *Plan) PruneResult {
	p, deps := plan.Prune, plan.Deployments
	r := PruneResult{State: store.PrunePlanned, Objects: int64(p.Stats.Objects), Bytes: int64(p.Stats.Bytes), RootsHash: p.RootsHash, PlannedFigures: Planned(p.Stats)}
	r.Survivors = DeploymentNames(deps)
	if sum := p.Summary(); p.Images != nil {
		r.Images = &sum.Images
	}
	return r
}
