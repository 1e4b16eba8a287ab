package prune

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/durable"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"golang.org/x/sys/unix"
)

// This file binds the storage-free algorithm to an ostree repository on
// disk (package ostree's reader). Nothing here decides what to delete.

// RepoChildren is the depth-0 ChildrenFunc of a repository, as
// ostree_repo_traverse_commit_union at depth 0 sees it:
//   - commit → its root dirtree and root dirmeta, and its .commitmeta when
//     that loose file exists (the parent commit is not followed);
//   - dirtree → its files (type file) and every subdirectory's dirtree and
//     dirmeta;
//   - anything else → nothing, without touching the disk (ostree neither
//     loads dirmeta nor checks content objects when it traverses).
//
// A commit or dirtree that does not decode, and a missing commit, is an
// error naming it (ostree skips a missing root commit; we stop, and with no
// plan nothing is deleted).
//
// A missing dirtree is an error too, except while the repository holds a
// partial commit (state/<csum>.commitpartial, left by a commit-metadata-only
// pull such as `rpm-ostree upgrade --check`, which also moves the remote
// ref): ostree then ignores missing dirtrees below that commit, and so do
// we, for any commit, because a children function does not know through
// which commit it was reached. The difference only shows in a repository
// that is already corrupt (a complete commit missing a dirtree), where
// ostree's own outcome depends on its hash-table order.
func RepoChildren(r *ostree.Repo) ChildrenFunc {
	var partialOnce sync.Once
	var partial bool
	var partialErr error
	hasPartial := func() (bool, error) {
		partialOnce.Do(func() { partial, partialErr = hasPartialCommit(r) })
		return partial, partialErr
	}
	return func(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
		switch o.Type {
		case ostree.ObjCommit:
			c, err := r.LoadCommit(o.Checksum)
			if err != nil {
				return err
			}
			root := ostree.ObjectName{Checksum: c.RootTree, Type: ostree.ObjDirTree}
			var st unix.Stat_t
			if err := unix.Lstat(r.ObjectPath(root), &st); errors.Is(err, unix.ENOENT) {
				// ostree's iterator fails on loading the root dirtree
				// before it yields the root dirmeta, and ignores that for
				// a partial commit: neither is reachable then.
				if err := unix.Lstat(r.Path+"/state/"+o.Checksum.String()+".commitpartial", &st); err == nil {
					root.Type = 0
				}
			}
			if root.Type != 0 {
				emit(root)
				emit(ostree.ObjectName{Checksum: c.RootMeta, Type: ostree.ObjDirMeta})
			}
			cm := ostree.ObjectName{Checksum: o.Checksum, Type: ostree.ObjCommitMeta}
			switch err := unix.Lstat(r.ObjectPath(cm), &st); {
			case err == nil:
				emit(cm)
			case errors.Is(err, unix.ENOENT):
			default:
				return fmt.Errorf("object %s: %s: %w", cm, r.ObjectPath(cm), err)
			}
			return nil
		case ostree.ObjDirTree:
			b, err := r.ReadMeta(o)
			if errors.Is(err, ostree.ErrNotFound) {
				p, perr := hasPartial()
				if perr != nil {
					return fmt.Errorf("%w (and checking for partial commits: %w)", err, perr)
				}
				if p {
					return nil
				}
			}
			if err != nil {
				return err
			}
			err = ostree.WalkDirTree(b,
				func(_ []byte, c ostree.Checksum) error {
					emit(ostree.ObjectName{Checksum: c, Type: ostree.ObjFile})
					return nil
				},
				func(_ []byte, tree, meta ostree.Checksum) error {
					emit(ostree.ObjectName{Checksum: tree, Type: ostree.ObjDirTree})
					emit(ostree.ObjectName{Checksum: meta, Type: ostree.ObjDirMeta})
					return nil
				})
			if err != nil {
				return fmt.Errorf("%s: %w", r.ObjectPath(o), err)
			}
			return nil
		}
		return nil
	}
}

// hasPartialCommit reports whether state/ holds a <csum>.commitpartial.
func hasPartialCommit(r *ostree.Repo) (bool, error) {
	repoFD, err := openDirBeneath(unix.AT_FDCWD, r.Path, false)
	if err != nil {
		return false, err
	}
	defer unix.Close(repoFD)
	fd, err := openDirBeneath(repoFD, "state", true)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s/state: %w", r.Path, err)
	}
	dir := os.NewFile(uintptr(fd), r.Path+"/state")
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return false, fmt.Errorf("%s/state: %w", r.Path, err)
	}
	for _, n := range names {
		if len(n) == 64+len(".commitpartial") && strings.HasSuffix(n, ".commitpartial") {
			if _, err := ostree.ParseChecksum(n[:64]); err == nil {
				return true, nil
			}
		}
	}
	return false, nil
}

