package etcmerge_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/etcmerge"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// Parity with real ostree: for each kind of edit of the booted /etc (and
// random mixes), one copy of the booted machine is finalized by real
// `ostree admin finalize-staged`, the other gets our Merge at staging (and
// MergePaths for the edits made after staging); the staged deployment's
// etc must then be equal entry by entry (type, mode, uid, gid, content,
// symlink target, xattrs, and mtime of regular files when no edit happened
// after the copy).

const fixedTime = "2024-01-02 03:04:05 +0000"

func parityTrees() (*harness.Tree, *harness.Tree) {
	extra := map[string]harness.File{
		"usr/etc/hosts":              harness.Text("127.0.0.1 localhost\n"),
		"usr/etc/motd":               harness.Text("hello\n"),
		"usr/etc/shadow":             harness.Text("root:x\n").WithMode(0o400).Owned(0, 42),
		"usr/etc/ssh":                harness.Dir(),
		"usr/etc/ssh/sshd_config":    harness.Text("Port 22\n").WithMode(0o600),
		"usr/etc/ssh/ssh_config":     harness.Text("Host *\n"),
		"usr/etc/conf.d/a.conf":      harness.Text("a\n"),
		"usr/etc/conf.d/b.conf":      harness.Text("b\n"),
		"usr/etc/gone/x":             harness.Text("x\n"),
		"usr/etc/gone/sub/y":         harness.Text("y\n"),
		"usr/etc/tochange":           harness.Text("file\n"),
		"usr/etc/todir":              harness.Text("file\n"),
		"usr/etc/both":               harness.Text("old default\n"),
		"usr/etc/localtime":          harness.Symlink("../usr/share/zoneinfo/UTC"),
		"usr/etc/retarget":           harness.Symlink("a"),
		"usr/etc/pam.d/login":        harness.Text("auth\n"),
		"usr/etc/modedir/f":          harness.Text("f\n"),
		"usr/etc/modedir2":           harness.Dir(),
		"usr/etc/conflict":           harness.Text("file now\n"),
		"usr/etc/newcommit-changes":  harness.Text("v1\n"),
		"usr/etc/deep/er/est/leaf":   harness.Text("leaf\n"),
		"usr/etc/deep/er/other/file": harness.Text("o\n"),
	}
	t1 := harness.NewTree(harness.TreeOptions{Seed: 1, Etc: &harness.Shape{}, Usr: &harness.Shape{}, Extra: extra})
	t2 := t1.Clone()
	t2.Set("usr/etc/both", harness.Text("new default\n"))
	t2.Set("usr/etc/fromnew", harness.Text("only in the new commit\n"))
	t2.Remove("usr/etc/pam.d/login")
	t2.Set("usr/etc/ssh", harness.Dir().WithMode(0o700))
	t2.Set("usr/etc/newcommit-changes", harness.Text("v2\n"))
	t2.Remove("usr/etc/deep/er/est")
	t2.Set("usr/etc/deep/er", harness.Dir().WithMode(0o700)) // a grandparent ostree leaves alone
	return t1, t2
}

