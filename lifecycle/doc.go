// Package lifecycle runs ostree-prefinalize's steps around ostree's
// finalization of a staged deployment, each re-reading the sysroot and the
// runtime store (package store) at its start:
//
//  1. stage (stage.go): when a deployment is staged, the /etc merge into
//     it (package etcmerge) with a baseline of the booted etc, the takeover
//     of ostree's merge when it cannot change ostree's outcome
//     (takeover.go), the SELinux policy refresh that the takeover makes
//     ostree skip (selinux.go), and the prune plan (plan.go).
//  2. watch (watch.go): the watcher's batches (Refresh, MarkPending) keep
//     the merge current while the system runs.
//  3. seal (seal.go, `finalize --pre`): at shutdown, before ostree
//     finalizes, the last changes are applied and flushed.
//  4. post (post.go, `finalize --post`): after ostree finalized, the plan
//     is checked against the deployments and persisted for the next boot.
//  5. cleanup (cleanup.go): at the next boot, the planned objects are
//     deleted under ostree's repository lock.
//
// On any doubt a step falls back (fallback.go): ostree's own staged state
// restored and the staged etc reset, so that ostree merges as if we had
// never been there; if even that fails, finalization is locked. Status
// (status.go) reads it all. The states a step records are typed here
// (states.go: EtcState, PolicyState); the prune figures of every JSON
// result share one vocabulary (status.go: PlannedFigures, DeletedFigures).
//
// Taking over ostree's merge also skips ostree's SELinux policy refresh,
// so stage runs it and the later steps keep it valid or fall back.
package lifecycle
