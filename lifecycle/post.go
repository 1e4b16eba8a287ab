package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

// PostResult says what `finalize --post` did.
type PostResult struct {
	Persisted bool          `json:"persisted"`
	Deleted   *prune.Result `json:"deleted,omitempty"`
	Reason    string        `json:"reason,omitempty"`
	Objects   int64         `json:"objects"`
	Bytes     int64         `json:"bytes"`
	PlannedFigures
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
		if err != nil {
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
	now := DeploymentNames(snap.sys.Deployments)
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
	res.PlannedFigures = Planned(plan.Stats)
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
