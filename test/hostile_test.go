package test

// Longer than 500 lines on purpose: one table of hostile inputs a test,
// sharing the fixture that feeds them.

// Hostile input (issue 7): a state directory that is a symlink or writable
// by others, an oversized staged state, a corrupt or truncated runtime
// store and persisted plan, a plan whose file suffix walks out of the
// repository, an objects/XX directory that is a symlink out of the
// repository, and a booted /etc with device nodes, sockets, symlink loops,
// names with newlines or invalid UTF-8 and 4096-byte paths. Each time: a
// clear error (exit 1, one line) where we cannot do the work, nothing
// outside the repository's objects ever deleted, nothing in the booted
// /etc ever written; where ostree copes, the result is ostree's own.
// (Garbage, truncated and bit-flipped staged states are in
// etc_bad_input_test.go.)

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/treecmp"
)

// unsafeStateDirs makes <run>/ostree-prefinalize unsafe in each way and
// returns the directory where anything created "in" it would land.
var unsafeStateDirs = []struct {
	name string
	mk   func(t *testing.T, run string) string
}{
	{"symlink", func(t *testing.T, run string) string {
		target := filepath.Join(run, "elsewhere")
		if err := os.Mkdir(target, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("elsewhere", filepath.Join(run, "ostree-prefinalize")); err != nil {
			t.Fatal(err)
		}
		return target
	}},
	{"world-writable", func(t *testing.T, run string) string {
		d := filepath.Join(run, "ostree-prefinalize")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
		return d
	}},
	{"group-writable", func(t *testing.T, run string) string {
		d := filepath.Join(run, "ostree-prefinalize")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o770); err != nil {
			t.Fatal(err)
		}
		return d
	}},
}

func dirNames(t *testing.T, d string) []string {
	t.Helper()
	ents, err := os.ReadDir(d)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// Every lifecycle step refuses an unsafe state directory with
// store.ErrUnsafe before creating anything in it (lock files, the backup
// of ostree's staged state, the store). Needs no booted host: the check
// comes first.
func TestHostileStateDirInProcess(t *testing.T) {
	steps := map[string]func(cfg lifecycle.Config) error{
		"stage": func(cfg lifecycle.Config) error { _, err := lifecycle.Stage(context.Background(), cfg); return err },
		"refresh": func(cfg lifecycle.Config) error {
			_, err := lifecycle.Refresh(context.Background(), cfg, []string{"hosts"})
			return err
		},
		"pre":          func(cfg lifecycle.Config) error { _, err := lifecycle.Pre(context.Background(), cfg); return err },
		"mark-pending": func(cfg lifecycle.Config) error { return lifecycle.MarkPending(cfg, []string{"hosts"}) },
		"watch": func(cfg lifecycle.Config) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return lifecycle.Watch(ctx, cfg, lifecycle.WatchOptions{})
		},
	}
	for _, u := range unsafeStateDirs {
		for name, step := range steps {
			t.Run(u.name+"/"+name, func(t *testing.T) {
				run := t.TempDir()
				where := u.mk(t, run)
				err := step(lifecycle.Config{Sysroot: t.TempDir(), RunDir: run})
				if !errors.Is(err, store.ErrUnsafe) {
					t.Fatalf("%s: %v, want store.ErrUnsafe", name, err)
				}
				if got := dirNames(t, where); len(got) > 0 {
					t.Fatalf("%s created %v in the unsafe state directory", name, got)
				}
			})
		}
	}
}

// hostileEnv is a booted machine with an update staged by ostree (small
// trees: these cases are about refusing, not volume).
func newHostileEnv(t *testing.T, configure func(o *harness.BootOptions)) *faultEtcEnv {
	return newFaultEtcEnv(t, harness.Shape{Files: 30, Dirs: 5, Depth: 2, MinSize: 16, MaxSize: 300, Symlinks: 3}, configure)
}

