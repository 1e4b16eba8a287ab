package ostree

import (
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// RefKind says where under refs/ a ref lives.
type RefKind int

const (
	RefHead   RefKind = iota // refs/heads/NAME
	RefRemote                // refs/remotes/REMOTE/NAME
	RefMirror                // refs/mirrors/COLLECTION/NAME
)

func (k RefKind) String() string {
	switch k {
	case RefHead:
		return "head"
	case RefRemote:
		return "remote"
	case RefMirror:
		return "mirror"
	}
	return fmt.Sprintf("refkind(%d)", int(k))
}

// Ref is one ref of the repository.
type Ref struct {
	// Name is the ref as `ostree refs` prints it: "name" for refs/heads,
	// "remote:name" for refs/remotes; for refs/mirrors (which `ostree refs`
	// does not print) the name within its collection.
	Name string
	// Collection is the collection ID as `ostree refs --collections` pairs
	// it: the directory name for mirrors, the repository's core.collection-id
	// for heads, "" for remotes (their collection IDs live in remote
	// configs, which we do not read).
	Collection string
	Checksum   Checksum
	Kind       RefKind
	Remote     string // the remote, for RefRemote
	// AliasOf is set when the ref is a symlink alias (`ostree refs
	// --alias`): the ref name it points to, within the same directory tree.
	// Checksum is then the target's.
	AliasOf string
}

// Refs lists every ref as libostree does for `ostree refs` plus the mirror
// refs of `ostree refs --collections` (ostree-repo-refs.c
// enumerate_refs_recurse): refs/heads and refs/remotes must exist,
// refs/mirrors may not; directory entries whose names are not valid ref
// fragments are ignored, as are entries that are neither regular files,
// directories nor symlinks, and entries of refs/remotes and refs/mirrors that
// are not directories. Each ref file is resolved as ostree resolves it
// (ParseRef); content that is not a checksum is an error, since ostree's
// prune would fail on it too. Symlink aliases are followed only within
// their refs/heads (or remote, or collection) tree; nothing else is
// followed. The result is sorted by Kind, then Remote/Collection, then Name.
func (r *Repo) Refs() ([]Ref, error) {
	repoFD, err := unix.Open(r.Path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("list refs: %s: %w", r.Path, errnoErr(err))
	}
	defer unix.Close(repoFD)

	var refs []Ref
	headsFD, err := openatBeneath(repoFD, "refs/heads", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, fmt.Errorf("list refs: %s/refs/heads: %w", r.Path, errnoErr(err))
	}
	err = r.walkRefs(headsFD, r.Path+"/refs/heads", headsFD, "", func(name string, c Checksum, alias string) {
		refs = append(refs, Ref{Name: name, Collection: r.CollectionID, Checksum: c, Kind: RefHead, AliasOf: alias})
	})
	unix.Close(headsFD)
	if err != nil {
		return nil, fmt.Errorf("list refs: %w", err)
	}

	for _, sub := range []struct {
		dir      string
		kind     RefKind
		optional bool
	}{{"refs/remotes", RefRemote, false}, {"refs/mirrors", RefMirror, true}} {
		subFD, err := openatBeneath(repoFD, sub.dir, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			if sub.optional && errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("list refs: %s/%s: %w", r.Path, sub.dir, errnoErr(err))
		}
		subPath := r.Path + "/" + sub.dir
		var groups []string
		err = readDirents(subFD, make([]byte, 8<<10), func(name []byte, typ uint8) error {
			if typ == unix.DT_UNKNOWN {
				var st unix.Stat_t
				if err := unix.Fstatat(subFD, string(name), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					return fmt.Errorf("%s/%s: %w", subPath, name, errnoErr(err))
				}
				typ = dtype(st.Mode)
			}
			if typ == unix.DT_DIR {
				groups = append(groups, string(name))
			}
			return nil
		})
		if err != nil {
			unix.Close(subFD)
			return nil, fmt.Errorf("list refs: %s: %w", subPath, err)
		}
		for _, g := range groups {
			gFD, err := unix.Openat(subFD, g, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				unix.Close(subFD)
				return nil, fmt.Errorf("list refs: %s/%s: %w", subPath, g, errnoErr(err))
			}
			g := g
			kind := sub.kind
			err = r.walkRefs(gFD, subPath+"/"+g, gFD, "", func(name string, c Checksum, alias string) {
				if kind == RefRemote {
					refs = append(refs, Ref{Name: g + ":" + name, Checksum: c, Kind: RefRemote, Remote: g, AliasOf: alias})
				} else {
					refs = append(refs, Ref{Name: name, Collection: g, Checksum: c, Kind: RefMirror, AliasOf: alias})
				}
			})
			unix.Close(gFD)
			if err != nil {
				unix.Close(subFD)
				return nil, fmt.Errorf("list refs: %w", err)
			}
		}
		unix.Close(subFD)
	}

	sort.Slice(refs, func(i, j int) bool {
		a, b := refs[i], refs[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Remote+a.Collection != b.Remote+b.Collection {
			return a.Remote+a.Collection < b.Remote+b.Collection
		}
		return a.Name < b.Name
	})
	return refs, nil
}

// walkRefs enumerates the ref directory dirFD, which is rel ("" or
// "a/b/") below the base directory baseFD (shown as basePath in errors).
func (r *Repo) walkRefs(baseFD int, basePath string, dirFD int, rel string, emit func(name string, c Checksum, alias string)) error {
	type entry struct {
		name string
		typ  uint8
	}
	var entries []entry
	err := readDirents(dirFD, make([]byte, 8<<10), func(name []byte, typ uint8) error {
		// Like ostree (issue 1285), ignore names that are not ref
		// fragments, e.g. .rsync_info files.
		if !ValidRefFragment(string(name)) {
			return nil
		}
		if typ == unix.DT_UNKNOWN {
			var st unix.Stat_t
			if err := unix.Fstatat(dirFD, string(name), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("%s/%s%s: %w", basePath, rel, name, errnoErr(err))
			}
			typ = dtype(st.Mode)
		}
		entries = append(entries, entry{string(name), typ})
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s/%s: %w", basePath, rel, err)
	}
	for _, e := range entries {
		p := basePath + "/" + rel + e.name
		switch e.typ {
		case unix.DT_DIR:
			fd, err := unix.Openat(dirFD, e.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("%s: %w", p, errnoErr(err))
			}
			err = r.walkRefs(baseFD, basePath, fd, rel+e.name+"/", emit)
			unix.Close(fd)
			if err != nil {
				return err
			}
		case unix.DT_REG:
			c, err := readRefAt(dirFD, e.name, p)
			if err != nil {
				return err
			}
			emit(rel+e.name, c, "")
		case unix.DT_LNK:
			c, target, err := resolveAlias(baseFD, basePath, rel+e.name)
			if err != nil {
				return err
			}
			emit(rel+e.name, c, target)
		}
	}
	return nil
}

// readRefAt reads and parses the ref file name in dirFD (p names it in
// errors).
func readRefAt(dirFD int, name, p string) (Checksum, error) {
	fd, err := unix.Openat(dirFD, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return Checksum{}, fmt.Errorf("ref %s: %w", p, errnoErr(err))
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	b, err := readCapped(f, maxRefSize)
	if err != nil {
		return Checksum{}, fmt.Errorf("ref %s: %w", p, err)
	}
	c, err := ParseRef(b)
	if err != nil {
		return Checksum{}, fmt.Errorf("ref %s: %w", p, err)
	}
	return c, nil
}

// maxAliasHops bounds alias chains, like the kernel's symlink limit.
const maxAliasHops = 40

// resolveAlias follows the symlink alias rel (relative to baseFD) to a ref
// file, never leaving the base directory and never following a symlink in a
// directory position; it returns the checksum and the first hop's target
// name (as `ostree refs --alias` prints it, "../" prefixes removed).
func resolveAlias(baseFD int, basePath, rel string) (Checksum, string, error) {
	p0 := basePath + "/" + rel
	first := ""
	cur := rel
	for hop := 0; hop < maxAliasHops; hop++ {
		dir, leaf := path.Split(cur)
		dfd := baseFD
		if dir != "" {
			var err error
			dfd, err = openatBeneath(baseFD, strings.TrimSuffix(dir, "/"), unix.O_RDONLY|unix.O_DIRECTORY)
			if err != nil {
				return Checksum{}, "", fmt.Errorf("ref alias %s: %s%s: %w", p0, basePath+"/", dir, errnoErr(err))
			}
		}
		closeDir := func() {
			if dfd != baseFD {
				unix.Close(dfd)
			}
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, leaf, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			closeDir()
			return Checksum{}, "", fmt.Errorf("ref alias %s: target %s/%s: %w", p0, basePath, cur, errnoErr(err))
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			c, err := readRefAt(dfd, leaf, basePath+"/"+cur)
			closeDir()
			if err != nil {
				return Checksum{}, "", fmt.Errorf("ref alias %s: %w", p0, err)
			}
			return c, first, nil
		case unix.S_IFLNK:
			buf := make([]byte, unix.PathMax)
			n, err := unix.Readlinkat(dfd, leaf, buf)
			closeDir()
			if err != nil {
				return Checksum{}, "", fmt.Errorf("ref alias %s: readlink %s/%s: %w", p0, basePath, cur, errnoErr(err))
			}
			target := string(buf[:n])
			if hop == 0 {
				first = target
				for strings.HasPrefix(first, "../") {
					first = first[3:]
				}
			}
			if target == "" || strings.HasPrefix(target, "/") {
				return Checksum{}, "", fmt.Errorf("ref alias %s: target %q is not a relative path: %w", p0, target, ErrCorrupt)
			}
			next := path.Join(dir, target)
			if next == "." || next == ".." || strings.HasPrefix(next, "../") {
				return Checksum{}, "", fmt.Errorf("ref alias %s: target %q leaves %s: %w", p0, target, basePath, ErrCorrupt)
			}
			cur = next
		default:
			closeDir()
			return Checksum{}, "", fmt.Errorf("ref alias %s: target %s/%s is not a ref file (mode %o): %w", p0, basePath, cur, st.Mode, ErrCorrupt)
		}
	}
	return Checksum{}, "", fmt.Errorf("ref alias %s: more than %d levels of aliases: %w", p0, maxAliasHops, ErrCorrupt)
}

// ValidRefFragment is ostree's _ostree_validate_ref_fragment, the GRegex
// "^[\w\d][-._\w\d]*$" as GLib 2.74 compiles it (UTF-8 with Unicode
// properties: \w is a letter, a number or '_'); like PCRE's "$" it accepts
// one trailing newline. Invalid UTF-8 does not match.
func ValidRefFragment(s string) bool {
	s = strings.TrimSuffix(s, "\n")
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for i, r := range s {
		word := unicode.IsLetter(r) || unicode.IsNumber(r) || r == '_'
		if !word && (i == 0 || (r != '-' && r != '.')) {
			return false
		}
	}
	return true
}
