package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Entry is what a Manifest records about one path.
type Entry struct {
	// Type is "file", "dir", "symlink" or "other".
	Type string
	// Mode is the permission bits plus setuid/setgid/sticky.
	Mode     fs.FileMode
	UID, GID uint32
	// Size and SHA256 are for regular files; Target for symlinks.
	Size   int64
	SHA256 string
	Target string
	// Flags are the immutable/append-only inode flags (files and dirs).
	Flags uint32
	// Xattrs ("k=v" sorted, hex values) when ManifestOptions.Xattrs.
	Xattrs string
	// MTime in nanoseconds when ManifestOptions.MTime.
	MTime int64
	// LinkTo is, when ManifestOptions.Hardlinks, the first path in walk
	// (lexical) order that shares this inode; "" for the first one.
	LinkTo string
}

// ManifestOptions choose what TreeManifest compares beyond type, mode,
// owner, content and link target.
type ManifestOptions struct {
	MTime, Xattrs, Hardlinks bool
	// Skip leaves out rel (slash path relative to the root) and, for a
	// directory, everything below it.
	Skip func(rel string) bool
}

// Manifest maps slash paths relative to a root ("." is the root) to entries.
type Manifest map[string]Entry

// TreeManifest describes every path under root, for comparing two trees
// (a sysroot and its copy, ostree's merged etc and ours).
func TreeManifest(root string, o ManifestOptions) (Manifest, error) {
	m := Manifest{}
	inodes := map[[2]uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if o.Skip != nil && rel != "." && o.Skip(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := Entry{Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), UID: st.Uid, GID: st.Gid}
		switch {
		case fi.Mode().IsRegular():
			e.Type, e.Size = "file", fi.Size()
			if e.SHA256, err = fileSHA256(p); err != nil {
				return err
			}
		case fi.IsDir():
			e.Type = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			e.Type = "symlink"
			if e.Target, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			e.Type = "other"
		}
		if e.Type == "file" || e.Type == "dir" {
			fl, err := getFlags(p)
			if err != nil {
				return err
			}
			e.Flags = fl & (FlagImmutable | FlagAppend)
		}
		if o.MTime {
			e.MTime = st.Mtim.Nano()
		}
		if o.Xattrs {
			if e.Xattrs, err = xattrString(p); err != nil {
				return err
			}
		}
		if o.Hardlinks && e.Type != "dir" && st.Nlink > 1 {
			k := [2]uint64{st.Dev, st.Ino}
			if first, ok := inodes[k]; ok {
				e.LinkTo = first
			} else {
				inodes[k] = rel
			}
		}
		m[rel] = e
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", root, err)
	}
	return m, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func xattrString(p string) (string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil || sz == 0 {
		if err == unix.ENOTSUP {
			err = nil
		}
		return "", err
	}
	buf := make([]byte, sz)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return "", fmt.Errorf("listxattr %s: %w", p, err)
	}
	var kv []string
	for _, k := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, k, v)
		if err != nil {
			return "", fmt.Errorf("getxattr %s %s: %w", p, k, err)
		}
		kv = append(kv, k+"="+hex.EncodeToString(v[:vn]))
	}
	sort.Strings(kv)
	return strings.Join(kv, ";"), nil
}

// Diff lists the differences from m to o, one line per path, sorted;
// nil when they are equal.
func (m Manifest) Diff(o Manifest) []string {
	var out []string
	for p, a := range m {
		b, ok := o[p]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("only in first: %s (%s)", p, a.Type))
		case a != b:
			out = append(out, fmt.Sprintf("differs: %s: %+v != %+v", p, a, b))
		}
	}
	for p, b := range o {
		if _, ok := m[p]; !ok {
			out = append(out, fmt.Sprintf("only in second: %s (%s)", p, b.Type))
		}
	}
	sort.Strings(out)
	return out
}