// RepoLister lists the repository's loose objects by name only, as
// ostree's list_loose_objects_at does: objects/XX for XX in 00..ff, in each
// the names of 62 hex digits plus a suffix (".file" in bare modes, ".filez"
// in archive mode, ".dirtree", ".dirmeta", ".commit", ".commitmeta"; other
// suffixes are never planned and are not reported). It reports size -1 and
// implements ObjectSizer, so that only the planned objects are stat()ed, as
// ostree queries the storage size only of what it deletes: on a warm cache
// the stat per object was the largest cost of planning.
//
// Nothing is followed: objects/XX must be a real directory (a symlink is
// an error naming it), and directories inside it are not objects.
func RepoLister(r *ostree.Repo) ObjectLister { return &repoLister{r: r} }

type repoLister struct{ r *ostree.Repo }

func (l *repoLister) suffixType(suf string) (ostree.ObjectType, bool) {
	switch suf {
	case "dirtree":
		return ostree.ObjDirTree, true
	case "dirmeta":
		return ostree.ObjDirMeta, true
	case "commit":
		return ostree.ObjCommit, true
	case "commitmeta":
		return ostree.ObjCommitMeta, true
	case l.r.Suffix(ostree.ObjFile):
		return ostree.ObjFile, true
	}
	return 0, false
}

func (l *repoLister) ListObjects(fn func(o ostree.ObjectName, size int64) error) error {
	objPath := l.r.Path + "/objects"
	objFD, err := openDirBeneath(unix.AT_FDCWD, objPath, false)
	if err != nil {
		return fmt.Errorf("%s: %w", objPath, err)
	}
	defer unix.Close(objFD)
	for b := 0; b < 256; b++ {
		xx := fmt.Sprintf("%02x", b)
		fd, err := openDirBeneath(objFD, xx, true)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV) {
				err = fmt.Errorf("%w: %w", err, ostree.ErrCorrupt)
			}
			return fmt.Errorf("%s/%s: %w", objPath, xx, err)
		}
		dir := os.NewFile(uintptr(fd), objPath+"/"+xx)
		ents, err := dir.ReadDir(-1)
		dir.Close()
		if err != nil {
			return fmt.Errorf("%s/%s: %w", objPath, xx, err)
		}
		for _, e := range ents {
			name := e.Name()
			if len(name) < 64 || name[62] != '.' || e.IsDir() {
				continue
			}
			t, ok := l.suffixType(name[63:])
			if !ok {
				continue
			}
			c, err := ostree.ParseChecksum(xx + name[:62])
			if err != nil {
				continue // not an object name ostree would have written
			}
			if err := fn(ostree.ObjectName{Checksum: c, Type: t}, -1); err != nil {
				return err
			}
		}
	}
	return nil
}

// ObjectSize is ostree_repo_query_object_storage_size: the loose file's
// st_size (of the symlink itself for bare symlink content).
func (l *repoLister) ObjectSize(o ostree.ObjectName) (int64, error) {
	var st unix.Stat_t
	p := l.r.ObjectPath(o)
	if err := unix.Lstat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("%s: %w", p, ostree.ErrNotFound)
		}
		return 0, fmt.Errorf("%s: %w", p, err)
	}
	return st.Size, nil
}

// FileSuffix is the repository mode's content-object suffix for plans.
func FileSuffix(r *ostree.Repo) string { return r.Suffix(ostree.ObjFile) }

// RepoLive is the LiveRoots of a repository at deletion time: every ref
// (heads, remotes, mirrors: the refs ostree's prune starts from, deployment
// refs ostree/B/S/I included) plus Extra roots (the deployments' commits, as
// ostree_sysroot_cleanup_prune_repo adds them).
type RepoLive struct {
	Repo  *ostree.Repo
	Extra []ostree.ObjectName
}

// LiveRoots lists the refs now, plus Extra.
func (l RepoLive) LiveRoots(ctx context.Context) ([]ostree.ObjectName, error) {
	refs, err := l.Repo.Refs()
	if err != nil {
		return nil, err
	}
	roots := append([]ostree.ObjectName(nil), l.Extra...)
	for _, ref := range refs {
		roots = append(roots, ostree.ObjectName{Checksum: ref.Checksum, Type: ostree.ObjCommit})
	}
	return roots, nil
}

// Children is RepoChildren.
func (l RepoLive) Children(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
	return RepoChildren(l.Repo)(ctx, o, emit)
}