// editKinds are the kinds of edit the issue lists, as shell run in the
// booted namespace.
var editKinds = []struct{ name, script string }{
	{"content", `echo more >> /etc/hosts`},
	{"chmod", `chmod 600 /etc/motd`},
	{"chown", `chown 1000:1000 /etc/ssh/ssh_config`},
	{"add-file", `echo new > /etc/newfile`},
	{"add-nested", `mkdir -p /etc/newdir/sub && echo deep > /etc/newdir/sub/deep.conf && chmod 750 /etc/newdir && ln -s sub/deep.conf /etc/newdir/link && ln -s /nonexistent /etc/newdir/dangling && ln -s loop2 /etc/newdir/loop1 && ln -s loop1 /etc/newdir/loop2`},
	{"remove-file", `rm /etc/conf.d/b.conf`},
	{"remove-dir", `rm -r /etc/gone`},
	{"file-to-symlink", `rm /etc/tochange && ln -s hosts /etc/tochange`},
	{"retarget-symlink", `ln -sfn b /etc/retarget`},
	{"add-fifo", `mkfifo /etc/pam.d/fifo`},
	{"dir-mode", `chmod 700 /etc/modedir`},
	{"dir-mode-and-child", `chmod 711 /etc/modedir2 && echo x > /etc/modedir2/added`},
	{"xattr-on-modified", `echo y >> /etc/shadow && python3 -c "import os; os.setxattr('/etc/shadow', 'user.label', b'secret')"`},
	{"file-to-dir", `rm /etc/todir && mkdir /etc/todir && echo in > /etc/todir/inside`},
	{"also-in-new-commit", `echo local > /etc/both && echo mine > /etc/newcommit-changes && echo 'Port 2222' > /etc/ssh/sshd_config`},
	{"parent-missing-in-new", `echo changed > /etc/deep/er/est/leaf`},
	{"revert", `echo tmp > /etc/motd && echo hello > /etc/motd`},
	{"odd-names", `echo nl > "/etc/name
with newline" && echo bin > "$(printf '/etc/bad\377utf8')"`},
}

type parityEnv struct {
	base *harness.BootedHost
	// fs is RealFS with the merge's version-dependent choice of the
	// ostree that the booted host runs (the oracle).
	fs etcmerge.FS
}

func newParityEnv(t *testing.T) *parityEnv {
	harness.RequireRoot(t)
	t1, t2 := parityTrees()
	s := harness.NewSysroot(t, harness.Options{})
	s.CommitWith("testos/main", t1, harness.CommitOptions{Timestamp: fixedTime})
	d := s.Deploy("testos", "testos/main")
	s.CommitWith("testos/main", t2, harness.CommitOptions{Timestamp: "2024-01-03 03:04:05 +0000"})
	e := &parityEnv{base: s.Boot(t, d, harness.BootOptions{})}
	e.fs = oracleFS(t, e.base)
	return e
}

// oracleChoices are the version-dependent choices of the ostree that runs
// in the booted host (whichever oracle the harness binds).
func oracleChoices(t *testing.T, b *harness.BootedHost) ostree.Choices {
	t.Helper()
	v, err := ostree.ParseVersion([]byte(b.MustShell("ostree --version")))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("oracle: ostree %s", v.Raw)
	return ostree.ChoicesFor(v)
}

func oracleFS(t *testing.T, b *harness.BootedHost) etcmerge.FS {
	fs := etcmerge.RealFS()
	fs.SkipSpecialInDirs = oracleChoices(t, b).EtcMergeSkipsSpecialInDirs
	return fs
}

// run forks the booted machine, applies before, stages, forks again; the
// first fork is finalized by ostree, the second gets Merge then (after the
// same after edits) MergePaths over what the baseline finds changed.
// It returns both staged etcs' snapshots, or the errors.
//
//lint:ignore ST1008 the errors are results compared with each other (ostree's and ours), not a failure of run
func (e *parityEnv) run(t *testing.T, before, after string) (ostreeErr, ourErr error, theirs, ours map[string]etcmerge.Node) {
	return e.runWith(t, e.fs, before, after)
}

