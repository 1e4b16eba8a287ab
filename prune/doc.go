// Package prune is the mock prune: which loose objects of an ostree
// repository become unreachable once finalization has written the new
// deployment list, computed ahead of time, and the deletion of exactly those
// objects later.
//
// # Basics
//
// Reachable walks from root commits through a ChildrenFunc, in parallel, with
// ostree's depth-0 semantics (ostree_sysroot_cleanup_prune_repo →
// ostree_repo_prune_from_reachable with
// ostree_repo_traverse_commit_union at depth 0): the commit, its detached
// metadata, its root dirtree/dirmeta and everything below; parents are not
// followed. ComputePlan subtracts that set from the listed loose objects and
// returns a Plan; RootsHash is the ref-state hash of the roots. Plan.Execute
// re-checks the roots against the live repository and deletes in the order
// commits → trees → content, with an ordering barrier (Deleter.Sync) between
// the phases that holds across a power loss: RepoDeleter's barrier fsyncs
// the directories the phase changed, never the whole filesystem
// (barrier.go).
//
// The roots come from roots.go: PredictDeployments is the deployment list
// that ostree's finalization of the staged deployment will write (staged
// first, then every deployment that is pinned, of another stateroot, booted
// or the merge deployment), PostFinalizeRoots the refs that survive the
// regeneration of the deployment refs ostree/B/S/I plus those deployments'
// commits: what the next `ostree admin cleanup` starts from.
//
// The algorithm knows nothing of storage: the children function, the
// object lister and the deleter are supplied by the repository binding
// (repo.go: RepoChildren, RepoLister, RepoDeleter, RepoLive, and PlanRepo /
// ExecuteRepo, which also take ostree's repository lock) or by tests.
//
// # Caveats
//
// A plan is only valid while the caller holds ostree's exclusive repository
// lock during Execute; the package does not take it. A .commitmeta is
// deleted only with its commit, and types other than commit, commitmeta,
// dirtree, dirmeta and file (payload links, tombstones) are never planned:
// where ostree might delete more, the plan deletes less.
package prune

//go:generate go run ./internal/genseeds testdata/plan
