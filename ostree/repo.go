package ostree

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// RepoMode is the repository storage mode ([core] mode in the config).
type RepoMode int

const (
	ModeBare            RepoMode = iota // "bare": content objects are real files with real owners and xattrs
	ModeBareUser                        // "bare-user": regular files; uid/gid/mode/xattrs in the user.ostreemeta xattr
	ModeBareUserOnly                    // "bare-user-only": real files, canonical uid/gid 0, no xattrs
	ModeBareSplitXattrs                 // "bare-split-xattrs": like bare, xattrs in .file-xattrs objects
	ModeArchive                         // "archive-z2" / "archive": .filez objects, header + raw deflate
)

// String is ostree_repo_mode_to_string (archive is "archive-z2").
func (m RepoMode) String() string {
	switch m {
	case ModeBare:
		return "bare"
	case ModeBareUser:
		return "bare-user"
	case ModeBareUserOnly:
		return "bare-user-only"
	case ModeBareSplitXattrs:
		return "bare-split-xattrs"
	case ModeArchive:
		return "archive-z2"
	}
	return fmt.Sprintf("repomode(%d)", int(m))
}

// IsBare reports whether content objects are stored uncompressed (.file).
func (m RepoMode) IsBare() bool { return m != ModeArchive }

// Repo is an ostree repository opened read-only. It holds no file
// descriptors: the zero value plus Path and Mode is usable, and there is
// nothing to close.
type Repo struct {
	Path             string
	Mode             RepoMode
	TombstoneCommits bool // [core] tombstone-commits
	// Locking is [core] locking (default true). When false libostree takes
	// no repository lock, so holding ours excludes no ostree writer.
	Locking bool
	// CollectionID is [core] collection-id ("" when unset).
	CollectionID string
}

// OpenRepo reads path/config ([core] repo_version, mode, tombstone-commits,
// locking, collection-id) with ostree's rules and checks that path/objects is
// a directory (not a symlink). path itself may go through symlinks (as
// /ostree does on a booted host); nothing below it is followed.
func OpenRepo(path string) (*Repo, error) {
	cfgPath := filepath.Join(path, "config")
	data, err := readFileNoFollow(cfgPath, maxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("open repo %s: %w", path, err)
	}
	cfg, err := ParseRepoConfig(data)
	if err != nil {
		return nil, fmt.Errorf("repo config %s: %w", cfgPath, err)
	}
	objDir := filepath.Join(path, "objects")
	var st unix.Stat_t
	if err := unix.Lstat(objDir, &st); err != nil {
		return nil, fmt.Errorf("open repo %s: objects: %w", path, errnoErr(err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, fmt.Errorf("open repo %s: %s is not a directory (mode %o): %w", path, objDir, st.Mode, ErrCorrupt)
	}
	return &Repo{
		Path:             path,
		Mode:             cfg.Mode,
		TombstoneCommits: cfg.TombstoneCommits,
		Locking:          cfg.Locking,
		CollectionID:     cfg.CollectionID,
	}, nil
}

// Suffix is the loose-object file suffix ostree uses for o's type in this
// repository's mode: "filez" for content in archive repos, otherwise the
// type name ("file", "dirtree", "commit", ...). It matches `plan --list`.
func (r *Repo) Suffix(t ObjectType) string {
	if t == ObjFile && r.Mode == ModeArchive {
		return "filez"
	}
	return t.String()
}

// ObjectRelPath is o's path relative to the objects directory, "XX/REST.suffix"
// (_ostree_loose_path).
func (r *Repo) ObjectRelPath(o ObjectName) string {
	h := o.Checksum.String()
	return h[:2] + "/" + h[2:] + "." + r.Suffix(o.Type)
}

// ObjectPath is the loose object's path: Path/objects/XX/REST.suffix.
func (r *Repo) ObjectPath(o ObjectName) string {
	return r.Path + "/objects/" + r.ObjectRelPath(o)
}

// openObject opens o read-only without following any symlink below the
// repository directory. For bare-mode symlink content objects use lstat-
// based helpers instead (this fails with ELOOP on them).
func (r *Repo) openObject(o ObjectName) (*os.File, error) {
	rel := "objects/" + r.ObjectRelPath(o)
	fd, err := openBeneath(r.Path, rel, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("object %s: %s: %w", o, r.ObjectPath(o), errnoErr(err))
	}
	return os.NewFile(uintptr(fd), r.ObjectPath(o)), nil
}

// ReadMeta reads a whole metadata object (dirtree, dirmeta, commit,
// commitmeta, tombstone-commit). Objects larger than ostree's
// MaxMetadataSize (the decoders' cap, newer ostree's OSTREE_MAX_METADATA_SIZE)
// or not regular files are corrupt.
// A missing object wraps ErrNotFound; errors name the path.
func (r *Repo) ReadMeta(o ObjectName) ([]byte, error) {
	if !o.Type.IsMeta() {
		return nil, fmt.Errorf("object %s: ReadMeta of a non-metadata type", o)
	}
	f, err := r.openObject(o)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readCapped(f, MaxMetadataSize)
}

// LoadCommit reads and decodes the commit object c.
func (r *Repo) LoadCommit(c Checksum) (*Commit, error) {
	o := ObjectName{Checksum: c, Type: ObjCommit}
	b, err := r.ReadMeta(o)
	if err != nil {
		return nil, err
	}
	cm, err := DecodeCommit(b)
	if err != nil {
		return nil, fmt.Errorf("object %s (%s): %w", o, r.ObjectPath(o), err)
	}
	return cm, nil
}

// readCapped reads f whole after checking it is a regular file of at most
// limit bytes.
func readCapped(f *os.File, limit int64) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%v): %w", f.Name(), fi.Mode().Type(), ErrCorrupt)
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes exceeds the limit of %d: %w", f.Name(), fi.Size(), limit, ErrCorrupt)
	}
	// Read one byte more than the limit so that a file that grew after the
	// stat is still caught.
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: more than %d bytes: %w", f.Name(), limit, ErrCorrupt)
	}
	return b, nil
}

