package prefinalize_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	prefinalize "github.com/ostree-prefinalize/ostree-prefinalize"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// TestAPIOnInitFS runs the example's calls on a sysroot made by the real
// `ostree admin init-fs --modern` and `os-init`.
func TestAPIOnInitFS(t *testing.T) {
	harness.RequireOstree(t)
	ctx := context.Background()
	sysroot := filepath.Join(t.TempDir(), "sysroot")
	if err := os.Mkdir(sysroot, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"admin", "init-fs", "--modern", sysroot}, {"admin", "os-init", "--sysroot=" + sysroot, "testos"}} {
		if _, _, err := harness.RunOstree(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
	opts := prefinalize.Options{Sysroot: sysroot, RunDir: t.TempDir()}
	res, err := prefinalize.Stage(ctx, opts)
	if err != nil || res.Staged != nil {
		t.Fatalf("Stage: %+v, %v", res, err)
	}
	st, err := prefinalize.Status(ctx, opts)
	if err != nil || st.Staged != nil || st.Etc.State != "none" || st.Prune.State != "none" || st.Cleanup.Pending {
		t.Fatalf("Status: %+v, %v", st, err)
	}
	p, err := prefinalize.Plan(ctx, opts)
	if err != nil || p.Staged || p.Plan.Stats.Objects != 0 || len(p.Deployments) != 0 {
		t.Fatalf("Plan: %+v, %v", p, err)
	}
	cr, err := prefinalize.Cleanup(ctx, opts)
	if err != nil || cr.Pending {
		t.Fatalf("Cleanup: %+v, %v", cr, err)
	}
}
