package test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// TestCleanupRefusesLiveRoot (issue 11, defence in depth): a persisted plan
// written by root with the right roots hash that also names a live commit
// (the one ref testos/main points to, a deployment's): cleanup refuses
// the whole plan, deletes nothing, and the real `ostree fsck` is clean.
func TestCleanupRefusesLiveRoot(t *testing.T) {
	f := newCleanupFixture(t, 40, nil)
	repo := f.e.s.Repo
	out, _, err := harness.RunOstree(f.e.ctx, "rev-parse", "--repo="+repo, "testos/main")
	if err != nil {
		t.Fatal(err)
	}
	live, err := ostree.ParseChecksum(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	pp, err := store.ReadPlan(f.e.s.Path)
	if err != nil {
		t.Fatal(err)
	}
	entries := append(f.plan.Entries(), prune.Entry{Checksum: live, Type: ostree.ObjCommit, Size: 1})
	bad, err := prune.NewPlan(f.plan.Roots, f.plan.FileSuffix, entries)
	if err != nil {
		t.Fatal(err)
	}
	if bad.RootsHash != pp.RootsHash {
		t.Fatalf("the crafted plan's roots hash %s differs from the persisted %s", bad.RootsHash, pp.RootsHash)
	}
	enc, err := bad.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	pp.Plan, pp.Objects = enc, pp.Objects+1
	if err := store.WritePlan(f.e.s.Path, *pp); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := f.b.Run(f.e.ctx, "ostree-prefinalize", "cleanup", "--foreground")
	var ce *harness.CmdError
	if !errors.As(err, &ce) || !strings.Contains(stderr, "live root") {
		t.Fatalf("cleanup of a plan naming a live commit: %v\n%s\n%s", err, stdout, stderr)
	}
	t.Logf("refused: %s", strings.TrimSpace(cmdErrorLines(stderr)[0]))
	unchangedObjects(t, parityObjects(t, repo), f.before, "after the refused cleanup")
	faultFsck(t, repo, "after the refused cleanup")
}