// The same through the command line in the booted namespace: exit 1 with
// one error line naming the directory, nothing created in or through it,
// the staged state and both etcs untouched.
func TestHostileStateDirCLI(t *testing.T) {
	f := newHostileEnv(t, nil)
	for _, u := range unsafeStateDirs {
		t.Run(u.name, func(t *testing.T) {
			c := f.b.Copy(t)
			where := u.mk(t, c.RunDir)
			orig := stagedBytes(t, c)
			booted := bootedManifest(t, c)
			stagedEtc := etcManifest(t, f.staged.EtcDir(), true)
			for _, argv := range [][]string{{"stage"}, {"finalize", "--pre"}, {"watch"}} {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				_, stderr, err := c.Run(ctx, append([]string{"ostree-prefinalize"}, argv...)...)
				cancel()
				requireCleanError(t, strings.Join(argv, " "), stderr, err)
				if !strings.Contains(stderr, "unsafe") {
					t.Fatalf("%v: the error does not say the location is unsafe:\n%s", argv, stderr)
				}
				if got := dirNames(t, where); len(got) > 0 {
					t.Fatalf("%v created %v in the unsafe state directory", argv, got)
				}
			}
			if string(stagedBytes(t, c)) != string(orig) {
				t.Fatal("the staged state was rewritten")
			}
			requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, c))
			requireSameManifest(t, "the staged etc was written", stagedEtc, etcManifest(t, filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc"), true))
			// status still answers (and says why).
			if out, stderr, err := c.Run(f.ctx, "ostree-prefinalize", "status"); err != nil {
				t.Logf("status: %v\n%s%s", err, out, stderr)
			}
		})
	}
}

