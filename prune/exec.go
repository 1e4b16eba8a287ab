package prune

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// Deleter removes loose objects. The repository binding implements it over
// the objects directory; tests record or break calls.
type Deleter interface {
	// Delete unlinks one object. An object that is already gone is not an
	// error (a resumed run meets the objects the interrupted one removed).
	// For a commit, the binding also removes its state/<csum>.commitpartial
	// marker, as ostree's prune does.
	Delete(o ostree.ObjectName) error
	// Tombstone is called right after a commit is deleted (also when it was
	// already gone, so a run interrupted between the two steps is completed).
	// The binding writes a .commit-tombstone exactly when the repository
	// config sets core.tombstone-commits=true, as ostree_repo_delete_object
	// does, and otherwise does nothing.
	Tombstone(commit ostree.Checksum) error
	// Sync is an ordering barrier: it returns nil once every deletion (and
	// tombstone) so far is durable. Execute calls it between phases so that
	// the order of safety invariant 2 also holds after a power loss, not
	// only after a crash of this process. RepoDeleter fsyncs the
	// directories it changed, not the whole filesystem.
	Sync() error
}

// LiveRoots is the repository as it is at deletion time (with the
// exclusive repository lock held by the caller, so nothing can add a root
// while Execute runs).
type LiveRoots interface {
	// LiveRoots returns the current root commits (refs and deployments).
	LiveRoots(ctx context.Context) ([]ostree.ObjectName, error)
	// Children walks the live repository, as a ChildrenFunc.
	Children(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error
}

// Result says what one Execute run did. Counts are for this run only; the
// plan itself remembers progress across runs.
type Result struct {
	// RootsChanged is true when the live roots hash differed from the
	// plan's; NewRoots is how many live roots were not in the plan.
	RootsChanged bool `json:"roots_changed"`
	NewRoots     int  `json:"new_roots"`
	// Deleted and BytesFreed count objects whose deletion succeeded in this
	// run (an object already gone counts with its planned size).
	Deleted    int    `json:"deleted"`
	BytesFreed uint64 `json:"bytes_freed"`
	// KeptLive counts planned objects dropped from the plan because a new
	// root reaches them; KeptBytes is their planned size.
	KeptLive  int    `json:"kept_live"`
	KeptBytes uint64 `json:"kept_bytes"`
	// Remaining is how many entries are still to delete (0 when done).
	Remaining int `json:"remaining"`
	// RefsRemoved and RefsKept count the image-store refs of a plan with
	// image GC that this run removed, or kept because they moved or came
	// into use (RemoveImageRefs, run before Execute).
	RefsRemoved int `json:"refs_removed,omitempty"`
	RefsKept    int `json:"refs_kept,omitempty"`
}

// Execution phases, in order (safety invariant 2): a commit goes before
// anything it references, its detached metadata included (ostree unlinks
// the .commitmeta first; we do it after, so that no commit is ever on disk
// without its signatures; a .commitmeta left alone by an interruption is
// inert and stays in the plan), dirtrees before what they reference
// (dirmeta and content, deleted last).
func phaseOf(t ostree.ObjectType) int {
	switch t {
	case ostree.ObjCommit:
		return 0
	case ostree.ObjCommitMeta:
		return 1
	case ostree.ObjDirTree:
		return 2
	default:
		return 3
	}
}

const nPhases = 4

// ConcurrentDeleter is implemented by deleters whose Delete and Tombstone
// may be called from several goroutines at once.
type ConcurrentDeleter interface {
	Deleter
	Concurrent() bool
}

// deleteWorkers is how many unlinks run at once within a phase.
const deleteWorkers = 4

// deletePhase deletes the entries at indices todo (one phase), calling
// done(i) from this goroutine for each one deleted, in no particular
// order. It stops at the first error or when ctx ends; entries not reported
// done stay pending.
func deletePhase(ctx context.Context, deleter Deleter, p *Plan, todo []int, done func(int)) error {
	one := func(i int) error {
		e := &p.entries[i]
		if err := deleter.Delete(e.Name()); err != nil {
			return fmt.Errorf("delete object %s: %w", p.ObjectString(*e), err)
		}
		if e.Type == ostree.ObjCommit {
			if err := deleter.Tombstone(e.Checksum); err != nil {
				return fmt.Errorf("tombstone for commit %s: %w", e.Checksum, err)
			}
		}
		return nil
	}
	cd, ok := deleter.(ConcurrentDeleter)
	if !ok || !cd.Concurrent() || len(todo) < 2*deleteWorkers {
		for _, i := range todo {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := one(i); err != nil {
				return err
			}
			done(i)
		}
		return nil
	}
	type result struct {
		i   int
		err error
	}
	work := make(chan int)
	results := make(chan result)
	for w := 0; w < deleteWorkers; w++ {
		go func() {
			for i := range work {
				results <- result{i, one(i)}
			}
		}()
	}
	var firstErr error
	next, inflight := 0, 0
	for next < len(todo) || inflight > 0 {
		var send chan int
		if firstErr == nil && next < len(todo) {
			if err := ctx.Err(); err != nil {
				firstErr = err
			} else {
				send = work
			}
		}
		if send == nil && inflight == 0 {
			break
		}
		var nextIdx int
		if send != nil {
			nextIdx = todo[next]
		}
		cancelled := ctx.Done()
		if firstErr != nil {
			cancelled = nil // only wait for the unlinks in flight
		}
		select {
		case send <- nextIdx:
			next++
			inflight++
		case r := <-results:
			inflight--
			if r.err != nil {
				if firstErr == nil {
					firstErr = r.err
				}
				continue
			}
			done(r.i)
		case <-cancelled:
			firstErr = ctx.Err()
		}
	}
	close(work)
	return firstErr
}

// Execute deletes the plan's objects that are still unreachable.
//
// Before deleting anything it validates every entry (one bad entry rejects
// the plan) and compares RootsHash(live roots) with the plan's. When they
// differ, it walks only the live roots that are not among the plan's roots
// and drops every object they reach from the plan (counted in KeptLive); a
// root that disappeared only makes more objects unreachable, which the plan
// leaves alone. Any error there deletes nothing.
//
// Then it deletes, in order: commits (each followed by Tombstone),
// .commitmeta, dirtrees, then dirmeta and content, calling Sync between phases
// that follow deletions, so that at every instant no commit on disk lacks a
// child. (Within the tree phase the order is by checksum, so an unreachable
// dirtree may briefly outlive an unreachable subdirectory; nothing
// reachable refers to either.) ctx is checked before every object: on cancellation Execute stops
// at once and returns ctx's error with the counts so far. A Delete error
// stops it too, naming the object. Either way the plan records which
// entries are done, and Execute may be called again on the same plan to
// finish (Remaining lists what is left). An entry is recorded as done only
// once its deletion is durable: before returning, Execute syncs what it
// deleted since the last Sync, and if that Sync fails those entries go back
// to pending (and out of the counts), so a persisted Remaining never omits
// an object whose unlink a power loss could undo.
//
// progress, if not nil, is called after every object with the number of
// entries done (deleted or kept) and the plan's size.
func (p *Plan) Execute(ctx context.Context, deleter Deleter, live LiveRoots, progress func(done, total int)) (Result, error) {
	var res Result
	if err := p.Validate(); err != nil {
		return res, err
	}
	total := len(p.entries)
	done := 0
	for _, e := range p.entries {
		if e.state != statePending {
			done++
		}
	}
	// fresh are the entries this run marked deleted since the last
	// successful Sync. An entry marked deleted leaves the plan that a
	// caller persists (MarshalBinary keeps only pending entries), so it may
	// only stay marked once its unlink is durable: otherwise a power loss
	// after the persisted plan forgot a commit could bring the commit back
	// while a later run deletes its trees, breaking invariant 2 for good.
	var fresh []int
	syncFresh := func() error {
		if err := deleter.Sync(); err != nil {
			// Not durable: back to pending (deleting again is harmless,
			// an object already gone is not an error).
			for _, i := range fresh {
				e := &p.entries[i]
				e.state = statePending
				res.Deleted--
				res.BytesFreed -= e.Size
				done--
			}
			fresh = fresh[:0]
			return err
		}
		fresh = fresh[:0]
		return nil
	}
	finish := func(err error) (Result, error) {
		if len(fresh) > 0 {
			// Stopping (cancelled or failed): make what this run deleted
			// durable before the caller records it as done. This costs
			// one barrier even after SIGTERM; without it the record
			// could outrun the disk.
			if serr := syncFresh(); serr != nil {
				err = errors.Join(err, fmt.Errorf("sync after deleting: %w", serr))
			}
		}
		res.Remaining = total - done
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return finish(err)
	}
	roots, err := live.LiveRoots(ctx)
	if err != nil {
		return finish(fmt.Errorf("live roots: %w", err))
	}
	if err := p.refuseLiveRoots(roots); err != nil {
		return finish(err)
	}
	if RootsHash(roots) != p.RootsHash {
		res.RootsChanged = true
		var fresh []ostree.ObjectName
		for _, r := range roots {
			if _, found := slices.BinarySearchFunc(p.Roots, r, compareNames); !found {
				fresh = append(fresh, r)
			}
		}
		res.NewRoots = len(fresh)
		if len(fresh) > 0 {
			reach, err := Reachable(ctx, fresh, live.Children)
			if err != nil {
				return finish(fmt.Errorf("walking new roots: %w", err))
			}
			for i := range p.entries {
				e := &p.entries[i]
				if e.state == statePending && reach.Has(e.Name()) {
					e.state = stateKept
					res.KeptLive++
					res.KeptBytes += e.Size
					done++
				}
			}
		}
	}
	if progress != nil && done > 0 {
		progress(done, total)
	}

	// Whether some earlier phase has deletions that may not be durable yet
	// (from this run or from an interrupted one whose sync we cannot know).
	unsynced := false
	for ph := 0; ph < nPhases; ph++ {
		if ph >= 2 && unsynced {
			// Commits must be gone durably before their trees go, and
			// trees before content. Between commits and their detached
			// metadata a process crash suffices (a .commitmeta that
			// outlives its commit after a power loss is inert). The
			// barrier is a fsync of the directories the earlier phases
			// changed (RepoDeleter.Sync): the unlinks are journalled
			// metadata, and that fsync returns once the journal holding
			// them (and everything logged before) is committed, so no
			// unlink of the next phase can reach the disk before them.
			if err := syncFresh(); err != nil {
				return finish(fmt.Errorf("sync before deleting %s: %w", phaseName(ph), err))
			}
			unsynced = false
		}
		var todo []int
		for i := range p.entries {
			e := &p.entries[i]
			if phaseOf(e.Type) != ph {
				continue
			}
			if e.state == stateDeleted {
				unsynced = true
				continue
			}
			if e.state == statePending {
				todo = append(todo, i)
			}
		}
		if len(todo) > 0 {
			unsynced = true
		}
		// Order matters only between phases; within one, unlinks run on a
		// few goroutines when the deleter allows it, which keeps several
		// directory and inode reads in flight on a cold cache.
		err := deletePhase(ctx, deleter, p, todo, func(i int) {
			e := &p.entries[i]
			e.state = stateDeleted
			fresh = append(fresh, i)
			res.Deleted++
			res.BytesFreed += e.Size
			done++
			if progress != nil {
				progress(done, total)
			}
		})
		if err != nil {
			return finish(err)
		}
	}
	if unsynced {
		if err := syncFresh(); err != nil {
			return finish(fmt.Errorf("sync after deleting: %w", err))
		}
	}
	return finish(nil)
}

// refuseLiveRoots is defence in depth against a wrong plan whose roots
// hash matches (computed for the right roots, but by a buggy or hostile
// writer of the plan file): a plan that names one of its own roots, or,
// when the live roots hash to the plan's, a live root commit (a ref or a
// deployment now), or such a commit's detached metadata, is refused whole
// before anything is deleted. No correct plan does: a root is reachable by
// definition. (When the roots moved, a new live root is walked and kept
// below, as before; deeper objects of a live commit would take a walk of
// every root to check, the cost the plan exists to avoid: the roots are
// checked because that is free.)
func (p *Plan) refuseLiveRoots(live []ostree.ObjectName) error {
	check := p.Roots
	if RootsHash(live) == p.RootsHash {
		check = append(slices.Clone(live), p.Roots...)
	}
	roots := make(map[ostree.Checksum]bool, len(check))
	for _, r := range check {
		if r.Type == ostree.ObjCommit {
			roots[r.Checksum] = true
		}
	}
	for _, e := range p.entries {
		if e.state == statePending && (e.Type == ostree.ObjCommit || e.Type == ostree.ObjCommitMeta) && roots[e.Checksum] {
			return fmt.Errorf("plan names %s, of a live root commit (a ref, a deployment or a root of the plan): refused, nothing deleted: %w", p.ObjectString(e), ErrBadPlan)
		}
	}
	return nil
}

func phaseName(ph int) string {
	switch ph {
	case 0:
		return "commits"
	case 1:
		return "commitmeta"
	case 2:
		return "dirtrees"
	}
	return "dirmeta and content"
}
