package ostree

// Longer than 500 lines on purpose: the repository reader's cross-checks
// against the ostree command, one fixture for all repository modes.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// runOstree runs the ostree command and returns its stdout, failing the
// test on error.
func runOstree(t testing.TB, args ...string) string {
	t.Helper()
	out, err := runOstreeErr(args...)
	if err != nil {
		t.Fatalf("ostree %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func runOstreeErr(args ...string) (string, error) {
	cmd := exec.Command("ostree", args...)
	cmd.Env = append(os.Environ(), "TZ=UTC", "LC_ALL=C.UTF-8")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// makeTree writes a small tree with regular files of several modes and
// sizes, symlinks (relative, absolute, dangling), nested and non-ASCII
// directories.
func makeTree(t testing.TB, dir string, rng *rand.Rand, variant int) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	big := make([]byte, 150<<10+rng.Intn(1000))
	rng.Read(big)
	must(os.MkdirAll(filepath.Join(dir, "sub/nested/deep"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "ünï"), 0o700))
	must(os.WriteFile(filepath.Join(dir, "a.txt"), []byte(fmt.Sprintf("hello %d\n", variant)), 0o644))
	must(os.WriteFile(filepath.Join(dir, "empty"), nil, 0o644))
	must(os.WriteFile(filepath.Join(dir, "exec.sh"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "sub/nested/deep/big.bin"), big, 0o600))
	must(os.WriteFile(filepath.Join(dir, "ünï/f"), []byte("unicode dir\n"), 0o640))
	must(os.Symlink("a.txt", filepath.Join(dir, "link")))
	must(os.Symlink("/nonexistent/target", filepath.Join(dir, "sub/abs-link")))
	must(os.Symlink("../../a.txt", filepath.Join(dir, "sub/nested/up-link")))
	for i := 0; i < 20+variant; i++ {
		b := make([]byte, rng.Intn(3000))
		rng.Read(b)
		must(os.WriteFile(filepath.Join(dir, "sub", fmt.Sprintf("f%02d", i)), b, 0o644))
	}
}

type testRepo struct {
	path    string
	mode    string
	commits map[string]string // ref name -> checksum
}

// buildRepo makes a repository with the ostree command: branches (one
// nested a/b/c), a two-commit history, commit metadata, remote refs from
// pull-local and refs --create, an alias and a mirror ref.
func buildRepo(t testing.TB, mode string, collectionID string) *testRepo {
	t.Helper()
	seed := time.Now().UnixNano()
	t.Logf("buildRepo %s: seed %d", mode, seed)
	rng := rand.New(rand.NewSource(seed))
	base := t.TempDir()
	r := &testRepo{path: filepath.Join(base, "repo"), mode: mode, commits: map[string]string{}}
	args := []string{"init", "--repo=" + r.path, "--mode=" + mode}
	if collectionID != "" {
		args = append(args, "--collection-id="+collectionID)
	}
	runOstree(t, args...)
	commit := func(branch string, variant int, extra ...string) {
		d := filepath.Join(base, fmt.Sprintf("tree-%s-%d", strings.ReplaceAll(branch, "/", "_"), variant))
		makeTree(t, d, rng, variant)
		a := append([]string{"--repo=" + r.path, "commit", "-b", branch, "--tree=dir=" + d,
			"-s", "subject " + branch, "--body", fmt.Sprintf("body of %s\nline 2", branch)}, extra...)
		r.commits[branch] = strings.TrimSpace(runOstree(t, a...))
	}
	commit("main", 1)
	commit("main", 2, "--add-metadata-string=version=2.0")
	commit("a/b/c", 3)
	commit("other", 4, "--add-metadata-string=foo=bar", "--timestamp=2020-01-02 03:04:05")

	// A remote's refs: pulled from a second repository, plus one made
	// directly with a nested name.
	src := filepath.Join(base, "src")
	runOstree(t, "init", "--repo="+src, "--mode=archive")
	d := filepath.Join(base, "tree-src")
	makeTree(t, d, rng, 9)
	runOstree(t, "--repo="+src, "commit", "-b", "rbranch", "--tree=dir="+d, "-s", "remote")
	runOstree(t, "--repo="+r.path, "remote", "add", "--no-gpg-verify", "origin", "file://"+src)
	runOstree(t, "--repo="+r.path, "pull-local", "--remote=origin", src, "rbranch")
	runOstree(t, "--repo="+r.path, "refs", "--create=origin:nested/x/y", "main")
	runOstree(t, "--repo="+r.path, "refs", "--alias", "--create=alias/of-main", "main")
	runOstree(t, "--repo="+r.path, "refs", "--collections", "--create=org.example.Mirror:mirrored/ref", "other")
	return r
}

// ostreeRefs is `ostree refs` as a sorted list of names.
func ostreeLines(t testing.TB, args ...string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(runOstree(t, args...), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

func TestRepoMatchesOstree(t *testing.T) {
	harness.RequireRoot(t)
	for _, tc := range []struct{ mode, coll string }{
		{"archive", ""},
		{"bare-user-only", "org.example.Main"},
		{"bare", ""},
		{"bare-user", ""},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			tr := buildRepo(t, tc.mode, tc.coll)
			checkRepo(t, tr, tc.coll)
		})
	}
}

func checkRepo(t *testing.T, tr *testRepo, coll string) {
	r, err := OpenRepo(tr.path)
	if err != nil {
		t.Fatal(err)
	}
	wantMode, _ := ParseRepoMode(tr.mode)
	if r.Mode != wantMode || r.CollectionID != coll || !r.Locking {
		t.Fatalf("OpenRepo: %+v", r)
	}

	// Refs against `ostree refs`, `ostree rev-parse` and
	// `ostree refs --collections`.
	refs, err := r.Refs()
	if err != nil {
		t.Fatal(err)
	}
	var names, collNames []string
	for _, ref := range refs {
		if ref.Kind != RefMirror {
			names = append(names, ref.Name)
			if got := strings.TrimSpace(runOstree(t, "--repo="+tr.path, "rev-parse", ref.Name)); got != ref.Checksum.String() {
				t.Errorf("ref %s: %s, ostree rev-parse says %s", ref.Name, ref.Checksum, got)
			}
		}
		if ref.Collection != "" {
			collNames = append(collNames, fmt.Sprintf("(%s, %s)", ref.Collection, ref.Name))
		}
		if ref.Name == "alias/of-main" && ref.AliasOf != "main" {
			t.Errorf("alias: %+v", ref)
		}
	}
	sort.Strings(names)
	sort.Strings(collNames)
	if want := ostreeLines(t, "--repo="+tr.path, "refs"); strings.Join(want, "\n") != strings.Join(names, "\n") {
		t.Errorf("refs:\n got %q\nwant %q", names, want)
	}
	if want := ostreeLines(t, "--repo="+tr.path, "refs", "--collections"); strings.Join(want, "\n") != strings.Join(collNames, "\n") {
		t.Errorf("refs --collections:\n got %q\nwant %q", collNames, want)
	}
	for _, n := range []string{"main", "a/b/c", "other", "origin:rbranch", "origin:nested/x/y", "alias/of-main"} {
		if !contains(names, n) {
			t.Errorf("ref %s missing from %q", n, names)
		}
	}
	if !contains(collNames, "(org.example.Mirror, mirrored/ref)") {
		t.Errorf("mirror ref missing: %q", collNames)
	}

	// ListObjects against find(1) on the objects directory.
	var got []string
	commits := map[Checksum]bool{}
	stats, err := r.ScanObjects(t.Context(), func(o ObjectName, size int64) error {
		got = append(got, fmt.Sprintf("%s/%s %d", o.Checksum.String()[:2], o.Checksum.String()[2:]+"."+r.Suffix(o.Type), size))
		if o.Type == ObjCommit {
			commits[o.Checksum] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if stats.Skipped != 0 {
		t.Errorf("skipped %d: %q", stats.Skipped, stats.SkippedExamples)
	}
	cmd := exec.Command("find", filepath.Join(tr.path, "objects"), "-mindepth", "2", "(", "-type", "f", "-o", "-type", "l", ")", "-printf", "%P %s\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Split(strings.TrimSpace(string(out)), "\n")
	sort.Strings(want)
	if !sort.StringsAreSorted(got) {
		t.Errorf("ListObjects not in sorted order")
	}
	sort.Strings(got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("objects:\n got %d %q\nwant %d %q", len(got), got, len(want), want)
	}
	if len(commits) < 5 {
		t.Errorf("only %d commits", len(commits))
	}

	// LoadCommit of every commit against `ostree show` and `ostree ls -d -C`.
	for c := range commits {
		cm, err := r.LoadCommit(c)
		if err != nil {
			t.Fatal(err)
		}
		show := runOstree(t, "--repo="+tr.path, "show", c.String())
		wantParent := ""
		for _, l := range strings.Split(show, "\n") {
			if strings.HasPrefix(l, "Parent:") {
				wantParent = strings.TrimSpace(strings.TrimPrefix(l, "Parent:"))
			}
			if strings.HasPrefix(l, "Date:") {
				d := strings.TrimSpace(strings.TrimPrefix(l, "Date:"))
				if got := time.Unix(int64(cm.Timestamp), 0).UTC().Format("2006-01-02 15:04:05 -0700"); got != d {
					t.Errorf("commit %s: date %s, ostree says %s", c, got, d)
				}
			}
		}
		gotParent := ""
		if !cm.Parent.IsZero() {
			gotParent = cm.Parent.String()
		}
		if gotParent != wantParent {
			t.Errorf("commit %s: parent %q, ostree says %q", c, gotParent, wantParent)
		}
		if !strings.Contains(show, "\n    "+cm.Subject+"\n") || (cm.Body != "" && !strings.Contains(show, "    "+strings.ReplaceAll(cm.Body, "\n", "\n    ")+"\n")) {
			t.Errorf("commit %s: subject %q body %q not in\n%s", c, cm.Subject, cm.Body, show)
		}
		root := strings.Fields(runOstree(t, "--repo="+tr.path, "ls", "-d", "-C", c.String(), "/"))
		if len(root) < 7 || root[4] != cm.RootTree.String() || root[5] != cm.RootMeta.String() {
			t.Errorf("commit %s: root %s %s, ostree ls says %q", c, cm.RootTree, cm.RootMeta, root)
		}
		for _, key := range []string{"version", "foo"} {
			v, ok := cm.MetadataString(key)
			o, err := runOstreeErr("--repo="+tr.path, "show", "--print-metadata-key="+key, c.String())
			if ok != (err == nil) || (ok && strings.TrimSpace(o) != "'"+v+"'") {
				t.Errorf("commit %s: metadata %s = %q (%v), ostree says %q (%v)", c, key, v, ok, o, err)
			}
		}
	}

	// Walk every ref's tree with the dirtree decoder and read every file
	// through OpenFile: the listing must equal `ostree ls -R -C`, and the
	// content `ostree cat`.
	for _, ref := range refs {
		if ref.Kind == RefMirror || ref.AliasOf != "" {
			continue
		}
		cm, err := r.LoadCommit(ref.Checksum)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		var files []string
		walkTree(t, r, cm.RootTree, cm.RootMeta, "/", &lines, &files)
		want := ostreeLines(t, "--repo="+tr.path, "ls", "-R", "-C", ref.Checksum.String())
		for i := range want {
			want[i] = strings.Join(strings.Fields(want[i]), " ")
		}
		sort.Strings(want)
		sort.Strings(lines)
		if strings.Join(lines, "\n") != strings.Join(want, "\n") {
			t.Errorf("ref %s: tree\n got %q\nwant %q", ref.Name, lines, want)
		}
		for _, f := range files {
			p, c := f[:strings.IndexByte(f, '\x00')], f[strings.IndexByte(f, '\x00')+1:]
			cs, _ := ParseChecksum(c)
			fo, err := r.OpenFile(cs)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(fo)
			fo.Close()
			if err != nil {
				t.Fatalf("%s %s: %v", ref.Name, p, err)
			}
			cat := exec.Command("ostree", "--repo="+tr.path, "cat", ref.Checksum.String(), p)
			want, err := cat.Output()
			if err != nil {
				t.Fatalf("ostree cat %s: %v", p, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("ref %s %s: content differs from ostree cat (%d vs %d bytes)", ref.Name, p, len(got), len(want))
			}
		}
	}
}

// walkTree lists a tree in `ostree ls -R -C` format (fields joined by one
// space) and collects "path\x00checksum" of its regular files.
func walkTree(t *testing.T, r *Repo, tree, meta Checksum, p string, lines, files *[]string) {
	t.Helper()
	mb, err := r.ReadMeta(ObjectName{meta, ObjDirMeta})
	if err != nil {
		t.Fatal(err)
	}
	dm, err := DecodeDirMeta(mb)
	if err != nil {
		t.Fatal(err)
	}
	*lines = append(*lines, fmt.Sprintf("d%05o %d %d 0 %s %s %s", dm.Mode&0o7777, dm.UID, dm.GID, tree, meta, p))
	tb, err := r.ReadMeta(ObjectName{tree, ObjDirTree})
	if err != nil {
		t.Fatal(err)
	}
	dt, err := DecodeDirTree(tb)
	if err != nil {
		t.Fatal(err)
	}
	child := func(name string) string {
		if p == "/" {
			return "/" + name
		}
		return p + "/" + name
	}
	for _, f := range dt.Files {
		fo, err := r.OpenFile(f.Checksum)
		if err != nil {
			t.Fatal(err)
		}
		fo.Close()
		cp := child(f.Name)
		if fo.IsSymlink() {
			*lines = append(*lines, fmt.Sprintf("l%05o %d %d 0 %s %s -> %s", fo.Mode&0o7777, fo.UID, fo.GID, f.Checksum, cp, fo.Symlink))
		} else {
			*lines = append(*lines, fmt.Sprintf("-%05o %d %d %d %s %s", fo.Mode&0o7777, fo.UID, fo.GID, fo.Size, f.Checksum, cp))
			*files = append(*files, cp+"\x00"+f.Checksum.String())
		}
	}
	for _, d := range dt.Dirs {
		walkTree(t, r, d.Tree, d.Meta, child(d.Name), lines, files)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestRepoBadInput corrupts a generated repository in the ways the design
// must survive and checks for clear errors (never a panic, never a guess).
func TestRepoBadInput(t *testing.T) {
	harness.RequireOstree(t)
	tr := buildRepo(t, "bare-user-only", "")
	r, err := OpenRepo(tr.path)
	if err != nil {
		t.Fatal(err)
	}
	main, _ := ParseChecksum(tr.commits["main"])

	t.Run("truncated ref", func(t *testing.T) {
		p := filepath.Join(tr.path, "refs/heads/a/b/c")
		old, _ := os.ReadFile(p)
		defer os.WriteFile(p, old, 0o644)
		os.WriteFile(p, old[:40], 0o644)
		_, err := r.Refs()
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), p) {
			t.Fatalf("want ErrCorrupt naming %s, got %v", p, err)
		}
		if _, oerr := runOstreeErr("--repo="+tr.path, "rev-parse", "a/b/c"); oerr == nil {
			t.Fatalf("ostree accepts the truncated ref")
		}
	})
	t.Run("symbolic ref text", func(t *testing.T) {
		p := filepath.Join(tr.path, "refs/heads/other")
		old, _ := os.ReadFile(p)
		defer os.WriteFile(p, old, 0o644)
		os.WriteFile(p, []byte("ref: refs/heads/main\n"), 0o644)
		if _, err := r.Refs(); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("want ErrCorrupt, got %v", err)
		}
		if _, oerr := runOstreeErr("--repo="+tr.path, "rev-parse", "other"); oerr == nil {
			t.Fatalf("ostree accepts a textual symbolic ref")
		}
	})
	t.Run("ignored names", func(t *testing.T) {
		p := filepath.Join(tr.path, "refs/heads/.rsync_info")
		os.WriteFile(p, []byte("garbage"), 0o644)
		defer os.Remove(p)
		refs, err := r.Refs()
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range refs {
			if strings.Contains(ref.Name, "rsync") {
				t.Fatalf("listed %s", ref.Name)
			}
		}
	})
	t.Run("alias escaping refs", func(t *testing.T) {
		p := filepath.Join(tr.path, "refs/heads/escape")
		os.Symlink("../../config", p)
		defer os.Remove(p)
		if _, err := r.Refs(); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "escape") {
			t.Fatalf("want ErrCorrupt naming the alias, got %v", err)
		}
	})
	t.Run("garbage config", func(t *testing.T) {
		bad := t.TempDir()
		os.Mkdir(filepath.Join(bad, "objects"), 0o755)
		for _, cfg := range []string{"\x00\x01garbage", "[core]\nrepo_version=1\nmode=zip\n", ""} {
			os.WriteFile(filepath.Join(bad, "config"), []byte(cfg), 0o644)
			if _, err := OpenRepo(bad); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), bad) {
				t.Errorf("config %q: want ErrCorrupt naming the repo, got %v", cfg, err)
			}
		}
		os.Remove(filepath.Join(bad, "config"))
		if _, err := OpenRepo(bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("missing config: want ErrNotFound, got %v", err)
		}
	})
	t.Run("objects subdir symlink", func(t *testing.T) {
		dir := filepath.Join(tr.path, "objects", main.String()[:2])
		moved := filepath.Join(tr.path, "moved-away")
		if err := os.Rename(dir, moved); err != nil {
			t.Fatal(err)
		}
		defer func() { os.Remove(dir); os.Rename(moved, dir) }()
		os.Symlink(moved, dir)
		err := r.ListObjects(func(ObjectName, int64) error { return nil })
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), dir) {
			t.Fatalf("want ErrCorrupt naming %s, got %v", dir, err)
		}
		if _, err := r.LoadCommit(main); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("LoadCommit through a symlinked dir: want ErrCorrupt, got %v", err)
		}
	})
	t.Run("objects dir symlink", func(t *testing.T) {
		dir := filepath.Join(tr.path, "objects")
		moved := filepath.Join(tr.path, "objects-real")
		os.Rename(dir, moved)
		defer func() { os.Remove(dir); os.Rename(moved, dir) }()
		os.Symlink("objects-real", dir)
		if _, err := OpenRepo(tr.path); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("OpenRepo: want ErrCorrupt, got %v", err)
		}
		if err := r.ListObjects(func(ObjectName, int64) error { return nil }); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ListObjects: want ErrCorrupt, got %v", err)
		}
	})
	t.Run("skipped entries", func(t *testing.T) {
		xx := filepath.Join(tr.path, "objects", main.String()[:2])
		junk := []string{filepath.Join(xx, "tmp-junk"), filepath.Join(xx, main.String()[2:]+".filez"),
			filepath.Join(xx, strings.ToUpper(main.String()[2:])+".commit"), filepath.Join(tr.path, "objects", "zz")}
		for _, j := range junk {
			os.WriteFile(j, []byte("x"), 0o644)
			defer os.Remove(j)
		}
		var n int
		stats, err := r.ScanObjects(t.Context(), func(ObjectName, int64) error { n++; return nil })
		if err != nil {
			t.Fatal(err)
		}
		if stats.Skipped != len(junk) || int(stats.Objects) != n {
			t.Fatalf("stats %+v, %d objects", stats, n)
		}
	})
	t.Run("corrupt commit", func(t *testing.T) {
		p := r.ObjectPath(ObjectName{main, ObjCommit})
		old, _ := os.ReadFile(p)
		defer os.WriteFile(p, old, 0o644)
		os.Chmod(p, 0o644)
		os.WriteFile(p, old[:len(old)/2], 0o644)
		if _, err := r.LoadCommit(main); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), p) {
			t.Fatalf("want ErrCorrupt naming %s, got %v", p, err)
		}
		var missing Checksum
		missing[0] = 0xff
		if _, err := r.LoadCommit(missing); !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing commit: want ErrNotFound, got %v", err)
		}
	})
	t.Run("fn error stops listing", func(t *testing.T) {
		stop := errors.New("stop")
		n := 0
		err := r.ListObjects(func(ObjectName, int64) error {
			n++
			if n == 3 {
				return stop
			}
			return nil
		})
		if err != stop || n != 3 {
			t.Fatalf("err %v after %d", err, n)
		}
	})
}