// An oversized /run/ostree/staged-deployment (past ostree's metadata
// size cap): a clear error naming it, nothing written anywhere.
func TestHostileStagedOversized(t *testing.T) {
	f := newHostileEnv(t, nil)
	c := f.b.Copy(t)
	orig := stagedBytes(t, c)
	big := make([]byte, ostree.MaxMetadataSize+1)
	copy(big, orig)
	if err := os.WriteFile(c.StagedPath(), big, 0o644); err != nil {
		t.Fatal(err)
	}
	booted := bootedManifest(t, c)
	stagedEtc := etcManifest(t, filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc"), true)
	for _, argv := range [][]string{{"stage"}, {"finalize", "--pre"}} {
		_, stderr, err := c.Run(f.ctx, append([]string{"ostree-prefinalize"}, argv...)...)
		requireCleanError(t, strings.Join(argv, " "), stderr, err, "staged-deployment")
	}
	// status answers, naming what it cannot read.
	if out := c.MustRun("ostree-prefinalize", "status"); !strings.Contains(out, "staged state unreadable") || !strings.Contains(out, "staged-deployment") {
		t.Fatalf("status does not say the staged state is unreadable:\n%s", out)
	}
	if b, _ := os.ReadFile(c.StagedPath()); len(b) != len(big) {
		t.Fatal("the oversized staged state was rewritten")
	}
	requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, c))
	requireSameManifest(t, "the staged etc was written", stagedEtc, etcManifest(t, filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc"), true))
}

// A corrupt or truncated runtime store while our takeover is on disk:
// finalize --pre cannot trust it, falls back through the backup copy of
// ostree's staged state (restored byte for byte) and resets the staged
// etc, and ostree's own merge gives its own result. stage afterwards
// starts over.
func TestHostileRuntimeStore(t *testing.T) {
	f := newHostileEnv(t, nil)
	after := func(etc string) { faultEdit(t, etc, 2) }
	want := f.oracle(t, after)
	cases := map[string]func(b []byte) []byte{
		"garbage":   func(b []byte) []byte { return []byte(strings.Repeat("not a bbolt file\n", 300)) },
		"truncated": func(b []byte) []byte { return b[:len(b)/3] },
		"zeroed-meta": func(b []byte) []byte {
			b = append([]byte(nil), b...)
			for i := 0; i < 8192 && i < len(b); i++ {
				b[i] = 0
			}
			return b
		},
	}
	for name, corrupt := range cases {
		t.Run(name, func(t *testing.T) {
			c := f.b.Copy(t)
			orig := stagedBytes(t, c)
			c.MustRun("ostree-prefinalize", "stage")
			if string(stagedBytes(t, c)) == string(orig) {
				t.Fatal("stage did not take over: the case proves nothing")
			}
			after(c.EtcDir())
			db := store.RuntimePath(c.RunDir)
			b, err := os.ReadFile(db)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(db, corrupt(b), 0o600); err != nil {
				t.Fatal(err)
			}
			booted := bootedManifest(t, c)
			out := c.MustRun("ostree-prefinalize", "status", "--json")
			if !strings.Contains(out, "unreadable") {
				t.Fatalf("status does not say the store is unreadable:\n%s", out)
			}
			st := f.finishAndCompare(t, c, want, name)
			if st.Etc.Takeover {
				t.Fatalf("status after the fallback: %+v", st.Etc)
			}
			t.Logf("%s: finalize --pre fell back: %s", name, st.Etc.Reason)
			requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, c))
		})
	}
	// Both copies of ostree's staged state lost (store unreadable, backup
	// gone) while our takeover is on disk: ostree, seeing no merge
	// deployment, would not merge, and a reset etc would lose the booted
	// /etc's changes. stage and finalize --pre lock finalization instead,
	// say why, and leave both etcs alone.
	t.Run("no-backup", func(t *testing.T) {
		c := f.b.Copy(t)
		orig := stagedBytes(t, c)
		c.MustRun("ostree-prefinalize", "stage")
		took := stagedBytes(t, c)
		if string(took) == string(orig) {
			t.Fatal("stage did not take over: the case proves nothing")
		}
		after(c.EtcDir())
		if err := os.WriteFile(store.RuntimePath(c.RunDir), []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(c.RunDir, "ostree-prefinalize", "orig-staged-deployment")); err != nil {
			t.Fatal(err)
		}
		booted := bootedManifest(t, c)
		stagedEtc := etcManifest(t, filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc"), true)
		locked := filepath.Join(c.RunDir, "ostree", "staged-deployment-locked")
		_, stderr, err := c.Run(f.ctx, "ostree-prefinalize", "stage")
		requireCleanError(t, "stage", stderr, err, "finalization locked")
		if !strings.Contains(statusOf(t, c).Etc.Reason, "unreadable") {
			t.Fatal("status does not say why")
		}
		if _, err := os.Stat(locked); err != nil {
			t.Fatalf("stage did not lock finalization: %v", err)
		}
		if err := os.Remove(locked); err != nil {
			t.Fatal(err)
		}
		// It exits 1: it could not fall back.
		out, stderr, err := c.Run(f.ctx, "ostree-prefinalize", "finalize", "--pre", "--json")
		if err == nil || !strings.Contains(out, "finalization locked") {
			t.Fatalf("finalize --pre: %v\n%s\n%s", err, out, stderr)
		}
		if _, err := os.Stat(locked); err != nil {
			t.Fatalf("finalize --pre did not lock finalization: %v", err)
		}
		if string(stagedBytes(t, c)) != string(took) {
			t.Fatal("the staged state was rewritten")
		}
		requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, c))
		requireSameManifest(t, "the staged etc was written", stagedEtc, etcManifest(t, filepath.Join(c.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc"), true))
		// ostree honours the lock: nothing finalized, the update waits.
		if _, err := c.FinalizeStaged(f.ctx); err != nil {
			t.Logf("finalize-staged with the lock: %v", err)
		}
		if _, err := os.Stat(c.StagedPath()); err != nil {
			t.Fatalf("ostree finalized despite the lock: %v", err)
		}
	})

	// stage on a corrupt store resets it and starts over.
	c := f.b.Copy(t)
	c.MustRun("ostree-prefinalize", "stage")
	if err := os.WriteFile(store.RuntimePath(c.RunDir), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.MustRun("ostree-prefinalize", "stage")
	if st := statusOf(t, c); st.Etc.State != "precomputed" || !st.Etc.Takeover {
		t.Fatalf("stage after a corrupt store: %+v", st.Etc)
	}
}

// writeRawPlan persists body as the plan with a valid body checksum, as
// if our own finalize --post had written it: only the plan decoder stands
// between it and a deletion.
func writeRawPlan(t *testing.T, sysroot, rootsHash string, body []byte) {
	t.Helper()
	if err := store.WritePlan(sysroot, store.PersistedPlan{Plan: body, RootsHash: rootsHash, Staged: store.StagedID{OSName: "testos"}, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

// A hostile persisted plan: corrupt or truncated cleanup.db, a plan body
// that is not ours, a file suffix that walks out of the repository, and an
// objects/XX directory that is a symlink to a directory outside the
// repository holding a file named like a planned object. cleanup refuses
// or skips; nothing outside the repository's objects is ever deleted, and
// nothing that is not planned inside it.
func TestHostilePersistedPlan(t *testing.T) {
	fx := newCleanupFixture(t, 200, nil)
	sysroot := fx.e.s.Path
	repo := fx.e.s.Repo
	good, err := store.ReadPlan(sysroot)
	if err != nil {
		t.Fatal(err)
	}
	goodPlan, err := os.ReadFile(store.PlanPath(sysroot))
	if err != nil {
		t.Fatal(err)
	}
	// A decoy outside the repository, next to it, holding files named like
	// every planned object: nothing may ever delete them.
	decoy := filepath.Join(sysroot, "decoy")
	entries := fx.plan.Entries()
	for _, e := range entries {
		p := filepath.Join(decoy, strings.TrimPrefix(planObjectPath(repo, fx.plan, e), filepath.Join(repo, "objects")+"/"))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("decoy"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	outside := func() harness.Manifest {
		t.Helper()
		m, err := harness.TreeManifest(sysroot, harness.ManifestOptions{MTime: true,
			Skip: func(rel string) bool { return rel == "ostree/repo/objects" || rel == "ostree/prefinalize" }})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	run := func(t *testing.T, what string, wantErr bool, mention ...string) {
		t.Helper()
		objs := parityObjects(t, repo)
		out0 := outside()
		_, stderr, err := fx.b.Run(fx.e.ctx, "ostree-prefinalize", "cleanup", "--foreground")
		if wantErr {
			requireCleanError(t, what, stderr, err, mention...)
		} else if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, stderr)
		}
		requireSameManifest(t, what+": cleanup changed something outside the repository's objects", out0, outside())
		if wantErr {
			if got := parityObjects(t, repo); len(setMinus(objs, got))+len(setMinus(got, objs)) > 0 {
				t.Fatalf("%s: objects changed although cleanup refused", what)
			}
		}
	}
	restore := func() {
		if err := os.WriteFile(store.PlanPath(sysroot), goodPlan, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("corrupt", func(t *testing.T) {
		if err := os.WriteFile(store.PlanPath(sysroot), []byte(strings.Repeat("garbage ", 1000)), 0o600); err != nil {
			t.Fatal(err)
		}
		run(t, "cleanup of a garbage plan", true, "cleanup.db")
		restore()
	})
	t.Run("truncated", func(t *testing.T) {
		if err := os.WriteFile(store.PlanPath(sysroot), goodPlan[:len(goodPlan)/2], 0o600); err != nil {
			t.Fatal(err)
		}
		run(t, "cleanup of a truncated plan", true, "cleanup.db")
		restore()
	})
	t.Run("body-bitflip", func(t *testing.T) {
		body := append([]byte(nil), good.Plan...)
		body[len(body)-9] = 99 // the type of the last entry
		writeRawPlan(t, sysroot, good.RootsHash, body)
		run(t, "cleanup of a plan not in canonical form", true)
		restore()
	})
	t.Run("suffix-traversal", func(t *testing.T) {
		// The plan format names the file suffix of content objects; a
		// crafted one must not become a path out of objects/.
		for _, suffix := range []string{"../../../../decoy/x", "file/../../../decoy", "/etc/passwd", "file\x00"} {
			var b []byte
			b = append(b, "OPFPLAN1"...)
			b = append(b, byte(len(suffix)))
			b = append(b, suffix...)
			b = binary.BigEndian.AppendUint32(b, 0)
			b = binary.BigEndian.AppendUint64(b, uint64(len(entries)))
			for _, e := range entries {
				b = append(b, e.Checksum[:]...)
				b = append(b, byte(e.Type))
				b = binary.BigEndian.AppendUint64(b, e.Size)
			}
			if _, err := prune.UnmarshalPlan(b); !errors.Is(err, prune.ErrBadPlan) {
				t.Fatalf("UnmarshalPlan with suffix %q: %v, want ErrBadPlan", suffix, err)
			}
			writeRawPlan(t, sysroot, good.RootsHash, b)
			run(t, "cleanup with suffix "+suffix, true)
		}
		restore()
	})
	t.Run("objects-dir-symlink", func(t *testing.T) {
		// Pick a planned object, move its objects/XX out of the repository
		// into the decoy and put a symlink in its place.
		e := entries[0]
		obj := planObjectPath(repo, fx.plan, e)
		xx := filepath.Dir(obj)
		moved := filepath.Join(sysroot, "moved-"+filepath.Base(xx))
		if err := os.Rename(xx, moved); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(moved, xx); err != nil {
			t.Fatal(err)
		}
		victim := filepath.Join(moved, filepath.Base(obj))
		if _, err := os.Lstat(victim); err != nil {
			t.Fatal(err)
		}
		objs := parityObjects(t, repo)
		_, stderr, err := fx.b.Run(fx.e.ctx, "ostree-prefinalize", "cleanup", "--foreground")
		if err != nil {
			requireCleanError(t, "cleanup through a symlinked objects directory", stderr, err)
		}
		if _, err := os.Lstat(victim); err != nil {
			t.Fatalf("the file behind the symlinked objects directory was deleted: %v", err)
		}
		// Whatever cleanup deleted was planned.
		planned := map[string]bool{}
		for _, e := range entries {
			planned[strings.TrimPrefix(planObjectPath(repo, fx.plan, e), filepath.Join(repo, "objects")+"/")] = true
		}
		for _, o := range setMinus(objs, parityObjects(t, repo)) {
			if !planned[o[:2]+"/"+o[2:]] {
				t.Fatalf("cleanup deleted %s, which was not planned", o)
			}
		}
		t.Logf("cleanup with a symlinked objects/%s: %v", filepath.Base(xx), err)
	})
	// The decoy is intact (every file named like a planned object).
	for _, e := range entries {
		p := filepath.Join(decoy, strings.TrimPrefix(planObjectPath(repo, fx.plan, e), filepath.Join(repo, "objects")+"/"))
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("decoy %s: %v", p, err)
		}
	}
}

// mkLong creates, below dir and without ever passing a long path to the
// kernel, nested directories and a file whose path relative to dir is
// exactly n bytes; it returns that relative path.
func mkLong(t *testing.T, dir, tag string, n int) string {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var rel []string
	used := 0
	for n-used > 255 {
		name := tag + strings.Repeat("d", 250-len(tag))
		if err := unix.Mkdirat(fd, name, 0o755); err != nil && err != unix.EEXIST {
			t.Fatal(err)
		}
		nfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		fd = nfd
		rel = append(rel, name)
		used += 251
	}
	last := tag + strings.Repeat("f", n-used-len(tag))
	ffd, err := unix.Openat(fd, last, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(ffd, []byte("deep\n"))
	unix.Close(ffd)
	unix.Close(fd)
	return strings.Join(append(rel, last), "/")
}

// hostileEtc adds to an etc what a hostile or careless admin can put
// there: device nodes and sockets (at the top and in an existing
// directory: ostree ignores them), symlink loops, names with a newline and
// with invalid UTF-8, and a file at a 4095-byte absolute path (/etc/...,
// PATH_MAX with its NUL).
func hostileEtc(t *testing.T, etc, tag string, long bool) {
	t.Helper()
	sub := ""
	ents, _ := os.ReadDir(etc)
	for _, e := range ents {
		// A directory of the defaults (not one added locally: ostree
		// copies an added directory whole and fails on a device in it).
		if e.IsDir() && strings.HasSuffix(e.Name(), ".d") && !strings.HasPrefix(e.Name(), "added-") {
			sub = e.Name()
			break
		}
	}
	if sub == "" {
		t.Fatalf("no directory of the defaults in %s", etc)
	}
	must(t, unix.Mknod(filepath.Join(etc, tag+"null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(t, unix.Mknod(filepath.Join(etc, tag+"sock"), unix.S_IFSOCK|0o644, 0))
	if sub != "" {
		must(t, unix.Mknod(filepath.Join(etc, sub, tag+"blk"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))))
		must(t, unix.Mknod(filepath.Join(etc, sub, tag+"sock"), unix.S_IFSOCK|0o644, 0))
	}
	must(t, os.Symlink(tag+"loop-b", filepath.Join(etc, tag+"loop-a")))
	must(t, os.Symlink(tag+"loop-a", filepath.Join(etc, tag+"loop-b")))
	must(t, os.WriteFile(filepath.Join(etc, tag+"new\nline.conf"), []byte("newline\n"), 0o644))
	must(t, os.Mkdir(filepath.Join(etc, tag+"dir\nwith\nnewlines"), 0o755))
	must(t, os.WriteFile(filepath.Join(etc, tag+"dir\nwith\nnewlines", "f"), []byte("f\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(etc, tag+"bad-utf8-\xff\xfe\xc3("), []byte("latin1\n"), 0o644))
	if long {
		mkLong(t, etc, tag+"long", 4095-len("/etc/"))
	}
}

// fdManifest describes every entry below root (type, mode, owner, content
// hash, link target, inode flags, with mtime the mtime of regular files)
// with the shared comparator, which walks with directory fds, so that paths
// longer than PATH_MAX from the host's side are described too.
func fdManifest(t *testing.T, root string, mtime bool) treecmp.Manifest {
	t.Helper()
	m, err := treecmp.Scan(root, treecmp.Options{FileMTime: mtime})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var requireSameFD = treecmp.Require

// A hostile /etc through stage, the watcher and finalize --pre: ostree
// skips devices and sockets and copies everything else, names and depth
// included; so do we, exactly. Where ostree cannot cope, we must end as
// ostree alone ends.
func TestHostileEtcEntries(t *testing.T) {
	t.Run("entries", func(t *testing.T) { testHostileEtc(t, false) })
	// ostree 2022.7 cannot diff a 4095-byte /etc path (ENAMETOOLONG from
	// its GFile query): its finalization fails, and so must ours, with no
	// takeover that would let it "succeed".
	t.Run("4095-byte-path", func(t *testing.T) { testHostileEtc(t, true) })
}

func testHostileEtc(t *testing.T, long bool) {
	n := newNotifyListener(t)
	f := newHostileEnv(t, func(o *harness.BootOptions) {
		o.Binds = append(o.Binds, harness.Bind{Src: n.dir, Dst: notifyDst})
		o.Env = append(o.Env, "NOTIFY_SOCKET="+notifyDst+"/sock")
	})
	ours := f.b.Copy(t)
	theirs := f.b.Copy(t)
	hostileEtc(t, ours.EtcDir(), "s-", long)
	hostileEtc(t, theirs.EtcDir(), "s-", long)
	newEtc := filepath.Join(ours.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc")

	booted := fdManifest(t, ours.EtcDir(), true)
	out, stderr, err := ours.Run(f.ctx, "ostree-prefinalize", "stage", "--json")
	t.Logf("stage: %v\n%s%s", err, out, stderr)
	if err != nil {
		requireCleanError(t, "stage", stderr, err)
	}
	requireSameFD(t, "stage wrote the booted /etc", booted, fdManifest(t, ours.EtcDir(), true))

	// The watcher sees the same kinds of entries appear.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mark := n.mark()
	p, err := ours.Start(ctx, "ostree-prefinalize", "watch")
	if err != nil {
		t.Fatal(err)
	}
	pollUntil(t, "READY=1 from the watcher", 60*time.Second, func() (bool, string) {
		for _, m := range n.since(mark) {
			if m == "READY=1" {
				return true, ""
			}
		}
		select {
		case <-p.Done():
			_, se, err := p.Wait()
			t.Fatalf("watcher exited: %v\n%s", err, se)
		default:
		}
		return false, "waiting"
	})
	hostileEtc(t, ours.EtcDir(), "w-", long)
	hostileEtc(t, theirs.EtcDir(), "w-", long)
	pollUntil(t, "the watcher applied the hostile entries", 120*time.Second, func() (bool, string) {
		st := statusOf(t, ours)
		_, err := os.Lstat(filepath.Join(newEtc, "w-new\nline.conf"))
		return err == nil && st.Etc.PendingPaths == 0 || st.Etc.State == "fallback", string(st.Etc.State) + " " + st.Etc.Reason
	})
	must(t, p.Signal(syscall.SIGTERM))
	if _, se, err := p.Wait(); err != nil {
		t.Fatalf("watcher after SIGTERM: %v\n%s", err, se)
	}
	// And finalize --pre finds entries that appeared behind everyone's back.
	hostileEtc(t, ours.EtcDir(), "p-", long)
	hostileEtc(t, theirs.EtcDir(), "p-", long)
	booted = fdManifest(t, ours.EtcDir(), true)
	if _, stderr, err := ours.Run(f.ctx, "ostree-prefinalize", "finalize", "--pre"); err != nil {
		t.Fatalf("finalize --pre: %v\n%s", err, stderr)
	}
	requireSameFD(t, "finalize --pre wrote the booted /etc", booted, fdManifest(t, ours.EtcDir(), true))
	st := statusOf(t, ours)
	t.Logf("after finalize --pre: %+v", st.Etc)

	resA, errA := ours.FinalizeStaged(f.ctx)
	resB, errB := theirs.FinalizeStaged(f.ctx)
	if (errA == nil) != (errB == nil) {
		t.Fatalf("finalize-staged: after ours %v\n%s\nalone %v\n%s", errA, resA.Stderr, errB, resB.Stderr)
	}
	if long != (errB != nil) {
		t.Fatalf("ostree alone: %v (4095-byte path: %v)\n%s", errB, long, resB.Stderr)
	}
	if errB != nil {
		t.Logf("ostree alone fails, and after ours alike: %s", strings.TrimSpace(resB.Stderr))
		if st.Etc.Takeover || st.Etc.State != "fallback" {
			t.Fatalf("status where ostree alone fails: %+v", st.Etc)
		}
	} else if !st.Etc.Takeover || resA.Merged {
		t.Fatalf("ostree merged %v with takeover %v", resA.Merged, st.Etc.Takeover)
	}
	etcOf := func(h *harness.BootedHost) string {
		return filepath.Join(h.Sysroot.DeploymentDir(f.staged.OS, f.staged.Checksum, f.staged.Serial), "etc")
	}
	requireSameFD(t, "the new /etc differs from ostree's alone (first ours, second ostree's)",
		fdManifest(t, etcOf(ours), false), fdManifest(t, etcOf(theirs), false))
	requireSameFD(t, "finalize-staged wrote the booted /etc", booted, fdManifest(t, ours.EtcDir(), true))
}
