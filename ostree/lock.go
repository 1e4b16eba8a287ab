package ostree

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/lockwait"
	"golang.org/x/sys/unix"
)

// ErrLockTimeout is wrapped when Lock gives up because its context ended.
var ErrLockTimeout = errors.New("repository lock not acquired")

// RepoLock is one held repository lock; release it with Unlock.
//
// Each RepoLock is its own open file description of repo/.lock, so like two
// OstreeRepo instances, two RepoLocks in one process exclude each other.
type RepoLock struct {
	mu        sync.Mutex
	f         *os.File
	path      string
	exclusive bool
	flock     bool // flock(2) fallback in use (kernel without OFD locks)
}

// Path is the lock file.
func (l *RepoLock) Path() string { return l.path }

// Exclusive reports whether the lock is held exclusively.
func (l *RepoLock) Exclusive() bool { return l.exclusive }

// lockPollMax bounds the wait between two attempts.
const lockPollMax = 100 * time.Millisecond

// Lock takes libostree's repository lock (ostree-repo.c push_repo_lock): an
// open-file-description lock (fcntl F_OFD_SETLK) on the whole of repo/.lock,
// read-locked for shared, write-locked for exclusive, falling back to
// flock(2) where the kernel lacks OFD locks, exactly as libostree does. The
// file is opened as libostree opens it (O_CREAT|O_RDWR|O_CLOEXEC, mode 0660
// before umask), except that a symlink at .lock is refused rather than
// followed.
//
// It waits until the lock is granted or ctx ends; then the error wraps
// ErrLockTimeout and ctx.Err(), names the lock file and, when they can be
// found in /proc, the processes holding it.
//
// Waiting (internal/lockwait.Poll, the one lock loop) polls the
// non-blocking F_OFD_SETLK with a backoff of up to 100ms,
// rather than blocking in F_OFD_SETLKW: a blocked fcntl cannot be
// interrupted from Go without signalling its thread, so a SETLKW waiter
// would outlive a cancelled context and could take the lock after we gave
// up. Linux grants no fairness to blocked waiters either, so polling loses
// nothing; libostree itself polls (once a second, lock-timeout-secs=30 by
// default).
func (r *Repo) Lock(ctx context.Context, exclusive bool) (*RepoLock, error) {
	return lockFile(ctx, r.Path, ".lock", exclusive)
}

// LockSysroot takes ostree's sysroot lock (ostree_sysroot_lock:
// glnx_make_lock_file on <sysroot>/ostree/lock, exclusive), which every
// `ostree admin` command that changes deployments holds, deploy --stage
// included. Holding it while we rewrite the staged state means ostree cannot
// re-stage under our feet. Waiting and errors are as Repo.Lock's.
func LockSysroot(ctx context.Context, sysroot string) (*RepoLock, error) {
	return lockFile(ctx, sysroot+"/ostree", "lock", true)
}

// lockFile opens dir/name (created if missing, never through a symlink) and
// takes an OFD lock (flock where OFD locks are missing) on all of it.
func lockFile(ctx context.Context, dir, name string, exclusive bool) (*RepoLock, error) {
	p := dir + "/" + name
	dirFD, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, errnoErr(err))
	}
	fd, err := unix.Openat(dirFD, name, unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK, 0o660)
	unix.Close(dirFD)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, errnoErr(err))
	}
	l := &RepoLock{f: os.NewFile(uintptr(fd), p), path: p, exclusive: exclusive}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		l.f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		l.f.Close()
		return nil, fmt.Errorf("lock %s: not a regular file (mode %o): %w", p, st.Mode, ErrCorrupt)
	}

	err = lockwait.Poll(ctx, lockPollMax, l.try)
	switch {
	case err == nil:
		return l, nil
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		holders := lockHolders(fd, st.Dev, st.Ino, exclusive)
		l.f.Close()
		kind := "shared"
		if exclusive {
			kind = "exclusive"
		}
		return nil, fmt.Errorf("lock %s (%s): %w: %w%s", p, kind, ErrLockTimeout, ctx.Err(), holders)
	}
	l.f.Close()
	return nil, fmt.Errorf("lock %s: %w", p, err)
}

