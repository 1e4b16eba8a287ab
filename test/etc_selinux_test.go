package test

// The SELinux policy refresh (issue 4) against the real ostree 2022.7.
// After its merge, ostree's finalization runs `semodule --help` and then
// `semodule -N --rebuild-if-modules-changed` in a bwrap sandbox of the new
// deployment when its etc has selinux/config; with the merge taken over it
// skips both, so stage runs them itself. The test trees carry a fake,
// static semodule (test/harness/fakesemodule) that rebuilds a "policy" from
// the module store and the users of /etc/passwd, and logs every call in
// etc/selinux/semodule.log: the entry-by-entry comparison of the new etc
// with ostree's own (copy B) then also proves that semodule ran exactly as
// often, with the same arguments, on the same inputs. The booted
// namespaces are user namespaces (BootOptions.UserNS), where bwrap can
// make its sandbox while FIFREEZE of the host's filesystem still fails.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

const (
	seModules = "/etc/selinux/targeted/active/modules"
	// Edits that are inputs of the policy build: a locally installed
	// module and a new user (genhomedircon labels its home).
	seAddModule = `mkdir -p ` + seModules + `/400/local && echo '(local)' > ` + seModules + `/400/local/cil`
	seAddUser   = `echo 'alice:x:1000:1000::/home/alice:/bin/sh' >> /etc/passwd`
	seAddUser2  = `echo 'bob:x:1001:1001::/srv/bob:/bin/sh' >> /etc/passwd`
)

// selinuxTrees are etcTrees with an SELinux policy store and the fake
// semodule; the update changes the base module, so the refresh rebuilds.
func selinuxTrees(t *testing.T, noFlag bool) (*harness.Tree, *harness.Tree) {
	t1, t2 := etcTrees()
	for _, tr := range []*harness.Tree{t1, t2} {
		tr.Set("usr/etc/selinux/config", harness.Text("SELINUX=disabled\nSELINUXTYPE=targeted\n"))
		tr.Set("usr/etc/selinux/semanage.conf", harness.Text("store-root = /etc/selinux\n"))
		tr.Set("usr/etc/selinux/targeted/active/modules/100/base/cil", harness.Text("(base v1)\n"))
		tr.Set("usr/etc/selinux/targeted/policy/policy.33", harness.Text("policy from the compose\n"))
	}
	t2.Set("usr/etc/selinux/targeted/active/modules/100/base/cil", harness.Text("(base v2)\n"))
	return harness.WithFakeSemodule(t, t1, noFlag), harness.WithFakeSemodule(t, t2, noFlag)
}

func newSELinuxEnv(t *testing.T, noFlag bool) *etcEnv {
	t1, t2 := selinuxTrees(t, noFlag)
	return newEtcEnvWith(t, t1, t2, func(o *harness.BootOptions) { o.UserNS = true })
}

// semoduleLog is the fake semodule's log in the new deployment's etc of h.
func semoduleLog(t *testing.T, h *harness.BootedHost, d harness.Deployment) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.Sysroot.DeploymentDir(d.OS, d.Checksum, d.Serial), "etc/selinux/semodule.log"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, "semodule ")
	}
	return lines
}

// requireRefreshLog checks that semodule ran once for --help and once to
// rebuild (or, without the option, for --help only).
func requireRefreshLog(t *testing.T, lines []string, rebuilt bool) {
	t.Helper()
	want := 1
	if rebuilt {
		want = 2
	}
	// The oracle's ostree decides the option: --refresh from 2023.2.
	flag := "-N --rebuild-if-modules-changed"
	if harness.OracleOf(t).AtLeast(2023, 2) {
		flag = "-N --refresh"
	}
	if len(lines) != want || !strings.HasPrefix(lines[0], "--help") ||
		(rebuilt && !strings.HasPrefix(lines[1], flag)) {
		t.Fatalf("semodule calls in the new etc: %q, want --help then %s (%d calls)", lines, flag, want)
	}
	for _, l := range lines {
		if !strings.Contains(l, "sandbox=yes") {
			t.Fatalf("semodule did not run in the deployment's sandbox: %q", l)
		}
	}
}

