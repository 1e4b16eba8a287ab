package lifecycle

// A read-only sysroot. Fedora CoreOS and other hosts with
// sysroot.readonly=true mount /sysroot read-only (a per-mount flag on a
// bind mount of a read-write filesystem); ostree writes there anyway by
// making a private mount namespace and remounting /sysroot read-write in it
// (ot-main.c maybe_setup_mount_namespace, ostree-sysroot.c
// _ostree_sysroot_ensure_writable), so that nobody else ever sees a
// writable /sysroot. `finalize --post` and `cleanup` do the same.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrReadOnly: the sysroot is read-only and could not be made writable for
// this process.
var ErrReadOnly = errors.New("sysroot is read-only")

// withWritableSysroot runs fn with <sysroot>/ostree writable. When it is
// writable already, fn runs as it is. When it is on a read-only mount, fn
// runs on a goroutine locked to an OS thread that has left the process's
// mount namespace (unshare(CLONE_NEWNS) applies to the calling thread
// only) and remounted that mount read-write in its private copy: paths fn
// opens on that goroutine resolve through the writable copy, and the
// descriptors it gets stay writable whichever thread uses them later. The
// thread is never unlocked, so the Go runtime ends it when fn returns and
// no other goroutine ever runs in its namespace. Goroutines fn starts run
// in the original namespace: they may read, and a write by path from them
// fails with EROFS (nothing half-done: every write here is whole or not at
// all).
//
// When the remount is impossible (no CAP_SYS_ADMIN, a filesystem that is
// itself read-only) nothing runs and the error, one line, wraps
// ErrReadOnly.
func withWritableSysroot(sysroot string, fn func() error) error {
	dir := filepath.Join(sysroot, "ostree")
	ro, err := readOnly(dir)
	if err != nil || !ro {
		// A missing or unreadable sysroot is for fn to report, in its
		// own words.
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked (see above).
		if err := remountWritable(dir); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// readOnly reports whether path is on a read-only mount.
func readOnly(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return st.Flags&unix.ST_RDONLY != 0, nil
}

// remountWritable moves the calling (locked) thread into a private mount
// namespace and remounts the mount holding dir read-write there.
func remountWritable(dir string) error {
	fail := func(what string, err error) error {
		return fmt.Errorf("%w: %s: %s: %w", ErrReadOnly, dir, what, err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fail("resolving", err)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fail("private mount namespace for a read-write remount: unshare", err)
	}
	// From here on only this thread's copy of the mounts changes. Make the
	// copies private first: a remount of per-mount flags does not
	// propagate, and nothing else we do should either. A root that is not
	// a mount point (a plain chroot) cannot change propagation; that only
	// loses this extra care, so the error is ignored.
	_ = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
	mp, err := mountPointOf(real)
	if err != nil {
		return fail("finding its mount point", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(real, &st); err != nil {
		return fail("statfs", err)
	}
	// A bind remount changes the mount's own flags only (never the
	// filesystem's, which other mounts share); keep its other flags, as
	// the kernel refuses to drop locked ones.
	keep := uintptr(st.Flags) & (unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOEXEC | unix.ST_NOATIME | unix.ST_NODIRATIME | unix.ST_RELATIME)
	if err := unix.Mount("", mp, "", unix.MS_REMOUNT|unix.MS_BIND|keep, ""); err != nil {
		return fail("remounting "+mp+" read-write", err)
	}
	if ro, err := readOnly(real); err != nil || ro {
		if err == nil {
			err = errors.New("the filesystem itself is read-only")
		}
		return fail("after remounting "+mp+" read-write", err)
	}
	return nil
}

// mountPointOf is the deepest mount point at or above path (an absolute
// path without symlinks), as this thread's mountinfo lists them.
func mountPointOf(path string) (string, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	best := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if (path == mp || mp == "/" || strings.HasPrefix(path, mp+"/")) && len(mp) >= len(best) {
			best = mp
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if best == "" {
		return "", fmt.Errorf("no mount holds %s", path)
	}
	return best, nil
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134) in a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