// readFileNoFollow reads path (whose last component must not be a symlink)
// up to limit bytes.
func readFileNoFollow(path string, limit int64) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, errnoErr(err))
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	return readCapped(f, limit)
}

// openBeneath opens rel (a relative, slash-separated path) below the
// directory base (which itself may be reached through symlinks) without
// following any symlink in rel: a symlink anywhere in rel fails with ELOOP.
// flags get O_CLOEXEC|O_NOFOLLOW|O_NOCTTY added.
func openBeneath(base, rel string, flags int) (int, error) {
	dfd, err := unix.Open(base, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(dfd)
	return openatBeneath(dfd, rel, flags)
}

// openatBeneath is openBeneath relative to an open directory.
func openatBeneath(dfd int, rel string, flags int) (int, error) {
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NOCTTY
	fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{
		Flags:   uint64(flags),
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		return fd, err
	}
	// openat2 unavailable (kernel < 5.6 or filtered by seccomp): walk the
	// components one by one, each with O_NOFOLLOW.
	parts := strings.Split(rel, "/")
	cur := dfd
	for i, p := range parts {
		if p == "" || p == "." || p == ".." {
			if cur != dfd {
				unix.Close(cur)
			}
			return -1, unix.EXDEV
		}
		var next int
		if i == len(parts)-1 {
			next, err = unix.Openat(cur, p, flags, 0)
		} else {
			next, err = unix.Openat(cur, p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if cur != dfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}

// errnoErr adds this package's sentinels to errors from system calls:
// ENOENT wraps ErrNotFound; ELOOP (a symlink where none may be) and
// ENOTDIR wrap ErrCorrupt.
func errnoErr(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", err, ErrNotFound)
	case errors.Is(err, unix.ELOOP):
		return fmt.Errorf("%w (unexpected symlink): %w", err, ErrCorrupt)
	case errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%w: %w", err, ErrCorrupt)
	}
	return err
}
