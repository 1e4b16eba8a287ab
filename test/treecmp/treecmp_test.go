package treecmp

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var time0 = time.Unix(1, 0)

func mk(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(d, "sub/deeper"), 0o755))
	must(os.WriteFile(filepath.Join(d, "sub/f"), []byte("content"), 0o644))
	must(os.Symlink("f", filepath.Join(d, "sub/l")))
	must(os.Link(filepath.Join(d, "sub/f"), filepath.Join(d, "hard")))
	must(unix.Mkfifo(filepath.Join(d, "fifo"), 0o600))
	return d
}

func scan(t *testing.T, d string) Manifest {
	t.Helper()
	m, err := Scan(d, Options{Xattrs: true, Hardlinks: true, FileMTime: true})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestScanDetects: two equal trees compare equal; each single change
// (content, mode, owner, xattr, link target, hard link, type, mtime) is
// reported, on the path changed.
func TestScanDetects(t *testing.T) {
	for _, c := range []struct {
		name, path string
		change     func(d string) error
	}{
		{"content", "sub/f", func(d string) error { return os.WriteFile(filepath.Join(d, "sub/f"), []byte("contenT"), 0o644) }},
		{"mode", "sub", func(d string) error { return os.Chmod(filepath.Join(d, "sub"), 0o750) }},
		{"owner", "sub/l", func(d string) error {
			if os.Geteuid() != 0 {
				if os.Getenv("OSTREE_PREFINALIZE_E2E") == "1" {
					t.Fatal("OSTREE_PREFINALIZE_E2E=1 but not root")
				}
				t.Skip("changing an owner needs root")
			}
			return os.Lchown(filepath.Join(d, "sub/l"), 1, 2)
		}},
		{"xattr", "sub/deeper", func(d string) error { return unix.Setxattr(filepath.Join(d, "sub/deeper"), "user.k", []byte("v"), 0) }},
		{"target", "sub/l", func(d string) error {
			os.Remove(filepath.Join(d, "sub/l"))
			return os.Symlink("g", filepath.Join(d, "sub/l"))
		}},
		{"hardlink", "sub/f", func(d string) error {
			os.Remove(filepath.Join(d, "hard"))
			return os.WriteFile(filepath.Join(d, "hard"), []byte("content"), 0o644)
		}},
		{"type", "fifo", func(d string) error {
			os.Remove(filepath.Join(d, "fifo"))
			return os.WriteFile(filepath.Join(d, "fifo"), nil, 0o600)
		}},
		{"mtime", "sub/f", func(d string) error { return os.Chtimes(filepath.Join(d, "sub/f"), time0, time0) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := mk(t)
			if diff := scan(t, d).Diff(scan(t, d)); diff != nil {
				t.Fatalf("a tree differs from itself: %q", diff)
			}
			before := scan(t, d)
			if err := c.change(d); err != nil {
				if c.name == "xattr" && err == unix.ENOTSUP {
					t.Skip("no user xattrs here")
				}
				t.Fatal(err)
			}
			diff := before.Diff(scan(t, d))
			if len(diff) == 0 || !strings.Contains(strings.Join(diff, "\n"), c.path) {
				t.Fatalf("change of %s not reported on %s: %q", c.name, c.path, diff)
			}
		})
	}
}

// TestScanLongPath: a path longer than PATH_MAX is described.
func TestScanLongPath(t *testing.T) {
	d := t.TempDir()
	fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.Repeat("x", 200)
	depth := 0
	for ; depth*201 < unix.PathMax+200; depth++ {
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatal(err)
		}
		nfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = nfd
	}
	unix.Close(fd)
	m, err := Scan(d, Options{Xattrs: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != depth+1 {
		t.Fatalf("%d entries, want %d", len(m), depth+1)
	}
}