//lint:ignore ST1008 as run: the errors are results compared with each other
func (e *parityEnv) runWith(t *testing.T, fs etcmerge.FS, before, after string) (ostreeErr, ourErr error, theirs, ours map[string]etcmerge.Node) {
	ctx := context.Background()
	fork := e.base.Copy(t)
	if before != "" {
		fork.MustShell(before)
	}
	staged := fork.Stage("testos/main")
	mine := fork.Copy(t)
	myStaged := mine.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial)
	orig, modified, newEtc, defaults := mine.Deployment.UsrEtcDir(), mine.EtcDir(), myStaged+"/etc", myStaged+"/usr/etc"

	rep, ourErr := etcmerge.Merge(ctx, fs, orig, modified, newEtc)
	var bl *etcmerge.Baseline
	if ourErr == nil {
		var err error
		if bl, err = etcmerge.Scan(ctx, modified); err != nil {
			t.Fatal(err)
		}
	}
	if after != "" {
		fork.MustShell(after)
		mine.MustShell(after)
		if ourErr == nil {
			changed, err := bl.Changed(ctx, modified)
			if err != nil {
				t.Fatal(err)
			}
			_, ourErr = etcmerge.MergePaths(ctx, fs, orig, modified, newEtc, defaults, changed)
		}
	}
	res, ostreeErr := fork.FinalizeStaged(ctx)
	if ostreeErr == nil && !res.Merged {
		t.Fatalf("ostree did not merge:\n%s\n%s", res.Stdout, res.Stderr)
	}
	if ostreeErr == nil && ourErr == nil && after == "" {
		if got := fmt.Sprintf("%d/%d/%d", rep.Modified, rep.Removed, rep.Added); got != fmt.Sprintf("%d/%d/%d", res.Modified, res.Removed, res.Added) {
			t.Errorf("counts: ours %s, ostree's %d/%d/%d", got, res.Modified, res.Removed, res.Added)
		}
	}
	if ostreeErr != nil || ourErr != nil {
		return ostreeErr, ourErr, nil, nil
	}
	opts := etcmerge.NewSnapshotOpts(after != "")
	theirs = etcmerge.Snapshot(t, staged.EtcDir(), opts)
	ours = etcmerge.Snapshot(t, newEtc, opts)
	// finalize_deployment unlinks etc/.updated after the merge, with or
	// without one; it is not part of the merge.
	delete(theirs, ".updated")
	delete(ours, ".updated")
	if _, ok := theirs["hosts"]; !ok || len(theirs) < 20 {
		t.Fatalf("ostree's staged etc looks empty (%d entries): wrong directory?", len(theirs))
	}
	return nil, nil, theirs, ours
}

func requireSame(t *testing.T, theirs, ours map[string]etcmerge.Node) {
	t.Helper()
	if d := etcmerge.DiffSnapshots(theirs, ours); len(d) > 0 {
		t.Fatalf("ostree's etc (first) and ours (second) differ:\n%s", strings.Join(d, "\n"))
	}
}

func TestParityEachKind(t *testing.T) {
	e := newParityEnv(t)
	for _, k := range editKinds {
		for _, when := range []string{"before", "after"} {
			t.Run(k.name+"/"+when, func(t *testing.T) {
				before, after := k.script, ""
				if when == "after" {
					before, after = "", k.script
				}
				oe, we, theirs, ours := e.run(t, before, after)
				if oe != nil || we != nil {
					t.Fatalf("ostree: %v\nours: %v", oe, we)
				}
				requireSame(t, theirs, ours)
			})
		}
	}
}

// A file that newly defaults to a directory: ostree's finalization fails,
// and so does our merge, with ErrNewDefaultDir.
func TestParityNewDefaultDir(t *testing.T) {
	harness.RequireRoot(t)
	t1, t2 := parityTrees()
	t2.Remove("usr/etc/conflict")
	t2.Set("usr/etc/conflict/inner", harness.Text("dir now\n"))
	s := harness.NewSysroot(t, harness.Options{})
	s.CommitWith("testos/main", t1, harness.CommitOptions{Timestamp: fixedTime})
	d := s.Deploy("testos", "testos/main")
	s.CommitWith("testos/main", t2, harness.CommitOptions{Timestamp: "2024-01-03 03:04:05 +0000"})
	e := &parityEnv{base: s.Boot(t, d, harness.BootOptions{})}
	oe, we, _, _ := e.run(t, `echo mine > /etc/conflict`, "")
	if oe == nil || !strings.Contains(oe.Error(), "newly defaults to directory") {
		t.Fatalf("ostree should fail with 'newly defaults to directory', got %v", oe)
	}
	if !errors.Is(we, etcmerge.ErrNewDefaultDir) {
		t.Fatalf("ours: want ErrNewDefaultDir, got %v", we)
	}
}

