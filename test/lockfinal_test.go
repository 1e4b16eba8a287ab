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
	"os"
	"path/filepath"
	"strings"
	"testing"

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

func TestLockFinalizationAfterTakeover(t *testing.T) {
	harness.ForEachOracle(t, testLockFinalizationAfterTakeover)
}

func testLockFinalizationAfterTakeover(t *testing.T) {
	e := newParityEnv(t)
	ctx := context.Background()
	tr := harness.NewTree(harness.TreeOptions{Seed: 7})
	e.commit("testos/main", tr)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	b := e.boot(d)
	b.MustShell(`echo before >> /etc/hostname`)
	tr2, _ := tr.Churn(0.2, 8)
	e.commit("testos/main", tr2)
	b.Stage("testos/main")
	ostreeOnly := b.Copy(t)

	b.MustRun("ostree-prefinalize", "stage")
	if st := statusOf(t, b); !st.Etc.Takeover {
		t.Fatalf("no takeover at staging: %+v", st)
	}
	setFinalizationLock(t, b, true)
	b.MustRun("ostree-prefinalize", "stage")
	st := statusOf(t, b)
	if !st.Etc.Takeover || st.Etc.State != "precomputed" {
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

	b.MustRun("ostree-prefinalize", "finalize", "--pre")
	res, err := b.FinalizeStaged(ctx)
	if err != nil {
		t.Fatalf("finalize-staged: %v", err)
	}
	if res.Merged {
		t.Fatalf("ostree merged although we took over:\n%s", res.Stdout)
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

// TestLockFinalizationRestore: when we give the takeover back (here
// stage --no-takeover), ostree's state goes back with what ostree changed
// since: a lock made after our takeover stays locked, and unknown keys stay.
func TestLockFinalizationRestore(t *testing.T) {
	harness.ForEachOracle(t, testLockFinalizationRestore)
}

func testLockFinalizationRestore(t *testing.T) {
	e := newParityEnv(t)
	tr := harness.NewTree(harness.TreeOptions{Seed: 9})
	e.commit("testos/main", tr)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	b := e.boot(d)
	b.MustShell(`echo before >> /etc/hostname`)
	tr2, _ := tr.Churn(0.2, 10)
	e.commit("testos/main", tr2)
	b.Stage("testos/main")
	orig := stagedStateOf(t, b)
	b.MustRun("ostree-prefinalize", "stage")
	if s := stagedStateOf(t, b); s.Merge != nil {
		t.Fatal("no takeover")
	}
	setFinalizationLock(t, b, true)
	b.MustRun("ostree-prefinalize", "stage", "--no-takeover")
	s := stagedStateOf(t, b)
	if s.Merge == nil || *s.Merge != *orig.Merge || s.Target != orig.Target {
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
