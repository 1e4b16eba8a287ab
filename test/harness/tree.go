package harness

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// File is one entry of a Tree: a regular file (the default), a directory
// (Dir) or a symbolic link (Symlink != "").
//
// The zero Mode means 0644 for files and 0755 for directories; Mode holds the
// permission bits plus os.ModeSetuid/os.ModeSetgid/os.ModeSticky when wanted.
// UID and GID are applied with lchown when the tree is written (root only
// for non-zero ids).
type File struct {
	Data    []byte
	Mode    os.FileMode
	Symlink string
	Dir     bool
	UID     int
	GID     int
	// Xattrs are set on the written file; ostree commits them into a bare
	// repository and checks them out again (the /etc merge ignores them).
	Xattrs map[string]string

	// gen != 0 marks generated content: Data is produced on demand from
	// (gen, size) so that big trees cost no memory until written.
	gen  uint64
	size int
	// churnable marks files made by a Shape; Churn only touches those.
	churnable bool
}

// Text is a regular file with content s.
func Text(s string) File { return File{Data: []byte(s)} }

// Bytes is a regular file with content b.
func Bytes(b []byte) File { return File{Data: b} }

// Symlink is a symbolic link to target.
func Symlink(target string) File { return File{Symlink: target} }

// Dir is a directory.
func Dir() File { return File{Dir: true} }

// WithMode returns f with permission bits (and setuid/setgid/sticky) m.
func (f File) WithMode(m os.FileMode) File { f.Mode = m; return f }

// Owned returns f owned by uid:gid.
func (f File) Owned(uid, gid int) File { f.UID, f.GID = uid, gid; return f }

// IsRegular reports whether f is a regular file.
func (f File) IsRegular() bool { return !f.Dir && f.Symlink == "" }

// Content returns a regular file's bytes (generated ones are computed).
func (f File) Content() []byte {
	if f.gen == 0 {
		return f.Data
	}
	return genContent(f.gen, f.size)
}

// Perm is the effective mode bits written to disk.
func (f File) Perm() os.FileMode {
	if f.Mode != 0 {
		return f.Mode
	}
	if f.Dir {
		return 0o755
	}
	return 0o644
}

// Shape describes a generated subtree: Files regular files spread over Dirs
// directories nested at most Depth levels, sizes uniform in [MinSize,
// MaxSize], and Symlinks relative links to generated files.
type Shape struct {
	Files, Dirs, Depth int
	MinSize, MaxSize   int
	Symlinks           int
}

// DefaultEtc and DefaultUsr keep generated trees small so that a fixture
// costs milliseconds; tests that want volume say so.
var (
	DefaultEtc = Shape{Files: 8, Dirs: 3, Depth: 2, MinSize: 16, MaxSize: 200, Symlinks: 1}
	DefaultUsr = Shape{Files: 8, Dirs: 2, Depth: 2, MinSize: 16, MaxSize: 512}
)

// TreeOptions configure NewTree. Etc and Usr nil mean DefaultEtc/DefaultUsr;
// a pointer to the zero Shape means no generated files there.
type TreeOptions struct {
	Seed int64
	// Etc is generated under usr/etc (the default configuration that becomes
	// /etc at deployment); Usr under usr/share/harness.
	Etc, Usr *Shape
	// KernelVersion names usr/lib/modules/VERSION (default "6.1.0-harness").
	KernelVersion string
	// OSRelease is usr/lib/os-release (default names the harness).
	OSRelease string
	// Kernel and Initramfs contents; they determine ostree's boot checksum,
	// so two trees with the same kernel share one /boot directory.
	Kernel, Initramfs string
	// Extra entries are set after generation (they win over generated ones).
	Extra map[string]File
}

// Tree is a whole filesystem tree to commit: relative slash paths (no leading
// slash) to entries. Missing parent directories are created 0755 root-owned
// when written. A Tree is a value that tests edit; Clone before editing one
// that was already committed if the old one is still needed.
type Tree struct {
	Entries map[string]File
	// KernelVersion is the usr/lib/modules/ directory holding the kernel.
	KernelVersion string
	seed          int64
	rev           int
}

