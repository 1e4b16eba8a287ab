package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

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
	// The prune figures' vocabulary (status.go): what the persisted plan
	// had left to delete when this run started, and what it deleted.
	PlannedFigures
	DeletedFigures
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
	res.PlannedFigures = PlannedFigures{PlannedObjects: pp.Objects, PlannedBytes: pp.Bytes}
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
		res.DeletedFigures = DeletedFigures{DeletedObjects: int64(r.Deleted), DeletedBytes: int64(r.BytesFreed)}
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
