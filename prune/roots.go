package prune

import (
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// ostree's retention rules (which deployments and refs survive finalization
// and the next cleanup) live in ostree/retention.go; these names bind them
// for the planners here and keep this package's API.

// ErrMergeNotFound is ostree.ErrMergeNotFound.
var ErrMergeNotFound = ostree.ErrMergeNotFound

// PredictOptions tune PredictDeploymentsWith and PlanSysroot.
type PredictOptions struct {
	// State and IgnoreLock: see ostree.PredictOptions.
	State      *ostree.StagedState
	IgnoreLock bool
	// ImageGC makes PlanSysroot include the image-store refs that
	// ostree-ext's GC would remove after finalization, and what only they
	// reach (see images.go). Off, the plan is ostree's own prune.
	ImageGC bool
}

// PredictDeployments is PredictDeploymentsWith with no options.
func PredictDeployments(s *ostree.Sysroot) ([]*ostree.Deployment, error) {
	return PredictDeploymentsWith(s, PredictOptions{})
}

// PredictDeploymentsWith is ostree.PredictDeployments: the deployment list
// after ostree finalizes the staged deployment.
func PredictDeploymentsWith(s *ostree.Sysroot, o PredictOptions) ([]*ostree.Deployment, error) {
	return ostree.PredictDeployments(s, ostree.PredictOptions{State: o.State, IgnoreLock: o.IgnoreLock})
}

// DeploymentRoots is ostree.DeploymentRoots.
func DeploymentRoots(ds []*ostree.Deployment) []ostree.ObjectName { return ostree.DeploymentRoots(ds) }

// PostFinalizeRoots is ostree.PostFinalizeRoots: the roots of ostree's next
// cleanup when deployments is the deployment list.
func PostFinalizeRoots(s *ostree.Sysroot, deployments []*ostree.Deployment) ([]ostree.ObjectName, error) {
	return ostree.PostFinalizeRoots(s, deployments)
}