// TestRepoConfigMatchesOstree checks OpenRepo against the ostree command on
// generated configs: ostree opens the repository exactly when we do, and
// reads the same mode.
func TestRepoConfigMatchesOstree(t *testing.T) {
	harness.RequireOstree(t)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	repo := filepath.Join(t.TempDir(), "repo")
	runOstree(t, "init", "--repo="+repo, "--mode=bare-user-only")
	pool := []string{"[core]", "[core]", "[core]\t", "[core] x", "[core", "[other]", "[co re]",
		"repo_version=1", "repo_version=1", "repo_version = 1", "repo_version=1 ", "repo_version=2",
		"mode=bare", "mode=archive", "mode=archive-z2", "mode=bare-user-only", "mode=bare-user-only ",
		" mode = bare-user", "mode=Bare", "mode=", "mode[C]=bogus", "mode=bare-split-xattrs",
		"archive=false", "archive=true", "archive=maybe", "archive=0 ", "locking=true", "locking=1",
		"locking=nope", "# comment", "", "  ", "x", "=y", "k[de]=1", "k]=1", "k[a b]=1", "\v", "\r",
		"collection-id=org.example.X", "tombstone-commits=true", "tombstone-commits=0"}
	var cases []string
	for _, f := range []string{"bare.config", "archive.config", "full.config", "split-noeol.config", "bad-version.config", "bad-archive.config", "bad-group.config", "bad-key-before-group.config", "bad-mode-trailing-space.config"} {
		b, err := os.ReadFile(filepath.Join("testdata", "repo", f))
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, string(b))
	}
	for i := 0; i < 80; i++ {
		var lines []string
		if rng.Intn(4) != 0 {
			lines = append(lines, "[core]", "repo_version=1")
		}
		for n := rng.Intn(5); n > 0; n-- {
			lines = append(lines, pool[rng.Intn(len(pool))])
		}
		rng.Shuffle(len(lines), func(i, j int) {
			if rng.Intn(3) == 0 {
				lines[i], lines[j] = lines[j], lines[i]
			}
		})
		sep := "\n"
		if rng.Intn(5) == 0 {
			sep = "\r\n"
		}
		cases = append(cases, strings.Join(lines, sep))
	}
	for _, cfg := range cases {
		if err := os.WriteFile(filepath.Join(repo, "config"), []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := OpenRepo(repo)
		_, oerr := runOstreeErr("--repo="+repo, "refs")
		if (err == nil) != (oerr == nil) {
			t.Errorf("config %q: we say %v, ostree says %v", cfg, err, oerr)
			continue
		}
		if err != nil {
			continue
		}
		kf, _ := ParseKeyFile([]byte(cfg))
		if m, ok := kf.Value("core", "mode"); ok && !strings.Contains(m, `\`) {
			om, oerr := runOstreeErr("--repo="+repo, "config", "get", "core.mode")
			if oerr != nil {
				t.Errorf("config %q: ostree config get core.mode: %v", cfg, oerr)
				continue
			}
			if wm, _ := ParseRepoMode(strings.TrimSuffix(om, "\n")); wm != r.Mode {
				t.Errorf("config %q: mode %v, ostree reads %q", cfg, r.Mode, om)
			}
		}
	}
}
