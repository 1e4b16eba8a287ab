package test

// Bad input for the /etc merge (issue 4), through the real command line
// against the real ostree 2022.7: unreadable files, dangling symlinks and
// loops, symlinks that would lead a write out of /etc, hostile paths given
// to Refresh, and a staged state we cannot parse. Each time: a clear error
// (exit 1, one error line) where we cannot do the work, no takeover (ostree
// merges, or fails, exactly as it does alone on an identical copy), and the
// booted /etc never written (compared with mtimes before and after).

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/etcmerge"
	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// noDAC runs argv as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH:
// the way to make open(2) of a mode-000 file fail for root. (There is no
// other FUSE-less way here: mandatory locks are gone from Linux 5.15 on,
// and a mode-000 directory or file does not stop a root with those
// capabilities.) ostree itself keeps them, so for ostree the file stays
// readable: the test shows that our failure to read makes us step aside.
func noDAC(argv ...string) []string {
	return append([]string{"setpriv", "--bounding-set=-dac_override,-dac_read_search"}, argv...)
}

// requireCleanError checks a failed command of ours: exit status 1 and one
// error line, the last one on stderr ("ostree-prefinalize: ..."; log lines
// before it are structured key=value lines), mentioning each of mention.
func requireCleanError(t *testing.T, what string, stderr string, err error, mention ...string) string {
	t.Helper()
	var ce *harness.CmdError
	if !errors.As(err, &ce) || ce.ExitCode() != 1 {
		t.Fatalf("%s: want exit status 1, got %v\nstderr:\n%s", what, err, stderr)
	}
	var errLines []string
	ls := lines(stderr)
	for _, l := range ls {
		if strings.HasPrefix(l, "ostree-prefinalize: ") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 || ls[len(ls)-1] != errLines[0] {
		t.Fatalf("%s: want exactly one error line, last, got:\n%s", what, stderr)
	}
	for _, m := range mention {
		if !strings.Contains(errLines[0], m) {
			t.Fatalf("%s: error line does not mention %q: %s", what, m, errLines[0])
		}
	}
	t.Logf("%s: %s", what, errLines[0])
	return errLines[0]
}

// stagedBytes is ostree's staged state file of a booted host.
func stagedBytes(t *testing.T, h *harness.BootedHost) []byte {
	t.Helper()
	b, err := os.ReadFile(h.StagedPath())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// requireNoTakeover: the staged state on disk is still want (ostree's own).
func requireNoTakeover(t *testing.T, h *harness.BootedHost, want []byte) {
	t.Helper()
	if got := stagedBytes(t, h); string(got) != string(want) {
		t.Fatalf("the staged state was rewritten (%d bytes, ostree's were %d): we took over", len(got), len(want))
	}
	if st := statusOf(t, h); st.Etc.Takeover {
		t.Fatalf("status says takeover: %+v", st.Etc)
	}
}

// forkStaged forks the base machine, makes the edits before staging, stages
// the update with real ostree, runs setup (on the machine that will be
// ours, so both copies get it) and forks the copy that ostree finalizes
// alone.
func (e *etcEnv) forkStaged(t *testing.T, before string, setup func(h *harness.BootedHost, staged harness.Deployment)) (ours, theirs *harness.BootedHost, staged harness.Deployment) {
	t.Helper()
	ours = e.base.Copy(t)
	if before != "" {
		ours.MustShell(before)
	}
	staged = ours.Stage("testos/main")
	if setup != nil {
		setup(ours, staged)
	}
	return ours, ours.Copy(t), staged
}

// finalizeBoth runs the real finalize-staged on both copies: it must end
// the same way on both (same output, same error or success, the same new
// etc and the same deployments); with mustMerge, ostree must have merged. extra are further directories (relative to
// the run directory) whose result must match too.
func (e *etcEnv) finalizeBoth(t *testing.T, ours, theirs *harness.BootedHost, staged harness.Deployment, mtimes, mustMerge bool, extra ...string) (harness.FinalizeResult, error) {
	t.Helper()
	resA, errA := ours.FinalizeStaged(e.ctx)
	resB, errB := theirs.FinalizeStaged(e.ctx)
	if (errA == nil) != (errB == nil) || resA.Stderr != resB.Stderr || resA.Stdout != resB.Stdout {
		t.Fatalf("finalize-staged differs:\nafter ours: %v\n%s\nalone: %v\n%s", errA, resA.Stdout, errB, resB.Stdout)
	}
	if errB != nil {
		t.Logf("finalize-staged fails on both copies alike: %s", strings.TrimSpace(resB.Stderr))
	}
	if !resB.Merged {
		if mustMerge {
			t.Fatalf("ostree did not merge:\n%s", resB.Stdout)
		}
		t.Logf("ostree did not merge on either copy")
	}
	dir := func(h *harness.BootedHost) string {
		return filepath.Join(h.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial), "etc")
	}
	requireSameManifest(t, "the new /etc differs from ostree's alone (first ours, second ostree's)",
		etcManifest(t, dir(ours), mtimes), etcManifest(t, dir(theirs), mtimes))
	// ostree admin status itself may fail (a truncated staged state
	// crashes it): it must answer the same on both.
	sa, ea, errA := ours.Run(e.ctx, "ostree", "admin", "status")
	sb, eb, errB := theirs.Run(e.ctx, "ostree", "admin", "status")
	if sa != sb || ea != eb || (errA == nil) != (errB == nil) {
		t.Fatalf("ostree admin status differs:\nafter ours: %v\n%s\nalone: %v\n%s", errA, sa, errB, sb)
	}
	for _, x := range extra {
		ma, err := harness.TreeManifest(filepath.Join(ours.RunDir, x), harness.ManifestOptions{Xattrs: true})
		if err != nil {
			t.Fatal(err)
		}
		mb, err := harness.TreeManifest(filepath.Join(theirs.RunDir, x), harness.ManifestOptions{Xattrs: true})
		if err != nil {
			t.Fatal(err)
		}
		requireSameManifest(t, "/run/"+x+" differs from ostree's alone", ma, mb)
	}
	return resB, errB
}

// A file that cannot be opened, in the booted /etc, found by stage: a
// clear error naming it, no takeover, the staged etc left as ostree made
// it, and ostree merges as always. Found only by finalize --pre (added
// after staging): fall back (ostree's state restored, staged etc reset),
// and ostree's merge gives its own result.
func TestEtcBadInputUnreadable(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	const unreadable = `echo secret > /etc/unreadable.conf && chmod 000 /etc/unreadable.conf && echo more >> /etc/hosts`

	t.Run("at-stage", func(t *testing.T) {
		e := e.withT(t)
		ours, theirs, staged := e.forkStaged(t, unreadable, nil)
		orig := stagedBytes(t, ours)
		booted := bootedManifest(t, ours)
		stagedEtc := etcManifest(t, staged.EtcDir(), false)
		_, stderr, err := ours.Run(e.ctx, noDAC("ostree-prefinalize", "stage")...)
		requireCleanError(t, "stage", stderr, err, "unreadable.conf")
		requireNoTakeover(t, ours, orig)
		if st := statusOf(t, ours); st.Etc.State != "fallback" || !strings.Contains(st.Etc.Reason, "unreadable.conf") {
			t.Fatalf("status: %+v", st.Etc)
		}
		// The fallback reset the staged etc to the new defaults: what the
		// failed merge had written (hosts) is rewritten with the time of the
		// reset, as ostree's checkout of etc has the time of the checkout;
		// everything else is exact.
		requireSameManifest(t, "the staged etc is not as ostree staged it", stagedEtc, etcManifest(t, staged.EtcDir(), false))
		requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
		// finalize --pre then has nothing of ours to seal.
		out := ours.MustRun(noDAC("ostree-prefinalize", "finalize", "--pre")...)
		t.Logf("finalize --pre: %s", strings.TrimSpace(out))
		requireNoTakeover(t, ours, orig)
		e.finalizeBoth(t, ours, theirs, staged, true, true)
		requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
	})

	t.Run("at-pre", func(t *testing.T) {
		e := e.withT(t)
		ours, theirs, staged := e.forkStaged(t, `rm /etc/conf.d/b.conf`, nil)
		orig := stagedBytes(t, ours)
		var sr lifecycle.StageResult
		if err := json.Unmarshal([]byte(ours.MustRun("ostree-prefinalize", "stage", "--json")), &sr); err != nil || !sr.Etc.Takeover {
			t.Fatalf("stage: %+v, %v", sr.Etc, err)
		}
		ours.MustShell(unreadable)
		theirs.MustShell(unreadable)
		booted := bootedManifest(t, ours)
		out, stderr, err := ours.Run(e.ctx, noDAC("ostree-prefinalize", "finalize", "--pre", "--json")...)
		if err != nil {
			t.Fatalf("finalize --pre must fall back, not fail: %v", err)
		}
		var pr lifecycle.PreResult
		if err := json.Unmarshal([]byte(out), &pr); err != nil {
			t.Fatalf("finalize --pre --json: %v\n%s", err, out)
		}
		if pr.Etc.State != "fallback" || pr.Etc.Takeover || !strings.Contains(pr.Etc.Reason, "unreadable.conf") {
			t.Fatalf("finalize --pre: %+v\n%s", pr.Etc, stderr)
		}
		t.Logf("finalize --pre: %s", pr.Etc.Reason)
		requireNoTakeover(t, ours, orig)
		requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
		// The fallback resets the staged etc to the new defaults; files it
		// rewrote carry the time of the reset, so mtimes are not compared.
		e.finalizeBoth(t, ours, theirs, staged, false, true)
		requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
	})
}

// Dangling symlinks, loops and links pointing out of /etc are ordinary
// entries to ostree: copied as links, never followed. So they are for us:
// stage takes over and the result is ostree's, before and after staging.
func TestEtcBadInputSymlinks(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	const links = `set -e
ln -s /nonexistent /etc/dangling
ln -s loop2 /etc/loop1 && ln -s loop1 /etc/loop2 && ln -s self /etc/self
ln -s /run /etc/outdir && ln -s ../../../../../../../../run/ostree /etc/updir
mkdir /etc/ld && ln -s ../ld /etc/ld/up && ln -s ../../.. /etc/ld/root
rm /etc/tochange && ln -s gone-nowhere /etc/tochange
rm /etc/retarget && ln -s retarget /etc/retarget
rm /etc/hosts && ln -s /run/ostree/staged-deployment /etc/hosts`
	for _, when := range []string{"before", "after"} {
		t.Run(when, func(t *testing.T) {
			r := etcRun{wantTakeover: true}
			if when == "before" {
				r.before = links
			} else {
				r.after = links
			}
			e.withT(t).run(t, r)
		})
	}
}

// A symlink in the new deployment's etc where the booted etc has a
// directory with edits below it: ostree (opendirat following links,
// rm_rf_at below the link) writes and deletes through the link, outside
// /etc. We never follow it: stage refuses with a clear error, writes
// nothing there, does not take over, and ostree does what it always does.
func TestEtcBadInputEscape(t *testing.T) {
	t1, t2 := etcTrees()
	t1.Set("usr/etc/esc/keep", harness.Text("keep\n"))
	t1.Set("usr/etc/esc/victim", harness.Text("victim\n"))
	t2.Remove("usr/etc/esc/keep")
	t2.Remove("usr/etc/esc/victim")
	t2.Set("usr/etc/esc", harness.Symlink("/run/escape"))
	e := newEtcEnv(t, t1, t2)
	ours, theirs, staged := e.forkStaged(t, `echo added > /etc/esc/added && rm /etc/esc/victim && chmod 700 /etc/esc`,
		func(h *harness.BootedHost, _ harness.Deployment) {
			// Where the link leads, inside the booted namespace: the
			// machine's /run.
			if err := os.Mkdir(filepath.Join(h.RunDir, "escape"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(h.RunDir, "escape", "victim"), []byte("not /etc's\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		})
	orig := stagedBytes(t, ours)
	booted := bootedManifest(t, ours)
	outside, err := harness.TreeManifest(filepath.Join(ours.RunDir, "escape"), harness.ManifestOptions{MTime: true, Xattrs: true})
	if err != nil {
		t.Fatal(err)
	}
	stagedEtc := etcManifest(t, staged.EtcDir(), true)
	_, stderr, err := ours.Run(e.ctx, "ostree-prefinalize", "stage")
	requireCleanError(t, "stage", stderr, err, "esc")
	requireNoTakeover(t, ours, orig)
	after, err := harness.TreeManifest(filepath.Join(ours.RunDir, "escape"), harness.ManifestOptions{MTime: true, Xattrs: true})
	if err != nil {
		t.Fatal(err)
	}
	requireSameManifest(t, "stage wrote outside /etc", outside, after)
	requireSameManifest(t, "the staged etc is not as ostree staged it", stagedEtc, etcManifest(t, staged.EtcDir(), true))
	requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
	ours.MustRun("ostree-prefinalize", "finalize", "--pre")
	requireNoTakeover(t, ours, orig)

	e.finalizeBoth(t, ours, theirs, staged, true, true, "escape")
	requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
	m, err := harness.TreeManifest(filepath.Join(theirs.RunDir, "escape"), harness.ManifestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for p, en := range m {
		got = append(got, p+" "+en.Type+" "+en.Mode.String())
	}
	t.Logf("what ostree alone left at the link's target /run/escape: %v", got)
}

// refreshHelperEnv, when set, makes TestEtcRefreshHelperProcess act as a
// helper run inside a booted namespace: it calls lifecycle.Refresh there
// (which only works on a booted host) with the JSON list of paths in the
// variable, one call per path, and prints one JSON line per call.
const refreshHelperEnv = "OSTREE_PREFINALIZE_REFRESH_HELPER"

type refreshOutcome struct {
	Path    string `json:"path"`
	Err     string `json:"err"`
	BadPath bool   `json:"bad_path"`
	Written int    `json:"written"`
}

func TestEtcRefreshHelperProcess(t *testing.T) {
	v := os.Getenv(refreshHelperEnv)
	if v == "" {
		return // not a helper run: nothing to test on its own
	}
	var paths []string
	if err := json.Unmarshal([]byte(v), &paths); err != nil {
		t.Fatal(err)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, p := range paths {
		n, err := lifecycle.Refresh(context.Background(), lifecycle.Config{}, []string{p})
		o := refreshOutcome{Path: p, Written: n, BadPath: errors.Is(err, etcmerge.ErrBadPath)}
		if err != nil {
			o.Err = err.Error()
		}
		enc.Encode(o)
	}
}

// Refresh (the watcher's batch) with paths no inotify event can produce:
// each is refused with ErrBadPath and nothing is written; a path below a
// symlink of the booted etc that leads out of /etc only brings the link
// itself over. The seal afterwards is still exact.
func TestEtcBadInputRefreshHostilePaths(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := newEtcEnv(t, nil, nil, harness.OnPath(self))
	ours, theirs, staged := e.forkStaged(t, `echo more >> /etc/hosts`, nil)
	var sr lifecycle.StageResult
	if err := json.Unmarshal([]byte(ours.MustRun("ostree-prefinalize", "stage", "--json")), &sr); err != nil || !sr.Etc.Takeover {
		t.Fatalf("stage: %+v, %v", sr.Etc, err)
	}
	const edit = `ln -s /run /etc/outdir`
	ours.MustShell(edit)
	theirs.MustShell(edit)

	refresh := func(paths ...string) []refreshOutcome {
		t.Helper()
		arg, _ := json.Marshal(paths)
		out := ours.MustRun("env", refreshHelperEnv+"="+string(arg), filepath.Base(self), "-test.run=^TestEtcRefreshHelperProcess$")
		var res []refreshOutcome
		for _, l := range lines(out) {
			if strings.HasPrefix(l, "{") {
				var o refreshOutcome
				if err := json.Unmarshal([]byte(l), &o); err != nil {
					t.Fatal(err)
				}
				res = append(res, o)
			}
		}
		if len(res) != len(paths) {
			t.Fatalf("helper answered %d of %d paths:\n%s", len(res), len(paths), out)
		}
		return res
	}
	runDir := func() harness.Manifest {
		t.Helper()
		m, err := harness.TreeManifest(ours.RunDir, harness.ManifestOptions{MTime: true, Xattrs: true,
			Skip: func(rel string) bool { return rel == "ostree-prefinalize" }})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	booted := bootedManifest(t, ours)
	newEtc := etcManifest(t, staged.EtcDir(), true)
	run := runDir()

	hostile := []string{"..", "../x", "../../../../../../run/ostree/staged-deployment", "/etc/hosts", "/hosts",
		"a/../../b", "./../x", "hosts/", "a//b", "ssh/./sshd_config", "x\x00y", strings.Repeat("n", 256)}
	for _, o := range refresh(hostile...) {
		if !o.BadPath || o.Written != 0 {
			t.Errorf("Refresh(%q): %+v, want ErrBadPath and nothing written", o.Path, o)
		}
	}
	requireSameManifest(t, "Refresh with hostile paths wrote the staged etc", newEtc, etcManifest(t, staged.EtcDir(), true))
	requireSameManifest(t, "Refresh with hostile paths wrote /run", run, runDir())
	requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
	if st := statusOf(t, ours); !st.Etc.Takeover || st.Etc.State != "precomputed" {
		t.Fatalf("status after refused paths: %+v", st.Etc)
	}

	// Below a link out of /etc: only the link is brought over.
	o := refresh("outdir/ostree/staged-deployment")[0]
	if o.Err != "" || o.Written == 0 {
		t.Fatalf("Refresh below the link: %+v", o)
	}
	if target, err := os.Readlink(filepath.Join(staged.EtcDir(), "outdir")); err != nil || target != "/run" {
		t.Fatalf("staged etc/outdir: %q, %v", target, err)
	}
	requireSameManifest(t, "Refresh below a link wrote /run", run, runDir())
	requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))

	ours.MustRun("ostree-prefinalize", "finalize", "--pre")
	res, err := e.finalizeBothTakeover(t, ours, theirs, staged)
	if err != nil || res.Merged {
		t.Fatalf("finalize-staged after ours: merged %v, %v", res.Merged, err)
	}
	requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
}

// finalizeBothTakeover finalizes both copies where we took over on ours:
// ostree merges only on theirs, and the new etcs are equal.
func (e *etcEnv) finalizeBothTakeover(t *testing.T, ours, theirs *harness.BootedHost, staged harness.Deployment) (harness.FinalizeResult, error) {
	t.Helper()
	resA, errA := ours.FinalizeStaged(e.ctx)
	resB, errB := theirs.FinalizeStaged(e.ctx)
	if errA != nil || errB != nil || !resB.Merged {
		t.Fatalf("finalize-staged: after ours %v, alone %v (merged %v)", errA, errB, resB.Merged)
	}
	dir := func(h *harness.BootedHost) string {
		return filepath.Join(h.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial), "etc")
	}
	requireSameManifest(t, "the new /etc differs from ostree's alone (first ours, second ostree's)",
		etcManifest(t, dir(ours), true), etcManifest(t, dir(theirs), true))
	return resA, errA
}

// A staged state we cannot parse (garbage, truncated, a corrupt offset) in
// /run/ostree/staged-deployment before our stage: a clear error naming
// the file, nothing written anywhere, no takeover, and ostree's own
// finalization ends as it ends alone (GLib reads invalid data leniently:
// no "target" key means nothing staged to it; a truncated state crashes
// ostree 2022.7 on both copies alike).
func TestEtcBadInputStagedState(t *testing.T) { harness.ForEachOracle(t, testEtcBadInputStagedState) }

func testEtcBadInputStagedState(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	// An empty file is a valid empty a{sv}: nothing staged, for ostree
	// (GLib reads it as an empty dictionary) and for us alike.
	cases := []struct {
		name    string
		mk      func(orig []byte) []byte
		wantErr bool
	}{
		{"garbage", func([]byte) []byte { return []byte("this is not a GVariant a{sv}\x00\xff\xfe garbage") }, true},
		{"truncated", func(o []byte) []byte { return o[:len(o)/2] }, true},
		{"empty", func([]byte) []byte { return nil }, false},
		{"bit-flip", flipLastByte, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := e.withT(t)
			ours, theirs, staged := e.forkStaged(t, `echo more >> /etc/hosts && rm /etc/motd`, func(h *harness.BootedHost, _ harness.Deployment) {
				bad := c.mk(stagedBytes(t, h))
				if err := os.WriteFile(h.StagedPath(), bad, 0o644); err != nil {
					t.Fatal(err)
				}
			})
			bad := stagedBytes(t, ours)
			booted := bootedManifest(t, ours)
			stagedEtc := etcManifest(t, staged.EtcDir(), true)
			out, stderr, err := ours.Run(e.ctx, "ostree-prefinalize", "stage")
			if c.wantErr {
				requireCleanError(t, "stage", stderr, err, "staged-deployment")
			} else if err != nil || !strings.Contains(out, "Nothing staged") {
				t.Fatalf("stage: want \"Nothing staged\", got %v\n%s%s", err, out, stderr)
			}
			if got := stagedBytes(t, ours); string(got) != string(bad) {
				t.Fatal("stage rewrote the unparsable staged state")
			}
			requireSameManifest(t, "the staged etc was written", stagedEtc, etcManifest(t, staged.EtcDir(), true))
			requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
			// finalize --pre must not make things worse either.
			_, stderr, err = ours.Run(e.ctx, "ostree-prefinalize", "finalize", "--pre")
			if err != nil {
				requireCleanError(t, "finalize --pre", stderr, err, "staged-deployment")
			}
			if got := stagedBytes(t, ours); string(got) != string(bad) {
				t.Fatal("finalize --pre rewrote the unparsable staged state")
			}
			requireSameManifest(t, "the staged etc was written", stagedEtc, etcManifest(t, staged.EtcDir(), true))
			// status always answers; a staged state it cannot read is
			// named in its reasons.
			out, stderr, err = ours.Run(e.ctx, "ostree-prefinalize", "status")
			if err != nil {
				t.Fatalf("status must answer: %v\n%s%s", err, out, stderr)
			}
			if _, derr := ostree.DecodeStagedState(bad); derr != nil && !errors.Is(derr, ostree.ErrNoStagedTarget) && !strings.Contains(out, "staged-deployment") {
				t.Fatalf("status does not name the unreadable staged state:\n%s", out)
			}
			t.Logf("status:\n%s", out)
			e.finalizeBoth(t, ours, theirs, staged, true, false)
			requireSameManifest(t, "the booted /etc was written", booted, bootedManifest(t, ours))
		})
	}
}

// flipLastByte corrupts the last framing offset of a serialized a{sv}.
func flipLastByte(o []byte) []byte {
	b := append([]byte(nil), o...)
	b[len(b)-1] ^= 0xff
	return b
}
