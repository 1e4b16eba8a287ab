package durable

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var errInjected = errors.New("injected")

// calls records which steps ran, in order.
type calls []string

func tracing(c *calls) FS {
	r := Real()
	return FS{
		CreateTemp: func(dir int, dp, n string) (*os.File, error) {
			*c = append(*c, "create")
			return r.CreateTemp(dir, dp, n)
		},
		Chmod:    func(f *os.File, p uint32) error { *c = append(*c, "chmod"); return r.Chmod(f, p) },
		Fsync:    func(f *os.File) error { *c = append(*c, "fsync"); return r.Fsync(f) },
		Close:    func(f *os.File) error { *c = append(*c, "close"); return r.Close(f) },
		Rename:   func(d int, a, b string) error { *c = append(*c, "rename"); return r.Rename(d, a, b) },
		FsyncDir: func(d int) error { *c = append(*c, "fsyncdir"); return r.FsyncDir(d) },
		Remove:   func(d int, n string) error { *c = append(*c, "remove"); return r.Remove(d, n) },
	}
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range es {
		n = append(n, e.Name())
	}
	return n
}

func TestWriteSteps(t *testing.T) {
	for _, tc := range []struct {
		sync Sync
		want string
	}{
		{Full, "create chmod fsync close rename fsyncdir"},
		{FileOnly, "create chmod fsync close rename"},
		{AtomicOnly, "create chmod close rename"},
	} {
		dir := t.TempDir()
		p := filepath.Join(dir, "f")
		var c calls
		if err := tracing(&c).WriteFile(p, 0o640, tc.sync, Bytes([]byte("new"))); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(c, " "); got != tc.want {
			t.Errorf("sync %d: steps %q, want %q", tc.sync, got, tc.want)
		}
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != "new" || st.Mode().Perm() != 0o640 {
			t.Errorf("sync %d: content %q mode %v", tc.sync, b, st.Mode())
		}
		if n := entries(t, dir); len(n) != 1 {
			t.Errorf("sync %d: entries %v, want only f", tc.sync, n)
		}
	}
}

// TestWriteFaults makes each step fail in turn: the error wraps the
// injected one and names the step; before the rename the old file is
// untouched and no temporary is left; after it (the directory fsync) the
// new file is in place and the error is still reported.
func TestWriteFaults(t *testing.T) {
	steps := []string{"create", "write", "chmod", "fsync", "close", "rename", "fsyncdir"}
	for i, step := range steps {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "f")
			if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			fs := Real()
			fill := Bytes([]byte("new"))
			switch step {
			case "create":
				fs.CreateTemp = func(int, string, string) (*os.File, error) { return nil, errInjected }
			case "write":
				fill = func(*os.File) error { return errInjected }
			case "chmod":
				fs.Chmod = func(*os.File, uint32) error { return errInjected }
			case "fsync":
				fs.Fsync = func(*os.File) error { return errInjected }
			case "close":
				real := fs.Close
				fs.Close = func(f *os.File) error { real(f); return errInjected }
			case "rename":
				fs.Rename = func(int, string, string) error { return errInjected }
			case "fsyncdir":
				fs.FsyncDir = func(int) error { return errInjected }
			}
			err := fs.WriteFile(p, 0o600, Full, fill)
			if !errors.Is(err, errInjected) {
				t.Fatalf("error %v, want the injected one", err)
			}
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name %s", err, p)
			}
			want := "old"
			if i == len(steps)-1 {
				want = "new"
			}
			if b, _ := os.ReadFile(p); string(b) != want {
				t.Errorf("content %q, want %q", b, want)
			}
			if n := entries(t, dir); len(n) != 1 {
				t.Errorf("entries %v, want only f (the temporary removed)", n)
			}
		})
	}
}

// TestWriteFixedTemp: a stale fixed temporary (from a crash) is replaced,
// and a symlink planted under the temporary's name is removed, not
// followed.
func TestWriteFixedTemp(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(outside, []byte("victim"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "f.tmp")); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	tg := Target{Dir: int(d.Fd()), DirPath: dir, Name: "f", Perm: 0o600, Temp: "f.tmp"}
	if err := Real().Write(tg, Bytes([]byte("new"))); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "victim" {
		t.Errorf("the symlink was followed: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "new" {
		t.Errorf("content %q", b)
	}
	if n := entries(t, dir); len(n) != 1 {
		t.Errorf("entries %v", n)
	}
}
