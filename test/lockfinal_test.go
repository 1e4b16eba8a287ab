package test

// Locking and unlocking finalization after our takeover (bootc's
// --download-only stages locked, --from-downloaded unlocks): since 2023.8
// `ostree admin lock-finalization [--unlock]` rewrites the whole staged
// state (ostree_sysroot_change_finalization), our takeover's bytes with it.
// The stage that follows (our path unit fires on the rewrite) must still
// see its own takeover: once it took the rewrite for "ostree does no /etc
// merge", stopped tracking, and an /etc edit made after the unlock was
// missing at reboot. 2022.7 has no such command: there the lock is the
// staged-deployment-locked file alone, and the same steps run with it.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// setFinalizationLock locks or unlocks finalization as the oracle's ostree
// does it.
func setFinalizationLock(t *testing.T, b *harness.BootedHost, lock bool) {
	t.Helper()
	if b.Sysroot.Oracle.AtLeast(2023, 8) {
		argv := []string{"ostree", "admin", "lock-finalization"}
		if !lock {
			argv = append(argv, "--unlock")
		}
		b.MustRun(argv...)
		return
	}
	p := filepath.Join(b.RunDir, "ostree", "staged-deployment-locked")
	if lock {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	} else if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func stagedStateOf(t *testing.T, b *harness.BootedHost) *ostree.StagedState {
	t.Helper()
	raw, err := os.ReadFile(b.StagedPath())
	if err != nil {
		t.Fatal(err)
	}
	st, err := ostree.DecodeStagedState(raw)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// lockEnv boots a deployment with an /etc edit, stages an update, forks
// the machine for ostree alone, and has us stage (and take over).
func lockEnv(t *testing.T, seed int64) (e *parityEnv, b, ostreeOnly *harness.BootedHost, staged harness.Deployment) {
	t.Helper()
	e = newParityEnv(t)
	tr := harness.NewTree(harness.TreeOptions{Seed: seed})
	e.commit("testos/main", tr)
	b = e.boot(e.s.Deploy("testos", "testos/main", "root=LABEL=x"))
	b.MustShell(`echo before >> /etc/hostname`)
	tr2, _ := tr.Churn(0.2, seed+1)
	e.commit("testos/main", tr2)
	staged = b.Stage("testos/main")
	ostreeOnly = b.Copy(t)
	b.MustRun("ostree-prefinalize", "stage")
	if st := statusOf(t, b); !st.Etc.Takeover {
		t.Fatalf("no takeover at staging: %+v", st.Etc)
	}
	return e, b, ostreeOnly, staged
}

// finalizeAndCompareEtc seals, finalizes both machines and compares the
// new deployments' /etc: ours (taken over, ostree does not merge) must be
// ostree's own merge.
func finalizeAndCompareEtc(t *testing.T, e *parityEnv, b, ostreeOnly *harness.BootedHost) {
	t.Helper()
	ctx := context.Background()
	b.MustRun("ostree-prefinalize", "finalize", "--pre")
	if st := statusOf(t, b); !st.Etc.Takeover || st.Etc.State != "sealed" {
		t.Fatalf("after the seal: %+v", st.Etc)
	}
	if res, err := b.FinalizeStaged(ctx); err != nil || res.Merged {
		t.Fatalf("finalize-staged: merged=%v err=%v\n%s", res.Merged, err, res.Stdout)
	}
	if ores, err := ostreeOnly.FinalizeStaged(ctx); err != nil || !ores.Merged {
		t.Fatalf("ostree-only finalize: merged=%v err=%v", ores.Merged, err)
	}
	nextA := e.s.NextBoot(t, e.opts)
	nextB := ostreeOnly.Sysroot.NextBoot(t, e.opts)
	if _, err := os.Stat(filepath.Join(nextA.EtcDir(), "new.conf")); err != nil {
		t.Fatalf("the /etc edit made after the unlock is missing: %v", err)
	}
	if diff := etcManifest(t, nextA.EtcDir(), false).Diff(etcManifest(t, nextB.EtcDir(), false)); diff != nil {
		t.Fatalf("/etc differs from ostree's own merge:\n%s", strings.Join(diff, "\n"))
	}
}

func TestLockFinalizationAfterTakeover(t *testing.T) {
	harness.ForEachOracle(t, testLockFinalizationAfterTakeover)
}

func testLockFinalizationAfterTakeover(t *testing.T) {
	e, b, ostreeOnly, _ := lockEnv(t, 7)
	setFinalizationLock(t, b, true)
	b.MustRun("ostree-prefinalize", "stage")
	if st := statusOf(t, b); !st.Etc.Takeover || st.Etc.State != "precomputed" {
		t.Fatalf("stage after lock-finalization lost the takeover: %+v", st.Etc)
	}
	if s := stagedStateOf(t, b); s.Merge != nil {
		t.Fatal("the staged state has a merge deployment again after the lock")
	}
	setFinalizationLock(t, b, false)
	b.MustRun("ostree-prefinalize", "stage")
	if st := statusOf(t, b); !st.Etc.Takeover || st.Etc.State != "precomputed" {
		t.Fatalf("stage after the unlock lost the takeover: %+v", st.Etc)
	}
	edit := `echo x > /etc/new.conf && echo after >> /etc/hostname`
	b.MustShell(edit)
	ostreeOnly.MustShell(edit)
	finalizeAndCompareEtc(t, e, b, ostreeOnly)
}

// TestLockFinalizationWatching: the same with the watcher running, as on a
// host (it sees the rewrite and restages in-process): it keeps the takeover
// and keeps applying /etc edits.
func TestLockFinalizationWatching(t *testing.T) {
	harness.ForEachOracle(t, testLockFinalizationWatching)
}

func testLockFinalizationWatching(t *testing.T) {
	e, b, ostreeOnly, staged := lockEnv(t, 11)
	p, err := b.Start(context.Background(), "ostree-prefinalize", "watch")
	if err != nil {
		t.Fatal(err)
	}
	pollUntil(t, "the watcher running", 30*time.Second, func() (bool, string) {
		st := statusOf(t, b)
		return st.Watcher.Running, fmt.Sprintf("%+v", st.Watcher)
	})
	setFinalizationLock(t, b, true)
	setFinalizationLock(t, b, false)
	edit := `echo x > /etc/new.conf`
	b.MustShell(edit)
	ostreeOnly.MustShell(edit)
	newConf := filepath.Join(b.Sysroot.DeploymentDir(staged.OS, staged.Checksum, staged.Serial), "etc/new.conf")
	pollUntil(t, "the watcher applying an edit made after the unlock", 30*time.Second, func() (bool, string) {
		_, err := os.Stat(newConf)
		return err == nil, fmt.Sprintf("%v; status %+v", err, statusOf(t, b).Etc)
	})
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Wait(); err != nil {
		t.Fatalf("watcher: %v", err)
	}
	finalizeAndCompareEtc(t, e, b, ostreeOnly)
}

// TestLockFinalizationRestore: when we give the takeover back (here
// stage --no-takeover), ostree's state goes back with what ostree changed
// since: a lock made after our takeover stays locked, and unknown keys stay.
func TestLockFinalizationRestore(t *testing.T) {
	harness.ForEachOracle(t, testLockFinalizationRestore)
}

func testLockFinalizationRestore(t *testing.T) {
	_, b, _, staged := lockEnv(t, 9)
	setFinalizationLock(t, b, true)
	b.MustRun("ostree-prefinalize", "stage", "--no-takeover")
	s := stagedStateOf(t, b)
	if s.Merge == nil || s.Merge.Name() != b.Deployment.Name() || s.Target.Name() != staged.Name() {
		t.Fatalf("ostree's merge deployment not restored: merge %+v target %+v", s.Merge, s.Target)
	}
	if b.Sysroot.Oracle.AtLeast(2023, 8) && !s.Locked {
		t.Fatal("the restore dropped the lock ostree set after our takeover")
	}
	if st := statusOf(t, b); st.Staged == nil || !st.Staged.Locked {
		t.Fatalf("status does not report the lock: %+v", st)
	}
	res, err := b.FinalizeStaged(context.Background())
	if err == nil && res.Merged {
		t.Fatalf("locked finalization finalized:\n%s", res.Stdout)
	}
}
