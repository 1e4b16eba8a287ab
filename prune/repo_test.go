package prune

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

func ostreeCmd(t *testing.T, repo string, args ...string) string {
	t.Helper()
	cmd := exec.Command("ostree", append([]string{"--repo=" + repo}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("ostree %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return strings.TrimSpace(out.String())
}

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(content, "->") {
			if err := os.Symlink(strings.TrimPrefix(content, "->"), p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if content == "/" {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// findObjects lists objects/ as "<64-hex>.<suffix>" lines (what `find
// objects -type f -o -type l` shows), sorted.
func findObjects(t *testing.T, repo string) []string {
	t.Helper()
	var out []string
	root := filepath.Join(repo, "objects")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, strings.Replace(rel, "/", "", 1))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if _, found := slices.BinarySearch(b, x); !found {
			out = append(out, x)
		}
	}
	return out
}

// buildParityRepo: three commits on two branches plus an orphan commit,
// shared content, detached metadata, symlinks, empty and nested dirs; then
// the second branch's ref is deleted.
func buildParityRepo(t *testing.T, mode string) string {
	t.Helper()
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	ostreeCmd(t, repo, "init", "--mode="+mode)
	common := map[string]string{
		"usr/share/shared.txt": "shared by every commit",
		"usr/lib/os-release":   "NAME=test\n",
		"etc/link":             "->../usr/lib/os-release",
		"var/empty":            "/",
	}
	commit := func(name, branch string, extra map[string]string, args ...string) string {
		tree := filepath.Join(dir, name)
		writeTree(t, tree, common)
		writeTree(t, tree, extra)
		a := []string{"commit", "--tree=dir=" + tree, "--subject=" + name, "--timestamp=2024-01-01T00:00:00Z"}
		if mode == "bare-user-only" || mode == "archive" {
			a = append(a, "--owner-uid=0", "--owner-gid=0")
		}
		if branch == "" {
			a = append(a, "--orphan")
		} else {
			a = append(a, "--branch="+branch)
		}
		return ostreeCmd(t, repo, append(a, args...)...)
	}
	c1 := commit("c1", "os/stable", map[string]string{"usr/bin/tool": "v1", "usr/lib/only-c1/a": "c1 only", "usr/lib/only-c1/deep/b": "deep"},
		"--add-detached-metadata-string=sig=one")
	c2 := commit("c2", "os/stable", map[string]string{"usr/bin/tool": "v2", "usr/lib/only-c2": "c2 only"},
		"--add-detached-metadata-string=sig=two")
	c3 := commit("c3", "os/testing", map[string]string{"usr/bin/tool": "v3", "usr/lib/only-c1/a": "c1 only", "usr/lib/c3/x": "c3"})
	orphan := commit("orphan", "", map[string]string{"tmp/junk": "orphan"})
	ostreeCmd(t, repo, "refs", "--delete", "os/testing")
	t.Logf("c1 %s (parent of c2, unreferenced)\nc2 %s (os/stable)\nc3 %s (ref deleted)\norphan %s", c1, c2, c3, orphan)
	return repo
}

func cpA(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
}

func repoRoots(t *testing.T, r *ostree.Repo) []ostree.ObjectName {
	t.Helper()
	roots, err := RepoLive{Repo: r}.LiveRoots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

// TestRepoParityPrune: our plan for roots = the remaining refs at depth 0 is
// exactly what `ostree prune --refs-only --depth=0` deletes on an identical
// copy, and executing it leaves the same objects and a clean fsck.
func TestRepoParityPrune(t *testing.T) {
	harness.RequireOstree(t)
	for _, mode := range []string{"bare-user-only", "archive"} {
		t.Run(mode, func(t *testing.T) {
			repo := buildParityRepo(t, mode)
			copyDir := filepath.Join(t.TempDir(), "repo")
			cpA(t, repo, copyDir)

			r, p := planRepo(t, repo)
			var list bytes.Buffer
			if err := p.WriteList(&list); err != nil {
				t.Fatal(err)
			}
			ours := strings.Fields(list.String())

			before := findObjects(t, copyDir)
			ostreeCmd(t, copyDir, "prune", "--refs-only", "--depth=0")
			after := findObjects(t, copyDir)
			theirs := minus(before, after)
			if !slices.Equal(ours, theirs) {
				t.Fatalf("plan differs from ostree prune --refs-only --depth=0:\nonly ours:   %v\nonly ostree: %v",
					minus(ours, theirs), minus(theirs, ours))
			}
			if len(ours) == 0 || p.Stats.Commit.Objects != 3 || p.Stats.CommitMeta.Objects != 1 {
				t.Fatalf("expected c1, c3 and the orphan commit (and c1's detached metadata) to go: %+v", p.Stats)
			}

			d, err := NewRepoDeleter(r)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			res, err := p.Execute(context.Background(), d, RepoLive{Repo: r}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.Deleted != len(ours) || res.Remaining != 0 || res.RootsChanged {
				t.Errorf("result %+v", res)
			}
			if got := findObjects(t, repo); !slices.Equal(got, after) {
				t.Errorf("after Execute the objects differ from ostree's prune:\nonly ours:   %v\nonly ostree: %v", minus(got, after), minus(after, got))
			}
			ostreeCmd(t, repo, "fsck")

			// The same plan reloaded from storage (progress lost) runs
			// again: every object is already gone, which is no error.
			again, err := NewPlan(p.Roots, p.FileSuffix, p.Entries())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := again.Execute(context.Background(), d, RepoLive{Repo: r}, nil); err != nil {
				t.Fatalf("re-run: %v", err)
			}
			if got := findObjects(t, repo); !slices.Equal(got, after) {
				t.Errorf("re-run changed the repository")
			}
		})
	}
}

// A symlinked objects/XX is neither listed through nor deleted through.
func TestRepoNoSymlinkFollow(t *testing.T) {
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	outside := filepath.Join(dir, "outside")
	for _, d := range []string{repo + "/objects", outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(repo+"/config", []byte("[core]\nrepo_version=1\nmode=bare-user-only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	victim := ostree.ObjectName{Checksum: sum("v"), Type: ostree.ObjFile}
	xx := victim.Checksum.String()[:2]
	if err := os.Symlink(outside, filepath.Join(repo, "objects", xx)); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(outside, victim.Checksum.String()[2:]+".file")
	if err := os.WriteFile(target, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := ostree.OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	err = RepoLister(r).ListObjects(func(o ostree.ObjectName, size int64) error { return nil })
	if !errors.Is(err, ostree.ErrCorrupt) || !strings.Contains(err.Error(), "objects/"+xx) {
		t.Errorf("listing through a symlinked objects/%s: %v", xx, err)
	}
	d, err := NewRepoDeleter(r)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Delete(victim); err == nil {
		t.Error("Delete through a symlinked objects/XX succeeded")
	}
	if _, err := os.Stat(target); err != nil {
		t.Errorf("file outside the repository deleted: %v", err)
	}
	// A missing object (and a missing objects/XX) is no error.
	if err := d.Delete(ostree.ObjectName{Checksum: sum("absent"), Type: ostree.ObjDirTree}); err != nil {
		t.Errorf("absent object: %v", err)
	}
}

// TestRepoTombstones: with core.tombstone-commits=true the tombstones we
// write are byte-identical to ostree's (same names, bytes and mode).
func TestRepoTombstones(t *testing.T) {
	harness.RequireOstree(t)
	repo := buildParityRepo(t, "bare-user-only")
	ostreeCmd(t, repo, "config", "set", "core.tombstone-commits", "true")
	copyDir := filepath.Join(t.TempDir(), "repo")
	cpA(t, repo, copyDir)

	r, err := ostree.OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	if !r.TombstoneCommits {
		t.Fatal("config not read")
	}
	p, err := ComputePlan(context.Background(), RepoLister(r), repoRoots(t, r), FileSuffix(r), RepoChildren(r))
	if err != nil {
		t.Fatal(err)
	}

	before := findObjects(t, copyDir)
	ostreeCmd(t, copyDir, "prune", "--refs-only", "--depth=0")
	after := findObjects(t, copyDir)

	d, err := NewRepoDeleter(r)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := p.Execute(context.Background(), d, RepoLive{Repo: r}, nil); err != nil {
		t.Fatal(err)
	}
	got := findObjects(t, repo)
	if !slices.Equal(got, after) {
		t.Fatalf("objects differ from ostree's prune with tombstones:\nonly ours:   %v\nonly ostree: %v", minus(got, after), minus(after, got))
	}
	n := 0
	for _, o := range minus(after, before) {
		if !strings.HasSuffix(o, ".tombstone-commit") {
			t.Errorf("ostree created %s", o)
			continue
		}
		n++
		rel := o[:2] + "/" + o[2:]
		a, err1 := os.ReadFile(filepath.Join(repo, "objects", rel))
		b, err2 := os.ReadFile(filepath.Join(copyDir, "objects", rel))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("tombstone %s: ours %x (%v), ostree's %x (%v)", o, a, err1, b, err2)
		}
		sa, _ := os.Stat(filepath.Join(repo, "objects", rel))
		sb, _ := os.Stat(filepath.Join(copyDir, "objects", rel))
		if sa.Mode() != sb.Mode() {
			t.Errorf("tombstone %s: mode %v, ostree's %v", o, sa.Mode(), sb.Mode())
		}
	}
	if n != 3 {
		t.Errorf("%d tombstones, want 3", n)
	}
	ostreeCmd(t, repo, "fsck")
}

func TestRepoNewRootBetweenPlanAndExecute(t *testing.T) {
	harness.RequireOstree(t)
	repo := buildParityRepo(t, "bare-user-only")
	r, err := ostree.OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	p, err := PlanRepo(context.Background(), r, repoRoots(t, r), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The deleted branch comes back (as a pull would bring it back) after
	// planning: everything c3 reaches must survive, and it checks out.
	var c3 string
	// Find c3 among the planned commits: the one whose subject is c3.
	for _, e := range p.Entries() {
		if e.Type != ostree.ObjCommit {
			continue
		}
		c, err := r.LoadCommit(e.Checksum)
		if err != nil {
			t.Fatal(err)
		}
		if c.Subject == "c3" {
			c3 = e.Checksum.String()
		}
	}
	if c3 == "" {
		t.Fatal("c3 not planned")
	}
	ostreeCmd(t, repo, "refs", "--create=os/testing", c3)

	// While someone holds the repository lock, nothing happens and the
	// error says so.
	held, err := r.Lock(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	before := findObjects(t, repo)
	if _, err := ExecuteRepo(context.Background(), r, p, nil, 200*time.Millisecond, nil); !errors.Is(err, ostree.ErrLockTimeout) {
		t.Fatalf("with the lock held: %v", err)
	}
	held.Unlock()
	if !slices.Equal(before, findObjects(t, repo)) {
		t.Fatal("objects deleted without the lock")
	}

	res, err := ExecuteRepo(context.Background(), r, p, nil, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.RootsChanged || res.NewRoots != 1 || res.KeptLive == 0 {
		t.Errorf("result %+v", res)
	}
	ostreeCmd(t, repo, "fsck")
	co := filepath.Join(t.TempDir(), "co")
	ostreeCmd(t, repo, "checkout", "-U", "os/testing", co)
	if b, err := os.ReadFile(filepath.Join(co, "usr/lib/c3/x")); err != nil || string(b) != "c3" {
		t.Errorf("checkout of the new root: %q %v", b, err)
	}
}

// TestRepoParityPartialCommit: a commit-metadata-only pull leaves a remote
// ref on a partial commit whose trees are absent; ostree's prune ignores
// the missing trees, and so must the plan.
func TestRepoParityPartialCommit(t *testing.T) {
	harness.RequireOstree(t)
	src := buildParityRepo(t, "archive")
	repo := filepath.Join(t.TempDir(), "repo")
	ostreeCmd(t, repo, "init", "--mode=bare-user-only")
	ostreeCmd(t, repo, "remote", "add", "--no-gpg-verify", "origin", "file://"+src)
	ostreeCmd(t, repo, "pull-local", "--commit-metadata-only", "--remote=origin", src, "os/stable")
	// Local content: one branch kept, one orphan commit to prune, sharing
	// the dirmeta of the remote commit's root.
	tree := filepath.Join(t.TempDir(), "tree")
	writeTree(t, tree, map[string]string{"usr/lib/os-release": "NAME=test\n", "local": "x"})
	ostreeCmd(t, repo, "commit", "--branch=local", "--tree=dir="+tree, "--owner-uid=0", "--owner-gid=0")
	writeTree(t, tree, map[string]string{"gone": "y"})
	ostreeCmd(t, repo, "commit", "--orphan", "--tree=dir="+tree, "--owner-uid=0", "--owner-gid=0")

	copyDir := filepath.Join(t.TempDir(), "repo")
	cpA(t, repo, copyDir)
	r, err := ostree.OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	remote := ostreeCmd(t, repo, "rev-parse", "origin:os/stable")
	if _, err := os.Stat(filepath.Join(repo, "state", remote+".commitpartial")); err != nil {
		t.Fatalf("scenario: no partial commit: %v", err)
	}
	c, err := r.LoadCommit(mustChecksum(t, remote))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.ObjectPath(ostree.ObjectName{Checksum: c.RootTree, Type: ostree.ObjDirTree})); err == nil {
		t.Fatal("scenario: the partial commit's root dirtree is present")
	}
	p, err := ComputePlan(context.Background(), RepoLister(r), repoRoots(t, r), FileSuffix(r), RepoChildren(r))
	if err != nil {
		t.Fatal(err)
	}
	var list bytes.Buffer
	p.WriteList(&list)
	ours := strings.Fields(list.String())
	before := findObjects(t, copyDir)
	ostreeCmd(t, copyDir, "prune", "--refs-only", "--depth=0")
	theirs := minus(before, findObjects(t, copyDir))
	if !slices.Equal(ours, theirs) || len(ours) == 0 {
		t.Fatalf("plan differs from ostree prune (partial commit):\nonly ours:   %v\nonly ostree: %v", minus(ours, theirs), minus(theirs, ours))
	}
}

func mustChecksum(t *testing.T, s string) ostree.Checksum {
	t.Helper()
	c, err := ostree.ParseChecksum(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRepoMissingDirtree: a dirtree missing below a complete commit stops
// planning with an error naming it (ostree's prune fails too); below a
// commit marked partial, ostree skips it and so does the plan.
func TestRepoMissingDirtree(t *testing.T) {
	harness.RequireOstree(t)
	repo := buildParityRepo(t, "bare-user-only")
	r, err := ostree.OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	head := ostreeCmd(t, repo, "rev-parse", "os/stable")
	c, err := r.LoadCommit(mustChecksum(t, head))
	if err != nil {
		t.Fatal(err)
	}
	// Remove the dirtree of usr/lib (below the root).
	var victim ostree.ObjectName
	find := func(tree ostree.Checksum, name string) ostree.Checksum {
		b, err := r.ReadMeta(ostree.ObjectName{Checksum: tree, Type: ostree.ObjDirTree})
		if err != nil {
			t.Fatal(err)
		}
		var found ostree.Checksum
		ostree.WalkDirTree(b, func([]byte, ostree.Checksum) error { return nil }, func(n []byte, tr, _ ostree.Checksum) error {
			if string(n) == name {
				found = tr
			}
			return nil
		})
		return found
	}
	victim = ostree.ObjectName{Checksum: find(find(c.RootTree, "usr"), "lib"), Type: ostree.ObjDirTree}
	if victim.Checksum.IsZero() {
		t.Fatal("no usr/lib")
	}
	if err := os.Remove(r.ObjectPath(victim)); err != nil {
		t.Fatal(err)
	}
	_, err = ComputePlan(context.Background(), RepoLister(r), repoRoots(t, r), FileSuffix(r), RepoChildren(r))
	if !errors.Is(err, ostree.ErrNotFound) || !strings.Contains(err.Error(), victim.String()) {
		t.Fatalf("missing dirtree: %v, want ErrNotFound naming %s", err, victim)
	}
	if out, err := exec.Command("ostree", "--repo="+repo, "prune", "--refs-only", "--depth=0", "--no-prune").CombinedOutput(); err == nil {
		t.Fatalf("ostree prune succeeded on a missing dirtree:\n%s", out)
	}

	if err := os.MkdirAll(filepath.Join(repo, "state"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "state", head+".commitpartial"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	copyDir := filepath.Join(t.TempDir(), "repo")
	cpA(t, repo, copyDir)
	p, err := ComputePlan(context.Background(), RepoLister(r), repoRoots(t, r), FileSuffix(r), RepoChildren(r))
	if err != nil {
		t.Fatal(err)
	}
	var list bytes.Buffer
	p.WriteList(&list)
	ours := strings.Fields(list.String())
	before := findObjects(t, copyDir)
	ostreeCmd(t, copyDir, "prune", "--refs-only", "--depth=0")
	theirs := minus(before, findObjects(t, copyDir))
	if !slices.Equal(ours, theirs) {
		t.Fatalf("plan differs from ostree prune (missing dirtree under a partial commit):\nonly ours:   %v\nonly ostree: %v", minus(ours, theirs), minus(theirs, ours))
	}
}

// TestRepoTombstoneWriteFault: a tombstone whose rename fails (the shared
// writer's step, injected through RepoDeleter.WriteFS) stops the execution with
// an error naming the tombstone, leaves no tombstone and no temporary, and
// the repository stays fsck-clean.
func TestRepoTombstoneWriteFault(t *testing.T) {
	harness.RequireOstree(t)
	repo := buildParityRepo(t, "bare-user-only")
	ostreeCmd(t, repo, "config", "set", "core.tombstone-commits", "true")
	r, p := planRepo(t, repo)
	d, err := NewRepoDeleter(r)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	injected := errors.New("injected")
	d.WriteFS.Rename = func(int, string, string) error { return injected }
	if _, err := p.Execute(context.Background(), d, RepoLive{Repo: r}, nil); !errors.Is(err, injected) || !strings.Contains(err.Error(), "tombstone") {
		t.Fatalf("error %v, want the injected one naming a tombstone", err)
	}
	for _, o := range findObjects(t, repo) {
		if strings.HasSuffix(o, ".tombstone-commit") || strings.HasSuffix(o, ".tmp") {
			t.Errorf("left behind: %s", o)
		}
	}
	ostreeCmd(t, repo, "fsck")
}

// planRepo opens repo and plans its prune from its refs.
func planRepo(t *testing.T, repo string) (*ostree.Repo, *Plan) {
	t.Helper()
	r, err := ostree.OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ComputePlan(context.Background(), RepoLister(r), repoRoots(t, r), FileSuffix(r), RepoChildren(r))
	if err != nil {
		t.Fatal(err)
	}
	return r, p
}
