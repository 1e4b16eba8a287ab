package prune

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// barrierRepo writes the graph's objects as empty loose files of a bare
// repository (and a .commitpartial marker for every commit) and returns a
// RepoDeleter on it whose system calls are logged by a barrierLog.
func barrierRepo(t *testing.T, g *graph, tombstones bool) (*RepoDeleter, *barrierLog) {
	t.Helper()
	dir := t.TempDir()
	cfg := "[core]\nrepo_version=1\nmode=bare\n"
	if tombstones {
		cfg += "tombstone-commits=true\n"
	}
	for _, d := range []string{"objects", "state"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	for o := range g.present {
		s := o.Checksum.String()
		if err := os.MkdirAll(filepath.Join(dir, "objects", s[:2]), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "objects", s[:2], s[2:]+"."+o.Type.String()), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if o.Type == ostree.ObjCommit {
			if err := os.WriteFile(filepath.Join(dir, "state", s+".commitpartial"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	r, err := ostree.OpenRepo(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewRepoDeleter(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	l := &barrierLog{}
	real := d.FS
	d.FS = DeleterFS{
		Unlink: func(fd int, dir, name string) error {
			l.add("unlink " + dir + "/" + name) // logged when issued
			return real.Unlink(fd, dir, name)
		},
		FsyncDir: func(fd int, dir string) error {
			err := real.FsyncDir(fd, dir)
			if l.fsyncErr != nil {
				err = l.fsyncErr(dir)
			}
			l.add(fmt.Sprintf("fsync %s %v", dir, err)) // logged once complete
			return err
		},
		Syncfs: func(fd int) error {
			err := real.Syncfs(fd)
			l.add(fmt.Sprintf("syncfs %v", err))
			return err
		},
	}
	return d, l
}

// barrierLog records the deleter's system calls in the order they were
// issued (unlinks) or completed (fsync, syncfs).
type barrierLog struct {
	mu       sync.Mutex
	lines    []string
	fsyncErr func(dir string) error // replaces a successful fsync's result
}

func (l *barrierLog) add(s string) {
	l.mu.Lock()
	l.lines = append(l.lines, s)
	l.mu.Unlock()
}

// group is the ordering class of an unlinked name: commits, their
// .commitmeta and .commitpartial (0), dirtrees (1), the rest (2).
func group(name string) int {
	switch {
	case strings.HasSuffix(name, ".commit"), strings.HasSuffix(name, ".commitmeta"), strings.HasSuffix(name, ".commitpartial"):
		return 0
	case strings.HasSuffix(name, ".dirtree"):
		return 1
	}
	return 2
}

// check replays the log as a power loss sees it: an unlink is durable once
// a fsync of its directory (or a syncfs) completed after it. No unlink of a
// later group may be issued while one of an earlier group is not durable,
// and with final, nothing may be left non-durable. It returns how many
// syncfs calls the log has.
func (l *barrierLog) check(t *testing.T, final bool) (syncfs int) {
	t.Helper()
	pending := map[string][]string{} // dir → unlinked names not yet durable
	for i, line := range l.lines {
		f := strings.Fields(line)
		switch f[0] {
		case "unlink":
			dir, name := filepath.Split(f[1])
			dir = strings.TrimSuffix(dir, "/")
			for d, names := range pending {
				for _, n := range names {
					if group(n) < group(name) {
						t.Fatalf("line %d: %s issued while the unlink of %s/%s is not durable (no completed fsync of %s since)\n%s",
							i, line, d, n, d, strings.Join(l.lines[:i+1], "\n"))
					}
				}
			}
			pending[dir] = append(pending[dir], name)
		case "fsync":
			if f[2] == "<nil>" {
				delete(pending, f[1])
			}
		case "syncfs":
			syncfs++
			if f[1] == "<nil>" {
				clear(pending)
			}
		}
	}
	if final && len(pending) > 0 {
		t.Fatalf("Execute returned with unlinks not durable: %v\n%s", pending, strings.Join(l.lines, "\n"))
	}
	return syncfs
}

// The real deleter on a real directory: every phase's unlinks are durable
// (their directories fsynced, the fsyncs completed) before the next phase's
// first unlink, everything is durable when Execute returns, and no syncfs
// is issued.
func TestRepoDeleterBarrierOrder(t *testing.T) {
	run := func(t *testing.T, name string, g *graph, roots []ostree.ObjectName, p *Plan, tombstones bool) {
		d, l := barrierRepo(t, g, tombstones)
		res, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil)
		if err != nil || res.Remaining != 0 {
			t.Fatalf("%s: %+v %v", name, res, err)
		}
		if n := l.check(t, true); n != 0 {
			t.Fatalf("%s: %d syncfs calls on a filesystem that fsyncs directories\n%s", name, n, strings.Join(l.lines, "\n"))
		}
		// A second barrier with nothing changed since does nothing.
		n := len(l.lines)
		if err := d.Sync(); err != nil || len(l.lines) != n {
			t.Fatalf("%s: idle Sync: %v, calls %v", name, err, l.lines[n:])
		}
	}
	g, c := depth0Repo()
	roots := []ostree.ObjectName{c["c2"]}
	p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	run(t, "depth0", g, roots, p, true)
	randomPlans(t, 15, 40, 1, func(i int, r *rand.Rand, g *graph, roots []ostree.ObjectName, p *Plan) {
		run(t, fmt.Sprintf("repo %d", i), g, roots, p, r.IntN(2) == 0)
	})
}

// A run resumed after a SIGKILL finds the killed run's unlinks already
// done (ENOENT): their directories still get fsynced before the next phase.
func TestRepoDeleterBarrierAfterKill(t *testing.T) {
	g, c := depth0Repo()
	roots := []ostree.ObjectName{c["c2"]}
	p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	d, l := barrierRepo(t, g, false)
	// The killed run: the commits went, nothing was synced.
	for _, e := range p.Entries() {
		if e.Type == ostree.ObjCommit {
			s := e.Checksum.String()
			if err := os.Remove(filepath.Join(d.repo.Path, "objects", s[:2], s[2:]+".commit")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil); err != nil {
		t.Fatal(err)
	}
	l.check(t, true)
	for _, e := range p.Entries() {
		s := e.Checksum.String()
		if e.Type != ostree.ObjCommit {
			continue
		}
		i := slicesIndex(l.lines, "fsync objects/"+s[:2]+" <nil>")
		j := slicesIndexPrefix(l.lines, "unlink objects/", ".dirtree")
		if i < 0 || j < 0 || i > j {
			t.Fatalf("objects/%s (a commit gone before this run) not fsynced before the first dirtree unlink\n%s", s[:2], strings.Join(l.lines, "\n"))
		}
	}
}

func slicesIndex(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func slicesIndexPrefix(s []string, prefix, suffix string) int {
	for i, x := range s {
		if strings.HasPrefix(x, prefix) && strings.HasSuffix(x, suffix) {
			return i
		}
	}
	return -1
}

// A filesystem that refuses to fsync directories gets syncfs, once per
// barrier, with the order kept; a directory fsync that fails otherwise
// (EIO) is an error, not a reason for syncfs, and stops before the next
// phase.
func TestRepoDeleterBarrierFallback(t *testing.T) {
	for _, tc := range []struct {
		errno      unix.Errno
		wantSyncfs bool
	}{{unix.EINVAL, true}, {unix.ENOTSUP, true}, {unix.EIO, false}} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			g, c := depth0Repo()
			roots := []ostree.ObjectName{c["c2"]}
			p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
			if err != nil {
				t.Fatal(err)
			}
			d, l := barrierRepo(t, g, false)
			l.fsyncErr = func(string) error { return tc.errno }
			res, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil)
			syncfs := l.check(t, tc.wantSyncfs)
			if !tc.wantSyncfs {
				if !errors.Is(err, tc.errno) || syncfs != 0 {
					t.Fatalf("fsync %v: err %v, %d syncfs", tc.errno, err, syncfs)
				}
				if res.Deleted != 0 || res.Remaining != p.Len() {
					t.Fatalf("fsync %v: %+v: nothing is durable, nothing may be recorded as done", tc.errno, res)
				}
				return
			}
			if err != nil || res.Remaining != 0 {
				t.Fatalf("fsync %v: %+v %v", tc.errno, res, err)
			}
			// Three barriers (after commits, dirtrees, content), each one
			// syncfs; a directory fsync is tried at the first only.
			fsyncs := 0
			for i, line := range l.lines {
				if strings.HasPrefix(line, "fsync ") {
					fsyncs++
					if slicesIndex(l.lines[:i], "syncfs <nil>") >= 0 {
						t.Fatalf("directory fsync tried again after the fallback\n%s", strings.Join(l.lines, "\n"))
					}
				}
			}
			if syncfs != 3 || fsyncs == 0 {
				t.Fatalf("fsync %v: %d syncfs, %d fsyncs\n%s", tc.errno, syncfs, fsyncs, strings.Join(l.lines, "\n"))
			}
		})
	}
}