// Standard bootable skeleton: what ostree and the booted namespace need.
var skeletonDirs = []string{"sysroot", "proc", "run", "dev", "tmp", "var", "boot",
	"usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/etc", "usr/share"}

// NewTree generates a bootable tree: usr/lib/os-release, a kernel and
// initramfs under usr/lib/modules/VER/, usr/etc with a few fixed files
// (passwd, group, hostname, os-release link) plus the generated Etc shape,
// the generated Usr shape under usr/share/harness, the merged-usr links
// (bin, sbin, lib, lib64 -> usr/...), `ostree -> sysroot/ostree`, and the
// sysroot/ proc/ run/ dev/ tmp/ var/ boot/ directories.
func NewTree(o TreeOptions) *Tree {
	t := &Tree{Entries: map[string]File{}, KernelVersion: o.KernelVersion, seed: o.Seed}
	if t.KernelVersion == "" {
		t.KernelVersion = "6.1.0-harness"
	}
	for _, d := range skeletonDirs {
		t.Entries[d] = Dir()
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		t.Entries[l] = Symlink("usr/" + l)
	}
	t.Entries["ostree"] = Symlink("sysroot/ostree")
	osr := o.OSRelease
	if osr == "" {
		osr = "NAME=\"Harness OS\"\nID=harness\nVERSION_ID=1\nPRETTY_NAME=\"Harness OS 1\"\n"
	}
	t.Entries["usr/lib/os-release"] = Text(osr)
	kernel, initrd := o.Kernel, o.Initramfs
	if kernel == "" {
		kernel = "harness kernel " + t.KernelVersion + "\n"
	}
	if initrd == "" {
		initrd = "harness initramfs " + t.KernelVersion + "\n"
	}
	mod := "usr/lib/modules/" + t.KernelVersion
	t.Entries[mod+"/vmlinuz"] = Text(kernel)
	t.Entries[mod+"/initramfs.img"] = Text(initrd)
	t.Entries["usr/etc/os-release"] = Symlink("../lib/os-release")
	t.Entries["usr/etc/passwd"] = Text("root:x:0:0:root:/root:/bin/sh\n")
	t.Entries["usr/etc/group"] = Text("root:x:0:\n")
	t.Entries["usr/etc/hostname"] = Text("harness\n")

	etc, usr := DefaultEtc, DefaultUsr
	if o.Etc != nil {
		etc = *o.Etc
	}
	if o.Usr != nil {
		usr = *o.Usr
	}
	t.generate("usr/etc", ".conf", etc)
	t.generate("usr/share/harness", "", usr)
	for p, f := range o.Extra {
		t.Set(p, f)
	}
	return t
}

func (t *Tree) rng(salt string) *rand.Rand {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%d/%s", t.seed, t.rev, salt)
	return rand.New(rand.NewPCG(uint64(t.seed), h.Sum64()))
}

func (t *Tree) generate(base, suffix string, s Shape) {
	if s.Files <= 0 && s.Dirs <= 0 {
		return
	}
	r := t.rng(base)
	if s.Dirs > 0 && s.Depth <= 0 {
		s.Depth = 1
	}
	if s.MaxSize < s.MinSize {
		s.MaxSize = s.MinSize
	}
	t.Entries[base] = Dir()
	type dir struct {
		p     string
		depth int
	}
	dirs := []dir{{base, 0}}
	for i := 0; i < s.Dirs; i++ {
		// Pick a parent that still has room below it; the base always does.
		var parent dir
		for {
			parent = dirs[r.IntN(len(dirs))]
			if parent.depth < s.Depth {
				break
			}
		}
		p := fmt.Sprintf("%s/d%d%s", parent.p, i, dirSuffix(suffix))
		t.Entries[p] = File{Dir: true, churnable: true}
		dirs = append(dirs, dir{p, parent.depth + 1})
	}
	var files []string
	for i := 0; i < s.Files; i++ {
		d := dirs[r.IntN(len(dirs))]
		p := fmt.Sprintf("%s/f%d%s", d.p, i, suffix)
		t.Entries[p] = t.genFile(r, s)
		files = append(files, p)
	}
	for i := 0; i < s.Symlinks && len(files) > 0; i++ {
		d := dirs[r.IntN(len(dirs))]
		target := files[r.IntN(len(files))]
		rel, _ := filepath.Rel(d.p, target)
		t.Entries[fmt.Sprintf("%s/l%d%s", d.p, i, suffix)] = Symlink(filepath.ToSlash(rel))
	}
}

