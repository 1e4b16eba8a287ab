package lifecycle

import (
	"context"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
)

// Plan is the mock prune of a transition: the deployments that remain
// after finalization, those it drops, and the objects that become
// unreachable. It is computed in one place (planFor) for the `plan`
// command, the Go API (prefinalize.Plan) and staging.
type Plan struct {
	// Sysroot is the sysroot as loaded for the plan.
	Sysroot *ostree.Sysroot
	// Deployments remain after finalization; Dropped are the current
	// deployments that finalization removes.
	Deployments, Dropped []*ostree.Deployment
	// Prune lists the objects that become unreachable and their totals.
	Prune *prune.Plan
}

// ComputePlan loads the sysroot and plans the prune for the staged
// transition (with nothing staged, or its finalization locked: for the
// current deployments, what `ostree admin cleanup` deletes now), under
// ostree's shared repository lock (waiting at most cfg.LockTimeout). It
// only reads.
func ComputePlan(ctx context.Context, cfg Config) (*Plan, error) {
	cfg.defaults()
	sys, err := ostree.LoadSysroot(cfg.Sysroot, ostree.LoadOptions{RunDir: cfg.RunDir})
	if err != nil {
		return nil, err
	}
	return planFor(ctx, &cfg, sys, nil)
}

// planFor predicts the deployments after finalization (from ostree's
// original staged state when given: a takeover changes the file, not the
// outcome) and plans the prune from their roots.
func planFor(ctx context.Context, cfg *Config, sys *ostree.Sysroot, orig *ostree.StagedState) (*Plan, error) {
	opts := prune.PredictOptions{ImageGC: cfg.ImageGC}
	if orig != nil && sys.Staged != nil {
		opts.State = orig
	}
	p, ds, err := prune.PlanSysroot(ctx, sys, opts, cfg.LockTimeout)
	if err != nil {
		return nil, err
	}
	r := &Plan{Sysroot: sys, Deployments: ds, Prune: p}
	for _, d := range sys.Deployments {
		kept := false
		for _, n := range ds {
			kept = kept || n.Same(d)
		}
		if !kept {
			r.Dropped = append(r.Dropped, d)
		}
	}
	return r, nil
}

// DeploymentNames names deployments as "OSNAME CHECKSUM.SERIAL" (the
// predicted list that finalize --post checks, stage's prune.deployments).
func DeploymentNames(ds []*ostree.Deployment) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.String())
	}
	return out
}
