package etcmerge

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// node is what the parity comparisons look at for one path: what ostree's
// merge defines (type, permission bits, owner, xattrs, content, symlink
// target) plus the mtime of regular files, which glnx_file_copy_at keeps.
type node struct {
	Type    string
	Mode    uint32
	UID     uint32
	GID     uint32
	Xattrs  string
	Content []byte
	Target  string
	Mtime   int64
}

func (n node) String() string {
	c := string(n.Content)
	if len(c) > 40 {
		c = c[:40] + "..."
	}
	return fmt.Sprintf("%s mode=%o uid=%d gid=%d xattrs=[%s] target=%q mtime=%d content=%q",
		n.Type, n.Mode, n.UID, n.GID, n.Xattrs, n.Target, n.Mtime, c)
}

// snapOpts: noMtime drops the mtime of regular files from the
// comparison, ignoreXattr drops xattrs with these name prefixes.
type snapOpts struct {
	noMtime     bool
	ignoreXattr []string
}

// snapshot reads the whole tree under root, without following symlinks.
// The root itself is not included.
func snapTree(t testing.TB, root string, o snapOpts) map[string]node {
	t.Helper()
	out := map[string]node{}
	var walk func(rel string)
	walk = func(rel string) {
		full := filepath.Join(root, rel)
		ents, err := os.ReadDir(full)
		if err != nil {
			t.Fatalf("snapshot %s: %v", full, err)
		}
		for _, e := range ents {
			p := joinRel(rel, e.Name())
			fp := filepath.Join(root, p)
			var st unix.Stat_t
			if err := unix.Lstat(fp, &st); err != nil {
				t.Fatalf("snapshot lstat %s: %v", fp, err)
			}
			n := node{Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid}
			xs, err := pathXattrs(fp)
			if err != nil {
				t.Fatalf("snapshot xattrs %s: %v", fp, err)
			}
			var xl []string
		next:
			for _, x := range xs {
				for _, pre := range o.ignoreXattr {
					if strings.HasPrefix(x.Name, pre) {
						continue next
					}
				}
				xl = append(xl, fmt.Sprintf("%s=%x", x.Name, x.Value))
			}
			sort.Strings(xl)
			n.Xattrs = strings.Join(xl, ",")
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				n.Type = "dir"
			case unix.S_IFREG:
				n.Type = "file"
				b, err := os.ReadFile(fp)
				if err != nil {
					t.Fatalf("snapshot read %s: %v", fp, err)
				}
				n.Content = b
				if !o.noMtime {
					n.Mtime = st.Mtim.Nano()
				}
			case unix.S_IFLNK:
				n.Type = "symlink"
				n.Mode = 0
				n.Target, err = os.Readlink(fp)
				if err != nil {
					t.Fatalf("snapshot readlink %s: %v", fp, err)
				}
			case unix.S_IFIFO:
				n.Type = "fifo"
			case unix.S_IFSOCK:
				n.Type = "socket"
			default:
				n.Type = fmt.Sprintf("special-%o", st.Mode&unix.S_IFMT)
			}
			out[p] = n
			if n.Type == "dir" {
				walk(p)
			}
		}
	}
	walk("")
	return out
}

// diffSnapshots lists every difference between two snapshots, sorted.
func diffSnapshots(a, b map[string]node) []string {
	var out []string
	for p, na := range a {
		nb, ok := b[p]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%q only in first: %v", p, na))
		case na.Type != nb.Type || na.Mode != nb.Mode || na.UID != nb.UID || na.GID != nb.GID ||
			na.Xattrs != nb.Xattrs || !bytes.Equal(na.Content, nb.Content) || na.Target != nb.Target || na.Mtime != nb.Mtime:
			out = append(out, fmt.Sprintf("%q differs:\n\t%v\n\t%v", p, na, nb))
		}
	}
	for p, nb := range b {
		if _, ok := a[p]; !ok {
			out = append(out, fmt.Sprintf("%q only in second: %v", p, nb))
		}
	}
	sort.Strings(out)
	return out
}

// requireSameTree fails the test with every difference between two trees.
func requireSameTree(t testing.TB, what string, a, b map[string]node) {
	t.Helper()
	if d := diffSnapshots(a, b); len(d) > 0 {
		if len(d) > 30 {
			d = append(d[:30], fmt.Sprintf("... and %d more", len(d)-30))
		}
		t.Fatalf("%s: %d differences:\n%s", what, len(d), strings.Join(d, "\n"))
	}
}

// copyTree is an exact copy with the system's cp -a (owner, mode, xattrs,
// times, symlinks as symlinks): an independent way to make "a fresh copy
// of the new defaults".
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("cp", "-a", "--no-preserve=links", src+"/.", dst).CombinedOutput()
	if err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
	}
}

// pathXattrs reads the xattrs of path itself (a symlink is not followed).
func pathXattrs(path string) ([]Xattr, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	e := &entry{f: os.NewFile(uintptr(fd), path)}
	defer e.Close()
	return e.xattrs()
}