// Edits before and after staging that leave the policy inputs alone: we
// take over, refresh the policy at staging, and the new etc (policy,
// home directory labels, semodule's log) is exactly what ostree's own
// merge and refresh produce; ostree neither merges nor runs semodule
// again on our copy.
func TestEtcSELinuxRefreshParity(t *testing.T) { harness.ForEachOracle(t, testEtcSELinuxRefreshParity) }

func testEtcSELinuxRefreshParity(t *testing.T) {
	e := newSELinuxEnv(t, false)
	var staged harness.Deployment
	r := e.run(t, etcRun{
		before:       strings.Join([]string{etcKinds[0].script, etcKinds[4].script, seAddModule, seAddUser}, "\n"),
		after:        etcKinds[5].script + "\n" + etcKinds[1].script,
		wantTakeover: true,
		setup:        func(t *testing.T, h *harness.BootedHost, s harness.Deployment) { staged = s },
		afterStage: func(t *testing.T, h *harness.BootedHost) {
			if st := statusOf(t, h); st.Etc.SELinuxPolicy != lifecycle.PolicyRefreshed {
				t.Fatalf("status after stage: %+v", st.Etc)
			}
			// stage again (ostree-prefinalize.path does, after our
			// rewrite of the staged state): nothing changed, so nothing
			// is written and the policy is not rebuilt (same inode).
			policy := filepath.Join(h.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial), "etc/selinux/targeted/policy/policy.33")
			ino := func() uint64 {
				fi, err := os.Stat(policy)
				if err != nil {
					t.Fatal(err)
				}
				return fi.Sys().(*syscall.Stat_t).Ino
			}
			before := ino()
			var again lifecycle.StageResult
			if err := json.Unmarshal([]byte(h.MustRun("ostree-prefinalize", "stage", "--json")), &again); err != nil {
				t.Fatal(err)
			}
			if !again.Etc.Takeover || again.Etc.Written != 0 || again.Etc.Policy != lifecycle.PolicyRefreshed || ino() != before {
				t.Fatalf("stage again: %+v, policy rebuilt: %v", again.Etc, ino() != before)
			}
		},
	})
	if r.stage.Etc.Policy != lifecycle.PolicyRefreshed || r.pre.Etc.Policy != lifecycle.PolicyRefreshed {
		t.Fatalf("policy: stage %+v, pre %+v", r.stage.Etc, r.pre.Etc)
	}
	requireRefreshLog(t, semoduleLog(t, r.ours, r.staged), true)
	etc := filepath.Join(r.ours.Sysroot.DeploymentDir(r.staged.OS, r.staged.Checksum, r.staged.Serial), "etc")
	homedirs, err := os.ReadFile(filepath.Join(etc, "selinux/targeted/contexts/files/file_contexts.homedirs"))
	if err != nil || !strings.Contains(string(homedirs), "/home/alice") {
		t.Fatalf("the refresh did not see the merged passwd: %q, %v", homedirs, err)
	}
}

// An input of the policy changed after staging and nothing refreshed it
// again before the seal (no watcher): the seal falls back, and ostree
// merges and refreshes as it always did, from a pristine staged etc.
func TestEtcSELinuxInputChangedBeforeSeal(t *testing.T) {
	harness.ForEachOracle(t, testEtcSELinuxInputChangedBeforeSeal)
}