// Random mixes of the kinds, split at random between before and after
// staging.
func TestParityRandomMix(t *testing.T) {
	e := newParityEnv(t)
	seed := time.Now().UnixNano()
	if s := os.Getenv("FINALIZE_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("seed %d (rerun with FINALIZE_SEED=%d)", seed, seed)
	r := rand.New(rand.NewSource(seed))
	for i := 0; i < 3; i++ {
		var before, after []string
		var names []string
		for _, j := range r.Perm(len(editKinds))[:4+r.Intn(6)] {
			k := editKinds[j]
			names = append(names, k.name)
			if r.Intn(2) == 0 {
				before = append(before, k.script)
			} else {
				after = append(after, k.script)
			}
		}
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Logf("kinds %v", names)
			oe, we, theirs, ours := e.run(t, strings.Join(before, "\n"), strings.Join(after, "\n"))
			if oe != nil || we != nil {
				t.Fatalf("ostree: %v\nours: %v", oe, we)
			}
			requireSame(t, theirs, ours)
		})
	}
}

// A fifo or a device inside a directory that the merge copies whole
// (added, or replacing a file), before and after staging: ostree 2022.7
// fails its finalization on libglnx's "Cannot copy
// non-regular/non-symlink file" and our merge fails with ErrNotCopyable;
// from 2024.2 (ostree.Choices.EtcMergeSkipsSpecialInDirs) copy_dir_recurse
// skips them and the etcs must be equal. Our merge with the other
// choice must disagree with the oracle: the test tells the versions apart.
func TestParitySpecialInCopiedDir(t *testing.T) {
	harness.ForEachOracle(t, testParitySpecialInCopiedDir)
}

func testParitySpecialInCopiedDir(t *testing.T) {
	e := newParityEnv(t)
	skip := e.fs.SkipSpecialInDirs
	const script = `mkdir -p /etc/fdir/sub && echo f > /etc/fdir/f && mkfifo /etc/fdir/sub/p && rm /etc/todir && mkdir /etc/todir && mknod /etc/todir/null c 1 3 && echo in > /etc/todir/inside`
	for _, when := range []string{"before", "after"} {
		t.Run(when, func(t *testing.T) {
			before, after := script, ""
			if when == "after" {
				before, after = "", script
			}
			oe, we, theirs, ours := e.run(t, before, after)
			if !skip {
				if oe == nil || !strings.Contains(oe.Error(), "Cannot copy non-regular/non-symlink file") {
					t.Fatalf("ostree should fail copying the fifo, got %v", oe)
				}
				if !errors.Is(we, etcmerge.ErrNotCopyable) {
					t.Fatalf("ours: want ErrNotCopyable, got %v", we)
				}
			} else {
				if oe != nil || we != nil {
					t.Fatalf("ostree: %v\nours: %v", oe, we)
				}
				requireSame(t, theirs, ours)
				for _, p := range []string{"fdir/f", "todir/inside"} {
					if _, ok := theirs[p]; !ok {
						t.Fatalf("ostree did not copy %s", p)
					}
				}
			}
			wrong := e.fs
			wrong.SkipSpecialInDirs = !skip
			oe, we, theirs, ours = e.runWith(t, wrong, before, after)
			if (oe == nil) == (we == nil) && (oe != nil || len(etcmerge.DiffSnapshots(theirs, ours)) == 0) {
				t.Fatalf("the wrong choice (skip=%v) agrees with ostree: ostree %v, ours %v", !skip, oe, we)
			}
		})
	}
}