// RepoDeleter deletes loose objects of a repository without following any
// symlink below it: each objects/XX directory is opened with
// RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH and the object is unlinked relative to
// it. Close it when done. Delete and Tombstone may run concurrently (see
// Concurrent); Sync and Close may not run with anything else.
type RepoDeleter struct {
	// FS is the system calls that change and flush the repository
	// (RealDeleterFS); tests wrap them. Set it before the first call.
	FS      DeleterFS
	repo    *ostree.Repo
	objFD   int
	stateFD int // -1 when state/ does not exist
	subFDs  [256]int
	mu      sync.Mutex // guards subFDs and dirty
	dirty   barrierDirs
	once    sync.Once
	// WriteFS writes tombstones (the shared durable writer,
	// durable.Real()); tests replace one step with a failing one.
	WriteFS durable.FS
}

// NewRepoDeleter opens r's objects directory for deletion. The caller holds
// the exclusive repository lock.
func NewRepoDeleter(r *ostree.Repo) (*RepoDeleter, error) {
	d := &RepoDeleter{FS: RealDeleterFS(), WriteFS: durable.Real(), repo: r, objFD: -1, stateFD: -1}
	for i := range d.subFDs {
		d.subFDs[i] = -1
	}
	fd, err := openDirBeneath(unix.AT_FDCWD, r.Path+"/objects", false)
	if err != nil {
		return nil, fmt.Errorf("open %s/objects: %w", r.Path, err)
	}
	d.objFD = fd
	repoFD, err := openDirBeneath(unix.AT_FDCWD, r.Path, false)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("open %s: %w", r.Path, err)
	}
	defer unix.Close(repoFD)
	sfd, err := openDirBeneath(repoFD, "state", true)
	switch {
	case err == nil:
		d.stateFD = sfd
	case errors.Is(err, unix.ENOENT):
	default:
		d.Close()
		return nil, fmt.Errorf("open %s/state: %w", r.Path, err)
	}
	return d, nil
}

// openDirBeneath opens a directory; with beneath, path is relative to dfd
// and may not leave it nor go through any symlink. The repository path
// itself may go through symlinks (/ostree/repo on a booted host is one).
func openDirBeneath(dfd int, path string, beneath bool) (int, error) {
	how := &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC}
	if beneath {
		how.Resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS
	}
	for {
		fd, err := unix.Openat2(dfd, path, how)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// Concurrent: Delete and Tombstone may run on several goroutines (the
// directory cache is locked; unlinkat on distinct names is independent).
func (d *RepoDeleter) Concurrent() bool { return true }

func (d *RepoDeleter) subdir(b byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if fd := d.subFDs[b]; fd >= 0 {
		return fd, nil
	}
	fd, err := openDirBeneath(d.objFD, fmt.Sprintf("%02x", b), true)
	if err != nil {
		return -1, err
	}
	d.subFDs[b] = fd
	return fd, nil
}

// rel is the object's file name inside objects/XX.
func (d *RepoDeleter) rel(o ostree.ObjectName) string {
	if o.Type == ostree.ObjTombstoneCommit {
		// ostree_object_type_to_string says "tombstone-commit" (and so
		// does the loose path), whatever ostree-core.h's comment claims.
		return o.Checksum.String()[2:] + ".tombstone-commit"
	}
	return o.Checksum.String()[2:] + "." + d.repo.Suffix(o.Type)
}

// Delete unlinks one loose object; an object (or objects/XX) already gone
// is not an error. For a commit it first removes state/<csum>.commitpartial,
// as ostree's prune marks a deleted commit non-partial.
func (d *RepoDeleter) Delete(o ostree.ObjectName) error {
	if o.Type == ostree.ObjCommit && d.stateFD >= 0 {
		d.touchState()
		err := d.FS.Unlink(d.stateFD, "state", o.Checksum.String()+".commitpartial")
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%s/state/%s.commitpartial: %w", d.repo.Path, o.Checksum, err)
		}
	}
	fd, err := d.subdir(o.Checksum[0])
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", d.repo.ObjectPath(o), err)
	}
	d.touch(o.Checksum[0])
	if err := d.FS.Unlink(fd, fmt.Sprintf("objects/%02x", o.Checksum[0]), d.rel(o)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%s: %w", d.repo.ObjectPath(o), err)
	}
	return nil
}