func testEtcSELinuxInputChangedBeforeSeal(t *testing.T) {
	e := newSELinuxEnv(t, false)
	for _, c := range []struct{ name, after string }{
		{"user", seAddUser2},
		{"module", seAddModule},
		{"config", `echo '# local' >> /etc/selinux/config`},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := e.withT(t).run(t, etcRun{before: etcKinds[0].script + "\n" + seAddUser, after: c.after + "\n" + etcKinds[2].script,
				wantTakeover: true, preFallback: true})
			if !strings.Contains(r.pre.Etc.Reason, "SELinux policy inputs changed") {
				t.Fatalf("finalize --pre: %+v", r.pre.Etc)
			}
			requireRefreshLog(t, semoduleLog(t, r.ours, r.staged), true)
		})
	}
}

// The same change while the watcher runs: its batch merges the whole etc
// again and refreshes the policy again, so the takeover holds and the
// result is still exactly ostree's.
func TestEtcSELinuxWatcherRefreshesAgain(t *testing.T) {
	harness.ForEachOracle(t, testEtcSELinuxWatcherRefreshesAgain)
}

func testEtcSELinuxWatcherRefreshesAgain(t *testing.T) {
	e := newSELinuxEnv(t, false)
	var staged harness.Deployment
	r := e.run(t, etcRun{before: seAddUser, after: seAddUser2 + "\n" + etcKinds[0].script, wantTakeover: true,
		setup: func(t *testing.T, h *harness.BootedHost, s harness.Deployment) { staged = s },
		beforePre: func(t *testing.T, h *harness.BootedHost) {
			if n := len(semoduleLog(t, h, staged)); n != 2 {
				t.Fatalf("after stage semodule ran %d times, want 2", n)
			}
			p, err := h.Start(e.ctx, "ostree-prefinalize", "-v", "watch")
			if err != nil {
				t.Fatal(err)
			}
			// The watcher's first batch finds passwd changed since the
			// baseline: the whole etc is merged again (which removes the
			// first refresh's output, semodule's log included) and the
			// policy is refreshed again, now with bob's home.
			homedirs := filepath.Join(h.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial),
				"etc/selinux/targeted/contexts/files/file_contexts.homedirs")
			pollUntil(t, "the watcher's refresh of the policy", 2*time.Minute, func() (bool, string) {
				select {
				case <-p.Done():
					_, stderr, err := p.Wait()
					t.Fatalf("watcher exited: %v\n%s", err, stderr)
				default:
				}
				b, _ := os.ReadFile(homedirs)
				st := statusOf(t, h)
				return strings.Contains(string(b), "/srv/bob") && st.Etc.State == "precomputed" && st.Etc.PendingPaths == 0 &&
						st.Etc.SELinuxPolicy == lifecycle.PolicyRefreshed,
					string(b) + " / " + string(st.Etc.State) + ": " + st.Etc.Reason
			})
			if err := p.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if _, stderr, err := p.Wait(); err != nil {
				t.Fatalf("watcher after SIGTERM: %v\n%s", err, stderr)
			} else if !strings.Contains(stderr, "input of the SELinux policy changed") {
				t.Fatalf("the watcher did not say why it refreshed the policy:\n%s", stderr)
			}
		}})
	requireRefreshLog(t, semoduleLog(t, r.ours, r.staged), true)
}

// A deployment whose semodule lacks the option: ostree only asks for the
// help and does not refresh; neither do we, and the takeover stands even
// when a policy input changes later.
func TestEtcSELinuxNoRebuildOption(t *testing.T) {
	harness.ForEachOracle(t, testEtcSELinuxNoRebuildOption)
}

func testEtcSELinuxNoRebuildOption(t *testing.T) {
	e := newSELinuxEnv(t, true)
	r := e.run(t, etcRun{before: seAddModule, after: seAddUser, wantTakeover: true})
	if r.stage.Etc.Policy != lifecycle.PolicyUnsupported || r.pre.Etc.Policy != lifecycle.PolicyUnsupported {
		t.Fatalf("policy: stage %+v, pre %+v", r.stage.Etc, r.pre.Etc)
	}
	requireRefreshLog(t, semoduleLog(t, r.ours, r.staged), false)
}

