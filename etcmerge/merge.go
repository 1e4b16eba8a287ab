package etcmerge

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Report says what a full merge did.
type Report struct {
	Modified, Removed, Added int
	// Message is ostree's journal line ("Copying /etc changes: ...").
	Message string
	// Ignored are the fifos, sockets and devices that ostree logs as
	// "Ignoring non-regular/non-symlink file found during /etc merge".
	// ostree unlinks whatever the new etc had at such a path before
	// ignoring it, and so do we.
	Ignored []string
}

// Merge is ostree's merge_configuration_from: the changes from orig (the
// booted usr/etc) to modified (the booted etc) are applied to newEtc (the
// staged deployment's etc): removed paths are removed recursively, then
// modified and then added paths are copied from modified (directories
// recursively; every parent of a copied path gets the modified parent's
// xattrs, owner and mode, missing parents are created). The result is the
// etc that ostree 2022.7's finalize-staged produces, entry by entry
// (type, mode, uid, gid, xattrs, content, symlink target, mtime of regular
// files).
//
// Differences from ostree, all on the side of doing less: before the first
// write, the whole outcome is planned against newEtc, so ostree's fatal
// conditions (ErrNewDefaultDir, ErrNotCopyable, a non-directory parent)
// return an error with newEtc untouched where ostree would fail half-way;
// and a symlink among the parents of a path in newEtc is ErrUnsafe where
// ostree would follow it.
//
// Every tree is opened once and read or written only through its fd (see
// tree); a regular file that a user could have planted as a link to a
// privileged file is left to ostree (see copyEntry). Merge issues no
// fsync and no syncfs: see SyncEtc.
func Merge(ctx context.Context, fs FS, orig, modified, newEtc string) (Report, error) {
	var rep Report
	o, err := openTree(orig)
	if err != nil {
		return rep, err
	}
	defer o.Close()
	mo, err := openTree(modified)
	if err != nil {
		return rep, err
	}
	defer mo.Close()
	mo.users = true
	ch := &Changes{}
	if err := diffDir(ctx, o, mo, "", ch); err != nil {
		return rep, fmt.Errorf("computing /etc diff: %w", err)
	}
	rep.Modified, rep.Removed, rep.Added = len(ch.Modified), len(ch.Removed), len(ch.Added)
	rep.Message = ch.Message()

	t, err := openTarget(newEtc, fs)
	if err != nil {
		return rep, err
	}
	defer t.Close()

	// Preflight: the desired state of the whole tree, computed against
	// newEtc as it is now, fails exactly where ostree's merge would.
	pl := &planner{ctx: ctx, orig: o, modified: mo, base: t.tree, skipSpecial: fs.SkipSpecialInDirs}
	if _, err := pl.plan("", false); err != nil {
		return rep, err
	}

	m := &porter{ctx: ctx, t: t, orig: o, modified: mo, rep: &rep}
	for _, p := range ch.Removed {
		if err := m.removeAll(p); err != nil {
			return rep, err
		}
	}
	for _, p := range append(append([]string(nil), ch.Modified...), ch.Added...) {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if err := m.copyModified(p); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// porter is the literal port of ostree's copy functions onto a target.
type porter struct {
	ctx      context.Context
	t        *target
	orig     *tree
	modified *tree
	rep      *Report
}

func (m *porter) removeAll(p string) error {
	d, name, err := m.t.parent(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil // glnx_shutil_rm_rf_at: ENOENT is success
	}
	if err != nil {
		return err
	}
	defer d.Close()
	if err := m.t.fs.RemoveAll(d, name); err != nil {
		return fmt.Errorf("removing %s: %w", m.t.name(p), err)
	}
	return nil
}

// copyModified is copy_modified_config_file.
func (m *porter) copyModified(p string) error {
	sm, ok, err := m.modified.stat(p)
	if err != nil {
		return fmt.Errorf("reading modified config file: %w", err)
	}
	if !ok {
		return fmt.Errorf("reading modified config file %s: %w", m.modified.name(p), os.ErrNotExist)
	}
	if dir, _ := splitRel(p); dir != "" {
		if err := m.ensureDirFromTemplate(dir); err != nil {
			return err
		}
	}
	sn, ok, err := m.t.lstat(p)
	if err != nil {
		return err
	}
	if ok && isDir(&sn) {
		if !isDir(&sm) {
			return fmt.Errorf("%s: %w, cannot merge", p, ErrNewDefaultDir)
		}
		return nil // ostree assumes the parent was copied recursively
	}
	d, name, err := m.t.parent(p)
	if err != nil {
		return err
	}
	defer d.Close()
	if ok {
		if err := m.t.fs.Remove(d, name); err != nil {
			return fmt.Errorf("removing %s: %w", m.t.name(p), err)
		}
	}
	switch sm.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return m.copyDirRecurse(d, name, p)
	case unix.S_IFREG, unix.S_IFLNK:
		return copyEntry(m.t.fs, m.modified, p, &sm, d, name, true)
	default:
		m.rep.Ignored = append(m.rep.Ignored, p)
		return nil
	}
}

// ensureDirFromTemplate is ensure_directory_from_template: create dir (and
// missing parents) in the target, and in every case copy the modified
// directory's xattrs, owner and mode onto it.
func (m *porter) ensureDirFromTemplate(dir string) error {
	src, ok, err := m.modified.stat(dir)
	if err != nil {
		return err
	}
	if !ok || !isDir(&src) {
		return fmt.Errorf("modified %s: not a directory: %w", m.modified.name(dir), os.ErrNotExist)
	}
	pd, name, err := m.t.parent(dir)
	if errors.Is(err, os.ErrNotExist) {
		up, _ := splitRel(dir)
		if up == "" {
			return err
		}
		if err := m.ensureDirFromTemplate(up); err != nil {
			return err
		}
		pd, name, err = m.t.parent(dir)
	}
	if err != nil {
		return err
	}
	defer pd.Close()
	if err := m.t.fs.Mkdir(pd, name, 0700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("creating %s: %w", m.t.name(dir), err)
	}
	return m.copyDirAttr(dir)
}

func (m *porter) copyDirAttr(dir string) error {
	a, err := dirAttr(m.modified, dir)
	if err != nil {
		return err
	}
	d, err := m.t.openDir(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := m.t.fs.SetDirAttr(d, a); err != nil {
		return fmt.Errorf("copying attributes of %s: %w", dir, err)
	}
	return nil
}

// copyDirRecurse is copy_dir_recurse from modified/p into (parent, name).
func (m *porter) copyDirRecurse(parent *os.File, name, p string) error {
	if err := m.ctx.Err(); err != nil {
		return err
	}
	if err := m.t.fs.Mkdir(parent, name, 0700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("creating %s: %w", m.t.name(p), err)
	}
	if err := m.copyDirAttr(p); err != nil {
		return err
	}
	d, err := m.t.openDir(p)
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := m.modified.readNames(p)
	if err != nil {
		return err
	}
	for _, n := range names {
		c := joinRel(p, n)
		st, ok, err := m.modified.stat(c)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s: %w", m.modified.name(c), os.ErrNotExist)
		}
		if isDir(&st) {
			if err := m.copyDirRecurse(d, n, c); err != nil {
				return err
			}
			continue
		}
		if m.t.fs.SkipSpecialInDirs && !isReg(&st) && !isLnk(&st) {
			// ostree 2024.2: "Ignoring non-regular/non-symlink file
			// found during /etc merge" (the directory is new: nothing
			// to unlink).
			m.rep.Ignored = append(m.rep.Ignored, c)
			continue
		}
		if err := copyEntry(m.t.fs, m.modified, c, &st, d, n, true); err != nil {
			return err
		}
	}
	return nil
}

// copyEntry is glnx_file_copy_at with GLNX_FILE_COPY_OVERWRITE from
// src/p to (dir, name): regular files with content, owner, xattrs, mode
// and atime/mtime; symlinks with target, xattrs and owner; anything else
// is ErrNotCopyable. st is the caller's earlier stat of src/p, which
// decided that p is copied as a file: everything copied comes from the
// entry opened here and its fstat (a type that changed since is
// ErrUnsafe), so content, mode, owner and xattrs all belong to one inode.
//
// keepTimes false leaves the times to the kernel (now): for entries taken
// from the new defaults, whose usr/etc copy has the repository's mtime
// (0) while ostree's checkout of etc has the time of the checkout.
func copyEntry(fs FS, src *tree, p string, st *unix.Stat_t, dir *os.File, name string, keepTimes bool) error {
	if err := src.checkLen(p); err != nil {
		return err
	}
	pd, srcName, err := src.parent(p)
	if err != nil {
		return err
	}
	defer pd.Close()
	var dst unix.Stat_t
	if err := unix.Fstat(int(pd.Fd()), &dst); err != nil {
		return &os.PathError{Op: "fstat", Path: pd.Name(), Err: err}
	}
	fd, err := unix.Openat(int(pd.Fd()), srcName, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		return fmt.Errorf("copying %s: vanished during the merge: %w", src.name(p), ErrUnsafe)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: src.name(p), Err: err}
	}
	e := &entry{f: os.NewFile(uintptr(fd), src.name(p))}
	defer e.Close()
	if err := unix.Fstat(fd, &e.st); err != nil {
		return &os.PathError{Op: "fstat", Path: src.name(p), Err: err}
	}
	if e.st.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT {
		return fmt.Errorf("copying %s: its type changed during the merge: %w", src.name(p), ErrUnsafe)
	}
	xs, err := e.xattrs()
	if err != nil {
		return err
	}
	switch e.st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if why := plantedPrivilege(&e.st, &dst, xs); src.users && why != "" {
			return fmt.Errorf("copying %s: %s: %w", src.name(p), why, ErrPlanted)
		}
		f, err := e.reader()
		if err != nil {
			return err
		}
		defer f.Close()
		a := Attr{Mode: e.st.Mode & 07777, UID: e.st.Uid, GID: e.st.Gid, Xattrs: xs,
			Atime: e.st.Atim, Mtime: e.st.Mtim, SetTimes: keepTimes}
		if err := fs.WriteFileAtomic(dir, name, f, a); err != nil {
			return fmt.Errorf("copying %s: %w", p, err)
		}
		return nil
	case unix.S_IFLNK:
		target, err := e.readlink()
		if err != nil {
			return err
		}
		if err := fs.SymlinkAtomic(dir, name, target, Attr{UID: e.st.Uid, GID: e.st.Gid, Xattrs: xs}); err != nil {
			return fmt.Errorf("copying %s: %w", p, err)
		}
		return nil
	}
	return fmt.Errorf("copying %s: %w", src.name(p), ErrNotCopyable)
}

