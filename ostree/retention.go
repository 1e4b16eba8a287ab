package ostree

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ostree's retention rules. This file predicts the root set of ostree's next repository cleanup: the
// deployment list that finalization of the staged deployment will write, and
// the refs that survive the regeneration of the deployment refs. Everything
// here follows ostree 2022.7 (ostree-sysroot-deploy.c:
// _ostree_sysroot_finalize_staged_inner; ostree-sysroot.c:
// ostree_sysroot_simple_write_deployment; ostree-sysroot-cleanup.c:
// generate_deployment_refs, ostree_sysroot_cleanup_prune_repo;
// ostree-repo-prune.c: traverse_reachable_internal).

// ErrMergeNotFound is wrapped (with ErrNotFound) when the staged
// state names a merge deployment that is not in the deployment list: ostree's
// finalization then fails ("Failed to find merge deployment"), so there is
// no post-finalization list to predict.
var ErrMergeNotFound = errors.New("merge deployment of the staged state is not deployed")

// PredictOptions tune PredictDeployments.
type PredictOptions struct {
	// State, when not nil, is the staged state to predict from instead of
	// s.StagedState. A caller that took over the /etc merge has removed
	// "merge-deployment" from the live file, which changes ostree's
	// retention unless the merge deployment is the booted one; it passes the
	// original state here. Its target must be s.Staged.
	State *StagedState
	// IgnoreLock predicts as if finalization were not locked. By default a
	// locked finalization predicts what ostree does at shutdown: nothing, so
	// the list after the reboot is the current one without the staged
	// deployment.
	IgnoreLock bool
}

// PredictDeployments returns the deployment list as it will be after
// ostree finalizes the staged deployment, in the order ostree writes it.
//
// Finalization calls ostree_sysroot_simple_write_deployment with the staged
// deployment, the staged state's merge deployment and the flag NO_CLEAN only
// (not NOT_DEFAULT, no RETAIN*): the staged deployment comes first, then, in
// the current order, every deployment that is pinned, of another stateroot
// than the staged one, booted, or the merge deployment; the rest of the
// staged deployment's stateroot is dropped. Without a "merge-deployment"
// key, no deployment counts as the merge one.
//
// With nothing staged (or finalization locked, unless IgnoreLock), the
// result is the current list: what `ostree admin cleanup` works from.
//
// The returned deployments are shallow copies of s's (slices shared) with
// Index set to their new position and Staged false, as ostree marks the
// finalized deployment.
func PredictDeployments(s *Sysroot, o PredictOptions) ([]*Deployment, error) {
	if s == nil {
		return nil, errors.New("predict deployments: no sysroot")
	}
	var current []*Deployment
	for _, d := range s.Deployments {
		if !d.Staged {
			current = append(current, d)
		}
	}
	state := s.StagedState
	if o.State != nil {
		state = o.State
	}
	if s.Staged == nil {
		if o.State != nil {
			return nil, fmt.Errorf("predict deployments: a staged state was given but nothing is staged in %s: %w", s.Path, ErrNotFound)
		}
		return renumber(current), nil
	}
	if state == nil {
		return nil, fmt.Errorf("predict deployments: staged deployment %s without its staged state: %w", s.Staged, ErrCorrupt)
	}
	staged := s.Staged
	if t := state.Target; t.OSName != staged.OSName || t.Checksum != staged.Checksum || t.Serial != staged.Serial {
		return nil, fmt.Errorf("predict deployments: the given staged state targets %s %s, but %s is staged: %w", t.OSName, t.Name(), staged, ErrCorrupt)
	}
	if (s.StagedLocked || state.Locked) && !o.IgnoreLock {
		// _ostree_sysroot_finalize_staged_inner returns early; the staged
		// deployment never gets a bootloader entry.
		return renumber(current), nil
	}
	var merge *Deployment
	if state.Merge != nil {
		for _, d := range current {
			if d.OSName == state.Merge.OSName && d.Checksum == state.Merge.Checksum && d.Serial == state.Merge.Serial {
				merge = d
				break
			}
		}
		if merge == nil {
			return nil, fmt.Errorf("predict deployments: merge deployment %s %s: ostree's finalization would fail: %w: %w",
				state.Merge.OSName, state.Merge.Name(), ErrMergeNotFound, ErrNotFound)
		}
	}
	out := []*Deployment{staged}
	for _, d := range current {
		// ostree_deployment_equal(d, NULL) is false: without a merge
		// deployment only the booted one is retained on that ground.
		isMerge := merge != nil && d.Same(merge)
		isBooted := s.Booted != nil && d.Same(s.Booted)
		if d.Pinned || d.OSName != staged.OSName || isBooted || isMerge {
			out = append(out, d)
		}
	}
	return renumber(out), nil
}

func renumber(ds []*Deployment) []*Deployment {
	out := make([]*Deployment, len(ds))
	for i, d := range ds {
		c := *d
		c.Index = i
		c.Staged = false
		out[i] = &c
	}
	return out
}

// DeploymentRoots returns the deployments' commits as root objects (the
// roots ostree_sysroot_cleanup_prune_repo adds to the refs), sorted and
// de-duplicated.
func DeploymentRoots(ds []*Deployment) []ObjectName {
	out := make([]ObjectName, 0, len(ds))
	for _, d := range ds {
		out = append(out, ObjectName{Checksum: d.Checksum, Type: ObjCommit})
	}
	slices.SortFunc(out, CompareObjectNames)
	return slices.Compact(out)
}