// try makes one non-blocking attempt; false without error means the lock is
// held incompatibly by someone else.
func (l *RepoLock) try() (bool, error) {
	fd := int(l.f.Fd())
	if !l.flock {
		lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 0, Len: 0}
		if l.exclusive {
			lk.Type = unix.F_WRLCK
		}
		for {
			err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
			switch {
			case err == nil:
				return true, nil
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN || err == unix.EACCES:
				return false, nil
			case err == unix.EINVAL:
				// No OFD locks: libostree falls back to flock, so must we.
				l.flock = true
			default:
				return false, err
			}
			break
		}
	}
	how := unix.LOCK_SH
	if l.exclusive {
		how = unix.LOCK_EX
	}
	return lockwait.TryFlock(fd, how)
}

// Unlock releases the lock and closes the file. A second call is a no-op.
func (l *RepoLock) Unlock() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	fd := l.f.Fd()
	var err error
	if l.flock {
		err = unix.Flock(int(fd), unix.LOCK_UN)
	} else {
		lk := unix.Flock_t{Type: unix.F_UNLCK}
		err = unix.FcntlFlock(fd, unix.F_OFD_SETLK, &lk)
	}
	// Closing the last descriptor of the description releases the lock
	// even if the explicit unlock failed.
	cerr := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.path, err)
	}
	if cerr != nil {
		return fmt.Errorf("unlock %s: %w", l.path, cerr)
	}
	return nil
}

// lockHolders describes who holds a lock conflicting with the one we want,
// for the timeout error: F_OFD_GETLK tells the conflicting type (its l_pid
// is -1 for OFD locks, and /proc/locks shows -1 too), so the holders are
// found by scanning /proc/*/fd for descriptors of the same inode whose
// fdinfo lists a lock. Best effort and bounded; "" if nothing is found.
func lockHolders(fd int, dev, ino uint64, exclusive bool) string {
	lk := unix.Flock_t{Type: unix.F_RDLCK}
	if exclusive {
		lk.Type = unix.F_WRLCK
	}
	held := ""
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err == nil {
		switch lk.Type {
		case unix.F_RDLCK:
			held = "shared"
		case unix.F_WRLCK:
			held = "exclusive"
		}
	}
	pids := findLockHolders(dev, ino, os.Getpid(), 2*time.Second)
	var b strings.Builder
	if held != "" {
		fmt.Fprintf(&b, "; held %s", held)
	}
	if len(pids) > 0 {
		if held == "" {
			b.WriteString("; held")
		}
		b.WriteString(" by")
		for _, p := range pids {
			fmt.Fprintf(&b, " pid %d", p)
			if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); err == nil {
				fmt.Fprintf(&b, " (%s)", strings.TrimSpace(string(comm)))
			}
		}
	}
	return b.String()
}

// findLockHolders returns the PIDs (other than self) with a descriptor of
// the inode dev/ino that holds a lock, giving up after budget.
func findLockHolders(dev, ino uint64, self int, budget time.Duration) []int {
	deadline := time.Now().Add(budget)
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	inoField := ":" + strconv.FormatUint(ino, 10) + " "
	var pids []int
	for _, pe := range procs {
		pid, err := strconv.Atoi(pe.Name())
		if err != nil || pid == self {
			continue
		}
		if time.Now().After(deadline) {
			break
		}
		fdDir := fmt.Sprintf("/proc/%d/fd", pid)
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fe := range fds {
			var st unix.Stat_t
			if unix.Stat(fdDir+"/"+fe.Name(), &st) != nil || st.Dev != dev || st.Ino != ino {
				continue
			}
			if fdinfoHasLock(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fe.Name()), inoField) {
				pids = append(pids, pid)
				break
			}
		}
	}
	sort.Ints(pids)
	return pids
}

// fdinfoHasLock reports whether an fdinfo file lists a lock ("lock:\t1:
// OFDLCK ADVISORY READ -1 fe:00:INO 0 EOF") on the inode.
func fdinfoHasLock(path, inoField string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "lock:") && strings.Contains(line, inoField) {
			return true
		}
	}
	return false
}