// semodule fails on the merged etc: stage says so at staging time and
// falls back; ostree's finalization fails the same way on both copies.
func TestEtcSELinuxRefreshFails(t *testing.T) { harness.ForEachOracle(t, testEtcSELinuxRefreshFails) }

func testEtcSELinuxRefreshFails(t *testing.T) {
	e := newSELinuxEnv(t, false)
	r := e.run(t, etcRun{
		before:     `mkdir -p ` + seModules + `/400/broken && echo x > ` + seModules + `/400/broken/FAIL`,
		after:      etcKinds[0].script,
		wantReason: "semodule: Failed!", stageFails: "SELinux policy refresh", finalizeFails: "semodule: Failed!"})
	if r.stage.Etc.State != "fallback" || r.pre.Etc.State != "fallback" {
		t.Fatalf("stage %+v, pre %+v", r.stage.Etc, r.pre.Etc)
	}
}

// A read-only /sysroot, as Fedora CoreOS mounts it: stage writes the
// staged etc from a private mount namespace with a read-write remount, and
// semodule, started from that namespace, writes through it too. ostree's
// finalization then neither merges nor refreshes, and the new etc is the
// one ostree produces alone on a copy.
func TestEtcSELinuxReadOnlySysroot(t *testing.T) {
	harness.ForEachOracle(t, testEtcSELinuxReadOnlySysroot)
}

func testEtcSELinuxReadOnlySysroot(t *testing.T) {
	e := newSELinuxEnv(t, false)
	h := e.base.Copy(t)
	h.MustShell(seAddUser + "\n" + etcKinds[0].script)
	staged := h.Stage("testos/main")
	theirs := h.Copy(t)
	o := e.opts
	o.Binds = append(slices.Clone(o.Binds), harness.Bind{Src: h.Sysroot.Path, Dst: "/sysroot", ReadOnly: true})
	o.RunDir = h.RunDir
	ro := h.Sysroot.Boot(t, h.Deployment, o)
	if out := ro.MustShell(`grep ' /sysroot ' /proc/self/mountinfo`); !strings.Contains(out, " ro") {
		t.Fatalf("/sysroot is not read-only in the namespace: %q", out)
	}
	var res lifecycle.StageResult
	if err := json.Unmarshal([]byte(ro.MustRun("ostree-prefinalize", "stage", "--json")), &res); err != nil {
		t.Fatal(err)
	}
	if !res.Etc.Takeover || res.Etc.Policy != lifecycle.PolicyRefreshed {
		t.Fatalf("stage on a read-only sysroot: %+v", res.Etc)
	}
	ro.MustRun("ostree-prefinalize", "finalize", "--pre")
	// ostree's own remount (of the filesystem, not the bind mount) needs
	// CAP_SYS_ADMIN over the host's filesystem, which the user namespace
	// lacks: it finalizes through the read-write view of the same sysroot.
	finalizeAndCompare(t, e, h, theirs, staged, false, true)
}

// finalizeAndCompare runs the real finalize-staged on ours (where ostree
// must merge or not, as merged says) and on theirs (ostree alone), and
// requires semodule's two calls and the same new etc on both.
func finalizeAndCompare(t *testing.T, e *etcEnv, ours, theirs *harness.BootedHost, staged harness.Deployment, merged, mtimes bool) {
	t.Helper()
	fin, err := ours.FinalizeStaged(e.ctx)
	if err != nil || fin.Merged != merged {
		t.Fatalf("finalize-staged after ours: merged %v (want %v), %v\n%s%s", fin.Merged, merged, err, fin.Stdout, fin.Stderr)
	}
	if _, err := theirs.FinalizeStaged(e.ctx); err != nil {
		t.Fatal(err)
	}
	requireRefreshLog(t, semoduleLog(t, ours, staged), true)
	newA := filepath.Join(ours.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial), "etc")
	newB := filepath.Join(theirs.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial), "etc")
	requireSameManifest(t, "the new /etc differs from ostree's own merge (first ours, second ostree's)",
		etcManifest(t, newA, mtimes), etcManifest(t, newB, mtimes))
}