// PostFinalizeRoots returns the root commits that ostree's next cleanup
// (`ostree admin cleanup`, ostree_sysroot_cleanup) starts its depth-0
// reachability from, when deployments (from PredictDeployments) is the
// deployment list: sorted and de-duplicated.
//
// Those roots are every ref ostree_repo_traverse_reachable_refs lists
// (refs/heads, refs/remotes/*, refs/mirrors/*) that survives
// generate_deployment_refs, plus the deployments' commits. The deployment
// refs ostree/B/S/I are regenerated before the prune: cleanup_ref_prefix
// deletes every head ref named ostree/X/Y or below it for the three
// (bootversion, subbootversion) pairs other than the new one, and
// ostree/B/S/I is then set, for I from 0, to the I-th deployment's commit.
// So the current deployment refs are not roots; the deployments' commits
// are.
//
// When deployments starts with the staged deployment (finalization will
// write a new list), the new pair is either (1-B, 0) (new bootloader
// configuration, always when the number of deployments changes) or (B,
// 1-S) (only the boot links swap), where (B, S) is the current pair;
// telling the two apart needs ostree's comparison of the boot
// configurations, so in that case a stray ref under either candidate
// prefix that regeneration would not overwrite is kept as a root: it
// survives only if that prefix is the new one, and keeping it deletes less
// (ostree itself never leaves such refs behind). Otherwise (nothing staged,
// or locked), cleanup runs with the current pair, and the prediction is
// exact.
//
// A ref to a missing commit is returned like any other; the walk then
// stops on it (ostree skips it; we plan nothing rather than guess).
func PostFinalizeRoots(s *Sysroot, deployments []*Deployment) ([]ObjectName, error) {
	if s == nil || s.Repo == nil {
		return nil, errors.New("post-finalization roots: no sysroot repository")
	}
	refs, err := s.Repo.Refs()
	if err != nil {
		return nil, fmt.Errorf("post-finalization roots: %w", err)
	}
	return PostFinalizeRootsOf(s, deployments, refs, nil)
}

// PostFinalizeRootsOf is PostFinalizeRoots over the listed refs, without the
// head refs named in removed (those image GC removes).
func PostFinalizeRootsOf(s *Sysroot, deployments []*Deployment, refs []Ref, removed map[string]bool) ([]ObjectName, error) {
	survives := HeadRefSurvives(s, deployments)
	roots := DeploymentRoots(deployments)
	for _, r := range refs {
		if r.Checksum.IsZero() {
			return nil, fmt.Errorf("post-finalization roots: ref %q: zero checksum: %w", r.Name, ErrCorrupt)
		}
		if r.Kind == RefHead && (!survives(r.Name) || removed[r.Name]) {
			continue
		}
		roots = append(roots, ObjectName{Checksum: r.Checksum, Type: ObjCommit})
	}
	slices.SortFunc(roots, CompareObjectNames)
	return slices.Compact(roots), nil
}

// HeadRefSurvives reports, for a head ref name, whether it outlives the
// regeneration of the deployment refs when deployments is the list
// written (see PostFinalizeRoots).
func HeadRefSurvives(s *Sysroot, deployments []*Deployment) func(name string) bool {
	n := len(deployments)
	cur := [2]int{s.BootVersion, s.SubBootVersion}
	var survivors [][2]int // prefixes whose non-overwritten refs survive
	if s.Staged != nil && n > 0 && deployments[0].Same(s.Staged) {
		nonStaged := 0
		for _, d := range s.Deployments {
			if !d.Staged {
				nonStaged++
			}
		}
		survivors = append(survivors, [2]int{1 - cur[0], 0})
		if n == nonStaged {
			survivors = append(survivors, [2]int{cur[0], 1 - cur[1]})
		}
	} else {
		survivors = append(survivors, cur)
	}
	return func(name string) bool { return deploymentRefSurvives(name, survivors, n) }
}

// deploymentRefSurvives reports whether the head ref name outlives
// generate_deployment_refs when the new (bootversion, subbootversion) is one
// of survivors and n deployments are written. A name outside ostree/{0,1}/{0,1}
// is no deployment ref and always survives; one under a cleaned prefix never
// does; under a surviving prefix, ostree/B/S/I with I < n (as "%u" prints
// it) is overwritten by a deployment's commit, anything else stays.
func deploymentRefSurvives(name string, survivors [][2]int, n int) bool {
	rest, ok := strings.CutPrefix(name, "ostree/")
	if !ok || len(rest) < 3 || rest[1] != '/' || (rest[0] != '0' && rest[0] != '1') || (rest[2] != '0' && rest[2] != '1') {
		return true
	}
	if len(rest) > 3 && rest[3] != '/' {
		return true // e.g. ostree/0/10: another ref, not below the prefix
	}
	pair := [2]int{int(rest[0] - '0'), int(rest[2] - '0')}
	if !slices.Contains(survivors, pair) {
		return false
	}
	idx, isIndex := strings.CutPrefix(rest[3:], "/")
	if isIndex && idx != "" && (idx == "0" || idx[0] != '0') {
		if i, err := strconv.ParseUint(idx, 10, 32); err == nil && i < uint64(n) {
			return false
		}
	}
	return true
}

// CompareObjectNames orders object names by checksum, then type (the order of
// plans and root lists).
func CompareObjectNames(a, b ObjectName) int {
	if c := bytes.Compare(a.Checksum[:], b.Checksum[:]); c != 0 {
		return c
	}
	return int(a.Type) - int(b.Type)
}
