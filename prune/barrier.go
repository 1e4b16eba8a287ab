package prune

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// This file holds the ordering barriers of RepoDeleter: what Execute calls
// Sync between phases. They fsync the directories the deletions touched,
// never the whole filesystem (issue 15: on Fedora CoreOS and RHCOS
// /sysroot shares its filesystem with /var and the container storage, and a
// syncfs there writes back every dirty page of every workload).

// DeleterFS is the system calls through which a RepoDeleter changes and
// flushes the repository (STYLE.md's function-field filesystem):
// NewRepoDeleter sets the real ones; a test wraps them to see which barrier
// ran where, or to make one call fail. dir names a directory relative to
// the repository: "objects/ab", "objects" or "state".
type DeleterFS struct {
	// Unlink removes name in the directory dirfd (unlinkat).
	Unlink func(dirfd int, dir, name string) error
	// FsyncDir makes the directory's entries durable (fsync of the
	// directory).
	FsyncDir func(dirfd int, dir string) error
	// Syncfs flushes the whole filesystem holding fd. Used only where the
	// filesystem refuses to fsync a directory.
	Syncfs func(fd int) error
}

// RealDeleterFS is the DeleterFS of the running system.
func RealDeleterFS() DeleterFS {
	return DeleterFS{
		Unlink:   func(dirfd int, _, name string) error { return unix.Unlinkat(dirfd, name, 0) },
		FsyncDir: func(dirfd int, _ string) error { return retryEINTR(func() error { return unix.Fsync(dirfd) }) },
		Syncfs:   func(fd int) error { return retryEINTR(func() error { return unix.Syncfs(fd) }) },
	}
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

// syncWorkers bounds the directory fsyncs of one barrier that run at once
// (a phase touches at most 258 directories).
const syncWorkers = 8

// barrierDirs tracks, for one RepoDeleter, the directories changed since
// the last successful barrier. Guarded by RepoDeleter.mu.
type barrierDirs struct {
	sub   [256]bool // objects/XX
	obj   bool      // objects/ (an objects/XX created for a tombstone)
	state bool      // state/ (a .commitpartial removed)
	// syncfsOnly is set once the filesystem refused a directory fsync.
	syncfsOnly bool
}

// touch records that objects/XX is about to change. It is called for
// every object Delete or Tombstone handles, also when the object turns out
// to be gone already: a run that resumes after a SIGKILL meets the unlinks
// of the killed run, which nobody made durable, and must not start the next
// phase before they are.
func (d *RepoDeleter) touch(b byte) {
	d.mu.Lock()
	d.dirty.sub[b] = true
	d.mu.Unlock()
}

func (d *RepoDeleter) touchObjects() {
	d.mu.Lock()
	d.dirty.obj = true
	d.mu.Unlock()
}

func (d *RepoDeleter) touchState() {
	d.mu.Lock()
	d.dirty.state = true
	d.mu.Unlock()
}

// Sync is the ordering barrier of Execute: when it returns nil, every
// unlink, and every tombstone written, since the previous barrier is
// durable. It fsyncs each directory changed since then (objects/XX,
// objects/ when a tombstone needed a new objects/XX, state/ when a
// .commitpartial went), in parallel (syncWorkers at a time), and returns
// once all have completed.
//
// Why a directory fsync is the barrier: an unlink changes only metadata (the
// directory entry, the inode's link count). fsync of a directory returns
// once its changed entries are on stable storage. On ext4 and XFS the
// unlink is a transaction in the filesystem's journal, and fsync of the
// directory forces a commit of the journal up to that transaction, which
// holds it and every metadata operation logged before it (the journal is
// one ordered sequence, replayed in order after a power loss); on btrfs
// it logs the directory's changes in the fsync log. Either way, the unlinks
// before the barrier are durable before Execute issues any unlink after it,
// so a power loss can never bring back a commit whose trees are gone. Unlike
// syncfs it writes back no file data, neither ours nor that of the other
// workloads sharing the filesystem (container images, databases).
//
// A filesystem that refuses to fsync a directory (EINVAL, ENOTSUP, ENOSYS)
// gets syncfs instead, for this barrier and every later one. Any other
// error is returned and leaves the failed directories marked, so the next
// barrier tries them again.
func (d *RepoDeleter) Sync() error {
	d.mu.Lock()
	type dir struct {
		fd   int
		name string
		done func()
	}
	var dirs []dir
	for b, dirty := range d.dirty.sub {
		if dirty && d.subFDs[b] >= 0 {
			b := b
			dirs = append(dirs, dir{d.subFDs[b], fmt.Sprintf("objects/%02x", b), func() { d.dirty.sub[b] = false }})
		}
	}
	if d.dirty.obj {
		dirs = append(dirs, dir{d.objFD, "objects", func() { d.dirty.obj = false }})
	}
	if d.dirty.state && d.stateFD >= 0 {
		dirs = append(dirs, dir{d.stateFD, "state", func() { d.dirty.state = false }})
	}
	syncfsOnly := d.dirty.syncfsOnly
	d.mu.Unlock()
	if len(dirs) == 0 {
		return nil
	}
	if syncfsOnly {
		return d.syncfs()
	}

	errs := make([]error, len(dirs))
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(syncWorkers, len(dirs)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				errs[i] = d.FS.FsyncDir(dirs[i].fd, dirs[i].name)
			}
		}()
	}
	for i := range dirs {
		work <- i
	}
	close(work)
	wg.Wait()

	var failed []error
	refused := false
	d.mu.Lock()
	for i, err := range errs {
		switch {
		case err == nil:
			dirs[i].done()
		case dirFsyncRefused(err):
			refused = true
		default:
			failed = append(failed, fmt.Errorf("fsync %s/%s: %w", d.repo.Path, dirs[i].name, err))
		}
	}
	if refused {
		d.dirty.syncfsOnly = true
	}
	d.mu.Unlock()
	if len(failed) > 0 {
		return errors.Join(failed...)
	}
	if refused {
		return d.syncfs()
	}
	return nil
}

// dirFsyncRefused says that the filesystem does not fsync directories at
// all (as opposed to failing to write them back).
func dirFsyncRefused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTSUP) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)
}

// syncfs is the fallback barrier: every change of the filesystem is durable
// when it returns, so every directory is clean.
func (d *RepoDeleter) syncfs() error {
	if err := d.FS.Syncfs(d.objFD); err != nil {
		return fmt.Errorf("syncfs %s: %w", d.repo.Path, err)
	}
	d.mu.Lock()
	d.dirty.sub = [256]bool{}
	d.dirty.obj, d.dirty.state = false, false
	d.mu.Unlock()
	return nil
}