// seSlow makes every rebuild pause halfway (the fake semodule's SLOW).
const seSlow = `mkdir -p /etc/selinux/targeted/active && : > /etc/selinux/targeted/active/SLOW`

// killMidRebuild starts argv in h, waits for the fake semodule's pause in
// the staged deployment d and SIGKILLs argv there: bwrap dies with its
// parent, and semodule with it, leaving a half-written policy.
func killMidRebuild(t *testing.T, h *harness.BootedHost, d harness.Deployment, argv ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := h.Start(ctx, argv...)
	if err != nil {
		t.Fatal(err)
	}
	sleeping := filepath.Join(h.Sysroot.DeploymentDir(d.OS, d.Checksum, d.Serial), "var/lib/fake-semodule/sleeping")
	pollUntil(t, "semodule's pause under "+argv[1], time.Minute, func() (bool, string) {
		select {
		case <-p.Done():
			_, stderr, err := p.Wait()
			t.Fatalf("%v ended before semodule paused: %v\n%s", argv, err, stderr)
		default:
		}
		_, err := os.Stat(sleeping)
		return err == nil, fmt.Sprint(err)
	})
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Wait(); err == nil {
		t.Fatalf("%v was not killed", argv)
	}
	// The namespace is gone, semodule with it: the pause never ends.
	if err := os.Remove(sleeping); err != nil {
		t.Fatalf("semodule went on after the kill? %v", err)
	}
}

// SIGKILL in the middle of the policy refresh, at staging and in a
// watcher batch: the next finalize --pre falls back (the staged etc was
// being written), and ostree's merge and refresh give exactly its own
// result.
func TestEtcSELinuxKillDuringRefresh(t *testing.T) {
	harness.ForEachOracle(t, testEtcSELinuxKillDuringRefresh)
}

func testEtcSELinuxKillDuringRefresh(t *testing.T) {
	e := newSELinuxEnv(t, false)
	base := e.base.Copy(t)
	base.MustShell(seSlow + "\n" + seAddUser + "\n" + etcKinds[0].script)
	staged := base.Stage("testos/main")
	orig := stagedBytes(t, base)
	finish := func(t *testing.T, ours *harness.BootedHost, theirs *harness.BootedHost) {
		t.Helper()
		var pre lifecycle.PreResult
		if err := json.Unmarshal([]byte(ours.MustRun("ostree-prefinalize", "finalize", "--pre", "--json")), &pre); err != nil {
			t.Fatal(err)
		}
		if pre.Etc.State != "fallback" || pre.Etc.Takeover {
			t.Fatalf("finalize --pre after the kill: %+v", pre.Etc)
		}
		if string(stagedBytes(t, ours)) != string(orig) {
			t.Fatal("ostree's staged state is not back")
		}
		finalizeAndCompare(t, e, ours, theirs, staged, true, false)
	}
	t.Run("stage", func(t *testing.T) {
		ours := base.Copy(t)
		theirs := base.Copy(t)
		killMidRebuild(t, ours, staged, "ostree-prefinalize", "stage")
		if string(stagedBytes(t, ours)) != string(orig) {
			t.Fatal("the takeover was written before the policy refresh finished")
		}
		finish(t, ours, theirs)
	})
	t.Run("watcher", func(t *testing.T) {
		ours := base.Copy(t)
		ours.MustRun("ostree-prefinalize", "stage")
		if string(stagedBytes(t, ours)) == string(orig) {
			t.Fatal("stage did not take over: the case proves nothing")
		}
		theirs := base.Copy(t)
		ours.MustShell(seAddUser2)
		theirs.MustShell(seAddUser2)
		killMidRebuild(t, ours, staged, "ostree-prefinalize", "watch")
		finish(t, ours, theirs)
	})
}
