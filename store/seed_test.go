package store

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWriteSeedPlan regenerates testdata/plan-v1.db, the fuzz seed of a
// valid persisted plan, when OSTREE_PREFINALIZE_REGEN=1.
func TestWriteSeedPlan(t *testing.T) {
	if os.Getenv("OSTREE_PREFINALIZE_REGEN") != "1" {
		t.Skip("set OSTREE_PREFINALIZE_REGEN=1 to regenerate testdata")
	}
	sysroot := t.TempDir()
	os.Mkdir(filepath.Join(sysroot, "ostree"), 0o755)
	if err := WritePlan(sysroot, PersistedPlan{Plan: []byte("seed plan body"), RootsHash: "abc", Objects: 1, Bytes: 2, CreatedAt: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(PlanPath(sysroot))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join("testdata", "plan-v1.db"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}