// plantedPrivilege says why a regular file carrying privilege (setuid or
// setgid bits, or a security.capability xattr) may have been planted by
// someone who does not own it: it has other hard links (a user may link
// any file into a directory it can write, and with
// fs.protected_hardlinks=0 a setuid-root binary too), or it is owned by
// someone else than its directory's owner in a directory not owned by
// root (a file that user linked, whose other name was later removed).
//
// ostree's merge (copy_modified_config_file -> glnx_file_copy_at) copies
// such a file as it is, setuid bits, owner and capability included, at
// shutdown, when the planting user's processes are gone. We run for days
// beside them, so we neither copy it (which would place a privileged
// copy under /sysroot, possibly an old binary kept alive past its update,
// or the winner of a race) nor strip its bits (which would differ from
// ostree's result if it is still there at shutdown): the merge stops with
// ErrPlanted, the callers fall back, and ostree's own merge at shutdown
// produces exactly what ostree would. Files without privilege, linked or
// not, are copied as ostree copies them: nothing is gained by a copy
// that the reader could not already read or run at the same mode.
func plantedPrivilege(st, dir *unix.Stat_t, xs []Xattr) string {
	priv := st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0
	for _, x := range xs {
		priv = priv || x.Name == "security.capability"
	}
	switch {
	case !priv:
		return ""
	case st.Nlink > 1:
		return fmt.Sprintf("a setuid/setgid/capability file with %d hard links", st.Nlink)
	case st.Uid != dir.Uid && dir.Uid != 0:
		return fmt.Sprintf("a setuid/setgid/capability file owned by uid %d in a directory of uid %d", st.Uid, dir.Uid)
	}
	return ""
}

func dirAttr(t *tree, p string) (Attr, error) {
	e, ok, err := t.open(p)
	if err != nil {
		return Attr{}, err
	}
	if !ok {
		return Attr{}, fmt.Errorf("%s: not a directory: %w", t.name(p), os.ErrNotExist)
	}
	defer e.Close()
	if !isDir(&e.st) {
		return Attr{}, fmt.Errorf("%s: not a directory: %w", t.name(p), os.ErrNotExist)
	}
	xs, err := e.xattrs()
	if err != nil {
		return Attr{}, err
	}
	return Attr{Mode: e.st.Mode & 07777, UID: e.st.Uid, GID: e.st.Gid, Xattrs: xs}, nil
}

func isDir(st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFDIR }
func isReg(st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFREG }
func isLnk(st *unix.Stat_t) bool { return st.Mode&unix.S_IFMT == unix.S_IFLNK }