func dirSuffix(suffix string) string {
	if suffix != "" {
		return ".d"
	}
	return ""
}

func (t *Tree) genFile(r *rand.Rand, s Shape) File {
	size := s.MinSize
	if s.MaxSize > s.MinSize {
		size += r.IntN(s.MaxSize - s.MinSize + 1)
	}
	g := r.Uint64() | 1
	return File{gen: g, size: size, churnable: true}
}

// genContent makes printable, line-structured bytes (readable in diffs).
func genContent(g uint64, size int) []byte {
	r := rand.New(rand.NewPCG(g, g^0x9e3779b97f4a7c15))
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 =_-"
	b := make([]byte, size)
	for i := range b {
		if i%64 == 63 {
			b[i] = '\n'
			continue
		}
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	if size > 0 {
		b[size-1] = '\n'
	}
	return b
}

// Clone returns an independent copy (entries are values; Data slices and
// Xattrs maps are shared, so replace them rather than mutating in place).
func (t *Tree) Clone() *Tree {
	c := *t
	c.Entries = make(map[string]File, len(t.Entries))
	for k, v := range t.Entries {
		c.Entries[k] = v
	}
	return &c
}

// Set adds or replaces the entry at p (relative, slash-separated) and
// returns t for chaining. Replacing a directory by a file drops its children.
func (t *Tree) Set(p string, f File) *Tree {
	p = cleanRel(p)
	if old, ok := t.Entries[p]; ok && old.Dir && !f.Dir {
		t.Remove(p)
	}
	t.Entries[p] = f
	return t
}

// Remove deletes p and everything below it; it returns t for chaining.
func (t *Tree) Remove(p string) *Tree {
	p = cleanRel(p)
	delete(t.Entries, p)
	prefix := p + "/"
	for k := range t.Entries {
		if strings.HasPrefix(k, prefix) {
			delete(t.Entries, k)
		}
	}
	return t
}

func cleanRel(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

// Paths lists every entry path, sorted.
func (t *Tree) Paths() []string {
	ps := make([]string, 0, len(t.Entries))
	for p := range t.Entries {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// Generated lists the generated (churnable) regular files, sorted.
func (t *Tree) Generated() []string {
	var ps []string
	for p, f := range t.Entries {
		if f.churnable && f.IsRegular() {
			ps = append(ps, p)
		}
	}
	sort.Strings(ps)
	return ps
}

// ChurnResult says what Churn did, for assertions.
type ChurnResult struct {
	Modified, Removed, Added []string
}

// Churn returns a follow-up tree: of the N generated regular files, about
// frac*N get new content, about frac*N/2 are removed and about frac*N/2 new
// files are added in existing generated directories (at least one of each
// when frac > 0 and there is something to churn). Symlink targets are never
// removed. The result is deterministic in (tree seed, seed).
func (t *Tree) Churn(frac float64, seed int64) (*Tree, ChurnResult) {
	c := t.Clone()
	c.rev++
	var res ChurnResult
	gen := t.Generated()
	if frac <= 0 || len(gen) == 0 {
		return c, res
	}
	r := rand.New(rand.NewPCG(uint64(t.seed)^uint64(seed), uint64(seed)+uint64(c.rev)))
	n := func(f float64) int {
		k := int(math.Round(f * float64(len(gen))))
		if k < 1 {
			k = 1
		}
		return k
	}
	linked := map[string]bool{}
	for p, f := range t.Entries {
		if f.Symlink != "" {
			linked[cleanRel(path.Join(path.Dir(p), f.Symlink))] = true
		}
	}
	perm := r.Perm(len(gen))
	nMod := min(n(frac), len(gen))
	nRem := min(n(frac/2), len(gen)-nMod)
	i := 0
	for ; i < nMod; i++ {
		p := gen[perm[i]]
		f := c.Entries[p]
		old := t.Entries[p].Content()
		f.gen = r.Uint64() | 1
		f.Data = nil
		if f.size == 0 {
			f.size = len(t.Entries[p].Data) + 1
		}
		// A modification must change the content: a one-byte file is
		// "\n" whatever its generator (seed 1796163979489497025 drew
		// one), and two generators may draw the same short text.
		for bytes.Equal(f.Content(), old) {
			f.size++
		}
		c.Entries[p] = f
		res.Modified = append(res.Modified, p)
	}
	for ; i < len(perm) && len(res.Removed) < nRem; i++ {
		p := gen[perm[i]]
		if linked[p] {
			continue
		}
		delete(c.Entries, p)
		res.Removed = append(res.Removed, p)
	}
	var dirs []string
	for p, f := range c.Entries {
		if f.Dir && (f.churnable || p == "usr/etc" || p == "usr/share/harness") {
			dirs = append(dirs, p)
		}
	}
	sort.Strings(dirs)
	for j := 0; j < n(frac/2); j++ {
		d := dirs[r.IntN(len(dirs))]
		suffix := ""
		if strings.HasPrefix(d, "usr/etc") {
			suffix = ".conf"
		}
		p := fmt.Sprintf("%s/c%d_%d%s", d, c.rev, j, suffix)
		c.Entries[p] = File{gen: r.Uint64() | 1, size: 16 + r.IntN(200), churnable: true}
		res.Added = append(res.Added, p)
	}
	sort.Strings(res.Modified)
	sort.Strings(res.Removed)
	sort.Strings(res.Added)
	return c, res
}

// Write materializes the tree under dir (which must exist and be empty or
// hold an earlier write of a tree with the same directories).
func (t *Tree) Write(dir string) error {
	root := os.Geteuid() == 0
	made := map[string]bool{"": true}
	var mkparents func(p string) error
	mkparents = func(p string) error {
		if made[p] {
			return nil
		}
		if err := mkparents(parentOf(p)); err != nil {
			return err
		}
		full := filepath.Join(dir, p)
		if err := os.Mkdir(full, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
		made[p] = true
		return nil
	}
	paths := t.Paths()
	for _, p := range paths {
		f := t.Entries[p]
		full := filepath.Join(dir, p)
		if err := mkparents(parentOf(p)); err != nil {
			return fmt.Errorf("tree %s: %w", p, err)
		}
		var err error
		switch {
		case f.Dir:
			err = os.Mkdir(full, 0o700)
			if os.IsExist(err) {
				err = nil
			}
			made[p] = true
		case f.Symlink != "":
			err = os.Symlink(f.Symlink, full)
		default:
			err = os.WriteFile(full, f.Content(), 0o600)
		}
		if err != nil {
			return fmt.Errorf("tree %s: %w", p, err)
		}
		if f.UID != 0 || f.GID != 0 || root {
			if err := os.Lchown(full, f.UID, f.GID); err != nil {
				return fmt.Errorf("tree %s: %w", p, err)
			}
		}
		for k, v := range f.Xattrs {
			if err := unix.Lsetxattr(full, k, []byte(v), 0); err != nil {
				return fmt.Errorf("tree %s: xattr %s: %w", p, k, err)
			}
		}
		if f.Symlink == "" {
			// After chown (which clears setuid bits), and not subject to umask.
			if err := os.Chmod(full, f.Perm()); err != nil {
				return fmt.Errorf("tree %s: %w", p, err)
			}
		}
	}
	return nil
}

func parentOf(p string) string {
	d := path.Dir(p)
	if d == "." || d == "/" {
		return ""
	}
	return d
}
