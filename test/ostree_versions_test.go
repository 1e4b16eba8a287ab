package test

// Parity tests for the rows of the table of ostree-version-dependent
// choices (ostree/features.go): each runs against every oracle and expects
// what that oracle's version chooses, so that the wrong choice fails.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// oracleChoices are the choices of the ostree the booted host runs.
func oracleChoices(t *testing.T, h *harness.BootedHost) ostree.Choices {
	t.Helper()
	v, err := ostree.ParseVersion([]byte(h.MustShell("ostree --version")))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("oracle: ostree %s", v.Raw)
	return ostree.ChoicesFor(v)
}

// A fifo inside an added directory and a device inside a directory that
// replaced a file, made before or after staging, through the whole
// lifecycle (stage, seal, finalize-staged): from 2024.2 ostree skips them
// and our takeover must give its etc; 2022.7 fails the finalization, and
// we fall back (at stage, or at the seal for edits made after staging) so
// ostree fails the same way.
func TestEtcParitySpecialInCopiedDir(t *testing.T) {
	harness.ForEachOracle(t, testEtcParitySpecialInCopiedDir)
}

func testEtcParitySpecialInCopiedDir(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	skip := oracleChoices(t, e.base).EtcMergeSkipsSpecialInDirs
	const script = `mkdir -p /etc/fdir/sub && echo f > /etc/fdir/f && mkfifo /etc/fdir/sub/p && rm /etc/todir && mkdir /etc/todir && mknod /etc/todir/null c 1 3 && echo in > /etc/todir/inside`
	const ostreeFails = "Cannot copy non-regular/non-symlink file"
	t.Run("before", func(t *testing.T) {
		r := etcRun{before: script, wantTakeover: true}
		if !skip {
			r = etcRun{before: script, stageFails: "cannot copy non-regular/non-symlink file", finalizeFails: ostreeFails}
		}
		res := e.withT(t).run(t, r)
		if skip && res.stage.Etc.State != "precomputed" {
			t.Fatalf("stage: %+v", res.stage.Etc)
		}
	})
	t.Run("after", func(t *testing.T) {
		r := etcRun{after: script, wantTakeover: true}
		if !skip {
			r.preFallback, r.finalizeFails = true, ostreeFails
		}
		e.withT(t).run(t, r)
	})
}

// A host booted with a transient /etc (prepare-root.conf etc.transient;
// ostree-prepare-root records "transient-etc" in /run/ostree-booted): its
// /etc edits live in an overlay on /run and never reach the etc ostree
// merges, so there is nothing for us to precompute or take over. Stage
// steps aside (staged state and staged etc untouched), status says why, and
// ostree's finalization is its own. (The harness's /etc is the deployment's
// etc, not an overlay, so ostree does merge the edit here; the point is
// that we leave it to ostree.)
func TestTransientEtcStepsAside(t *testing.T) { harness.ForEachOracle(t, testTransientEtcStepsAside) }

func testTransientEtcStepsAside(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	meta, err := ostree.EncodeVardict([]ostree.VariantEntry{{Key: "transient-etc", Type: "s", Value: ostree.EncodeString("/run/ostree/transient-etc.Ab12Cd")}})
	if err != nil {
		t.Fatal(err)
	}
	var stagedEtc harness.Manifest
	var stagedDir string
	snap := func(t *testing.T) harness.Manifest {
		m, err := harness.TreeManifest(stagedDir, harness.ManifestOptions{MTime: true, Xattrs: true})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	r := e.run(t, etcRun{before: `echo edited >> /etc/hosts`, after: `echo new > /etc/newfile.conf`,
		wantReason: "/etc is transient",
		setup: func(t *testing.T, h *harness.BootedHost, s harness.Deployment) {
			if err := os.WriteFile(filepath.Join(h.RunDir, "ostree-booted"), meta, 0o644); err != nil {
				t.Fatal(err)
			}
			stagedDir = s.EtcDir()
			stagedEtc = snap(t)
		},
		afterStage: func(t *testing.T, h *harness.BootedHost) {
			requireSameManifest(t, "stage wrote the staged etc of a host with a transient /etc", stagedEtc, snap(t))
		}})
	if r.stage.Etc.State != "none" {
		t.Fatalf("stage: %+v", r.stage.Etc)
	}
}

// bootc's composefs-native backend stages through its own
// /run/composefs/staged-deployment and merges /etc in its own finalize
// unit: stage steps aside entirely (not even the plan), status says why.
func TestBootcComposefsStepsAside(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	r := e.run(t, etcRun{before: `echo edited >> /etc/hosts`,
		wantReason: "bootc's composefs backend",
		setup: func(t *testing.T, h *harness.BootedHost, s harness.Deployment) {
			if err := os.MkdirAll(filepath.Join(h.RunDir, "composefs"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(h.RunDir, "composefs", "staged-deployment"), []byte("0123abcd"), 0o644); err != nil {
				t.Fatal(err)
			}
		}})
	if r.stage.Etc.State != "none" || r.stage.Prune.State != "none" || r.stage.Staged != nil {
		t.Fatalf("stage did not step aside: %+v", r.stage)
	}
	st := statusOf(t, r.ours)
	if !strings.Contains(st.Prune.Reason, "bootc's composefs backend") {
		t.Fatalf("status: %+v", st.Prune)
	}
}

// status --json reports the installed ostree's version and the choices
// made from it (ostree.choices), here those of each oracle.
func TestStatusReportsOstreeChoices(t *testing.T) { harness.ForEachOracle(t, testStatusReportsOstreeChoices) }

func testStatusReportsOstreeChoices(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	want := oracleChoices(t, e.base)
	st := statusOf(t, e.base)
	if st.Ostree == nil || st.Ostree.Error != "" || st.Ostree.Version == "" || st.Ostree.Choices != want {
		t.Fatalf("status ostree: %+v, want choices %+v", st.Ostree, want)
	}
}
