package test

// The whole lifecycle against each oracle (the real ostree 2022.7 and 2025.2), on two identical
// copies of one booted machine: on A, ostree-prefinalize (stage, edits,
// finalize --pre, real finalize-staged, finalize --post, next boot,
// cleanup); on B, ostree alone (the same edits, real finalize-staged, next
// boot, real `ostree admin cleanup`). The new /etc and the object set must
// be equal, and ostree must not have merged on A.

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

func statusOf(t *testing.T, b *harness.BootedHost) lifecycle.Status {
	t.Helper()
	var st lifecycle.Status
	out := b.MustRun("ostree-prefinalize", "status", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

func TestLifecycleEndToEnd(t *testing.T) { harness.ForEachOracle(t, testLifecycleEndToEnd) }

func testLifecycleEndToEnd(t *testing.T) {
	e := newParityEnv(t)
	ctx := context.Background()
	tr := harness.NewTree(harness.TreeOptions{Seed: 1})
	e.commit("testos/main", tr)
	e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	tr2, _ := tr.Churn(0.2, 2)
	e.commit("testos/main", tr2)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	b := e.boot(d)
	tr3, _ := tr2.Churn(0.2, 3)
	editsBefore := `set -e
echo changed >> /etc/hostname
echo new > /etc/added.conf
mkdir -p /etc/newdir/sub && echo x > /etc/newdir/sub/f && ln -s ../added.conf /etc/newdir/link
`
	b.MustShell(editsBefore)
	e.commit("testos/main", tr3)
	b.Stage("testos/main")
	ostreeOnly := b.Copy(t)

	if st := statusOf(t, b); st.Staged == nil || st.Etc.State != "none" {
		t.Fatalf("status before stage: %+v", st)
	}
	// status names the oracle's ostree and the choice made from its version.
	oracle := harness.OracleOf(t)
	flag := "--rebuild-if-modules-changed"
	if oracle.AtLeast(2023, 2) {
		flag = "--refresh"
	}
	if o := statusOf(t, b).Ostree; o == nil || o.Version != oracle.Version() || o.SELinuxRefresh != flag {
		t.Fatalf("status: ostree %+v, want version %s refreshing with %s", o, oracle.Version(), flag)
	}
	out := b.MustRun("ostree-prefinalize", "stage", "--json")
	var sr lifecycle.StageResult
	if err := json.Unmarshal([]byte(out), &sr); err != nil {
		t.Fatalf("stage --json: %v\n%s", err, out)
	}
	if sr.Etc.State != "precomputed" || !sr.Etc.Takeover || sr.Prune.State != "planned" || sr.Prune.Objects == 0 {
		t.Fatalf("stage: %s", out)
	}
	st := statusOf(t, b)
	if st.Etc.State != "precomputed" || !st.Etc.Takeover || st.Prune.State != "planned" {
		t.Fatalf("status after stage: %+v", st)
	}
	// The prune figures' one vocabulary: planned_* beside the older names.
	if p := sr.Prune.PlannedFigures; p.PlannedObjects != sr.Prune.Objects || p.PlannedBytes != sr.Prune.Bytes || st.Prune.PlannedFigures != p {
		t.Fatalf("planned figures: stage %+v (objects %d, bytes %d), status %+v", p, sr.Prune.Objects, sr.Prune.Bytes, st.Prune.PlannedFigures)
	}
	var pj map[string]any
	if err := json.Unmarshal([]byte(b.MustRun("ostree-prefinalize", "plan", "--json")), &pj); err != nil ||
		pj["planned_objects"] == nil || pj["planned_objects"] != pj["objects"] || pj["planned_bytes"] != pj["bytes"] {
		t.Fatalf("plan --json: planned_objects %v planned_bytes %v, objects %v bytes %v (%v)", pj["planned_objects"], pj["planned_bytes"], pj["objects"], pj["bytes"], err)
	}
	// Idempotent: a second stage keeps the takeover.
	b.MustRun("ostree-prefinalize", "stage")
	if st := statusOf(t, b); !st.Etc.Takeover {
		t.Fatalf("second stage lost the takeover: %+v", st)
	}

	editsAfter := `set -e
echo later >> /etc/added.conf
rm -f /etc/newdir/link
echo more > /etc/after.conf
`
	b.MustShell(editsAfter)
	ostreeOnly.MustShell(editsBefore[:0] + editsAfter)

	out = b.MustRun("ostree-prefinalize", "finalize", "--pre")
	if st := statusOf(t, b); st.Etc.State != "sealed" || !st.Etc.Takeover {
		t.Fatalf("status after --pre: %+v\n%s", st, out)
	}
	res, err := b.FinalizeStaged(ctx)
	if err != nil {
		t.Fatalf("finalize-staged: %v", err)
	}
	if res.Merged {
		t.Fatalf("ostree merged /etc although we took over:\n%s", res.Stdout)
	}
	out = b.MustRun("ostree-prefinalize", "finalize", "--post")
	if !strings.Contains(out, "Plan persisted") {
		t.Fatalf("finalize --post: %s", out)
	}
	pending := statusOf(t, b).Cleanup
	if !pending.Pending || pending.PlannedObjects != pending.Objects || pending.PlannedBytes != pending.Bytes || pending.PlannedObjects == 0 {
		t.Fatalf("status after --post: %+v", pending)
	}

	ores, err := ostreeOnly.FinalizeStaged(ctx)
	if err != nil || !ores.Merged {
		t.Fatalf("ostree-only finalize: merged=%v err=%v\n%s", ores.Merged, err, ores.Stdout)
	}

	// /etc of the new deployment, entry by entry.
	nextA := e.s.NextBoot(t, e.opts)
	nextB := ostreeOnly.Sysroot.NextBoot(t, e.opts)
	if diff := etcManifest(t, nextA.EtcDir(), false).Diff(etcManifest(t, nextB.EtcDir(), false)); diff != nil {
		t.Fatalf("/etc differs from ostree's own merge:\n%s", strings.Join(diff, "\n"))
	}

	before := parityObjects(t, e.s.Repo)
	out = nextA.MustRun("ostree-prefinalize", "cleanup", "--json", "--foreground")
	var cr lifecycle.CleanupResult
	if err := json.Unmarshal([]byte(out), &cr); err != nil || cr.Objects == 0 {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	nextB.MustRun("ostree", "admin", "cleanup")
	after := parityObjects(t, e.s.Repo)
	want := parityObjects(t, ostreeOnly.Sysroot.Repo)
	if d1, d2 := setMinus(after, want), setMinus(want, after); len(d1)+len(d2) > 0 {
		t.Fatalf("objects after our cleanup differ from ostree's: extra %v, missing %v", d1, d2)
	}
	if len(before)-len(after) != cr.Objects {
		t.Fatalf("cleanup says %d deleted, %d went", cr.Objects, len(before)-len(after))
	}
	if cr.DeletedObjects != int64(cr.Objects) || cr.DeletedBytes != int64(cr.Bytes) || cr.PlannedFigures != pending.PlannedFigures {
		t.Fatalf("cleanup figures: %+v %+v (objects %d, bytes %d), pending was %+v", cr.DeletedFigures, cr.PlannedFigures, cr.Objects, cr.Bytes, pending.PlannedFigures)
	}
	nextA.MustRun("ostree", "fsck")
	if st := statusOf(t, nextA); st.Cleanup.Pending {
		t.Fatalf("cleanup still pending: %+v", st)
	}
}
