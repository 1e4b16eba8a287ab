package prune

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune/prunetest"
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
			l.Unlink(dir, name)
			return real.Unlink(fd, dir, name)
		},
		FsyncDir: func(fd int, dir string) error {
			err := real.FsyncDir(fd, dir)
			if l.fsyncErr != nil {
				err = l.fsyncErr(dir)
			}
			l.Fsync(dir, err)
			return err
		},
		Syncfs: func(fd int) error {
			err := real.Syncfs(fd)
			l.Syncfs(err)
			return err
		},
	}
	return d, l
}

// barrierLog is a prunetest.BarrierLog whose directory fsyncs can be made
// to fail.
type barrierLog struct {
	prunetest.BarrierLog
	fsyncErr func(dir string) error // replaces a successful fsync's result
}

// check is BarrierLog.Check, failing t.
func (l *barrierLog) check(t *testing.T, final bool) int {
	t.Helper()
	n, err := l.Check(final)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// depth0Plan is the plan of depth0Repo with c2 as the root.
func depth0Plan(t *testing.T) (*graph, []ostree.ObjectName, *Plan) {
	t.Helper()
	g, c := depth0Repo()
	roots := []ostree.ObjectName{c["c2"]}
	p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	return g, roots, p
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
			t.Fatalf("%s: %d syncfs calls on a filesystem that fsyncs directories\n%s", name, n, l.String())
		}
		// A second barrier with nothing changed since does nothing.
		n := len(l.Lines)
		if err := d.Sync(); err != nil || len(l.Lines) != n {
			t.Fatalf("%s: idle Sync: %v, calls %v", name, err, l.Lines[n:])
		}
	}
	g, roots, p := depth0Plan(t)
	run(t, "depth0", g, roots, p, true)
	randomPlans(t, 15, 40, 1, func(i int, r *rand.Rand, g *graph, roots []ostree.ObjectName, p *Plan) {
		run(t, fmt.Sprintf("repo %d", i), g, roots, p, r.IntN(2) == 0)
	})
}

// A run resumed after a SIGKILL finds the killed run's unlinks already
// done (ENOENT): their directories still get fsynced before the next phase.
func TestRepoDeleterBarrierAfterKill(t *testing.T) {
	g, roots, p := depth0Plan(t)
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
		i := slicesIndex(l.Lines, "fsync objects/"+s[:2]+" <nil>")
		j := slicesIndexPrefix(l.Lines, "unlink objects/", ".dirtree")
		if i < 0 || j < 0 || i > j {
			t.Fatalf("objects/%s (a commit gone before this run) not fsynced before the first dirtree unlink\n%s", s[:2], l.String())
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
			g, roots, p := depth0Plan(t)
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
			for i, line := range l.Lines {
				if strings.HasPrefix(line, "fsync ") {
					fsyncs++
					if slicesIndex(l.Lines[:i], "syncfs <nil>") >= 0 {
						t.Fatalf("directory fsync tried again after the fallback\n%s", l.String())
					}
				}
			}
			if syncfs != 3 || fsyncs == 0 {
				t.Fatalf("fsync %v: %d syncfs, %d fsyncs\n%s", tc.errno, syncfs, fsyncs, l.String())
			}
		})
	}
}
