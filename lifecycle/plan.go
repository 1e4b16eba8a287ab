package lifecycle

import (
	"context"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
)

// planFor predicts the deployments after finalization (from ostree's
// original staged state: a takeover changes the file, not the outcome) and
// plans the prune from their roots.
func planFor(ctx context.Context, cfg *Config, sys *ostree.Sysroot, orig *ostree.StagedState) (*prune.Plan, []*ostree.Deployment, error) {
	opts := prune.PredictOptions{ImageGC: cfg.ImageGC}
	if orig != nil && sys.Staged != nil {
		opts.State = orig
	}
	return prune.PlanSysroot(ctx, sys, opts, cfg.LockTimeout)
}