// Tombstone writes objects/XX/REST.tombstone-commit when the repository
// config sets core.tombstone-commits, as ostree_repo_delete_object does: an
// a{sv} with "commit" → the checksum as a bytestring (ay with its NUL),
// stored under the deleted commit's checksum, mode 0644. An existing
// tombstone is kept (ostree does not rewrite an object it has).
func (d *RepoDeleter) Tombstone(c ostree.Checksum) error {
	if !d.repo.TombstoneCommits {
		return nil
	}
	o := ostree.ObjectName{Checksum: c, Type: ostree.ObjTombstoneCommit}
	name := d.rel(o)
	tomb := d.repo.Path + "/objects/" + c.String()[:2] + "/" + name
	fd, err := d.subdir(c[0])
	if errors.Is(err, unix.ENOENT) {
		// ostree would create objects/XX; so do we, beneath objects/.
		d.touchObjects()
		if err := unix.Mkdirat(d.objFD, fmt.Sprintf("%02x", c[0]), 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("tombstone %s: %w", tomb, err)
		}
		// 0755 whatever the umask (the process runs with 077).
		if err := unix.Fchmodat(d.objFD, fmt.Sprintf("%02x", c[0]), 0o755, 0); err != nil {
			return fmt.Errorf("tombstone %s: %w", tomb, err)
		}
		fd, err = d.subdir(c[0])
	}
	if err != nil {
		return fmt.Errorf("tombstone %s: %w", tomb, err)
	}
	// The rename below is durable at the next barrier (Sync), with the
	// commit's unlink in the same directory.
	d.touch(c[0])
	var st unix.Stat_t
	if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		return nil
	}
	// ostree's tombstone, written whole through the shared writer (see
	// ostree.WriteTombstone).
	if err := ostree.WriteTombstone(d.WriteFS, fd, d.repo.Path+"/objects/"+c.String()[:2], name, c); err != nil {
		return fmt.Errorf("tombstone %s: %w", tomb, err)
	}
	return nil
}

// Close releases the directory descriptors.
func (d *RepoDeleter) Close() error {
	d.once.Do(func() {
		for i, fd := range d.subFDs {
			if fd >= 0 {
				unix.Close(fd)
				d.subFDs[i] = -1
			}
		}
		if d.stateFD >= 0 {
			unix.Close(d.stateFD)
		}
		if d.objFD >= 0 {
			unix.Close(d.objFD)
		}
	})
	return nil
}

// PlanRepo computes the plan of r for roots (root commits) at depth 0,
// holding ostree's shared repository lock like ostree's own traversal (so
// no prune deletes under the walk). lockTimeout bounds the wait for the
// lock (0: wait as long as ctx allows).
func PlanRepo(ctx context.Context, r *ostree.Repo, roots []ostree.ObjectName, lockTimeout time.Duration) (*Plan, error) {
	lock, err := lockRepo(ctx, r, false, lockTimeout)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	return ComputePlan(ctx, RepoLister(r), roots, FileSuffix(r), RepoChildren(r))
}

// ExecuteRepo executes p on r under ostree's exclusive repository lock (as
// ostree's prune holds it), with the live roots being every ref now plus
// extraRoots (the commits of the deployments, which ostree's cleanup adds to
// the refs). lockTimeout bounds the wait for the lock (0: as long as ctx
// allows); the error then names the lock and, when found, its holders.
func ExecuteRepo(ctx context.Context, r *ostree.Repo, p *Plan, extraRoots []ostree.ObjectName, lockTimeout time.Duration, progress func(done, total int)) (Result, error) {
	return executeRepo(ctx, r, p, extraRoots, lockTimeout, progress, nil)
}

// executeRepo is ExecuteRepo with a first phase, before run under the lock
// before any object is deleted (an error from it deletes nothing).
func executeRepo(ctx context.Context, r *ostree.Repo, p *Plan, extraRoots []ostree.ObjectName, lockTimeout time.Duration, progress func(done, total int), before func(*Result) error) (Result, error) {
	// Reject a bad plan before waiting for anything.
	if err := p.Validate(); err != nil {
		return Result{Remaining: len(p.Remaining())}, err
	}
	lock, err := lockRepo(ctx, r, true, lockTimeout)
	if err != nil {
		return Result{Remaining: len(p.Remaining())}, err
	}
	defer lock.Unlock()
	d, err := NewRepoDeleter(r)
	if err != nil {
		return Result{Remaining: len(p.Remaining())}, err
	}
	defer d.Close()
	if before != nil {
		var res Result
		if err := before(&res); err != nil {
			res.Remaining = len(p.Remaining())
			return res, err
		}
		out, err := p.Execute(ctx, d, RepoLive{Repo: r, Extra: extraRoots}, progress)
		out.RefsRemoved, out.RefsKept = res.RefsRemoved, res.RefsKept
		return out, err
	}
	return p.Execute(ctx, d, RepoLive{Repo: r, Extra: extraRoots}, progress)
}

func lockRepo(ctx context.Context, r *ostree.Repo, exclusive bool, timeout time.Duration) (*ostree.RepoLock, error) {
	lctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		lctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return r.Lock(lctx, exclusive)
}
