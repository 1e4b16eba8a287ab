package test

// Issue 15 (quiet I/O), the /etc side: `stage` and a watcher batch write
// the staged etc with no fsync and no syncfs; the seal (`finalize --pre`)
// issues exactly one syncfs, which makes everything written before it
// durable. Run in process with the function-field FS counting every call.

import (
	"context"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

func TestQuietIOEtc(t *testing.T) {
	shape := harness.Shape{Files: 40, Dirs: 6, Depth: 2, MinSize: 16, MaxSize: 400, Symlinks: 4}
	f := newFaultEtcEnv(t, shape, nil)
	ctx := context.Background()
	c := f.b.Copy(t)
	count := func(what string, run func(cfg lifecycle.Config) error) map[string]int {
		t.Helper()
		cfs := &countingFS{counts: map[string]int{}}
		if err := run(inProcess(t, c, cfs.fs())); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("calls of %s: %v", what, cfs.counts)
		return cfs.counts
	}
	n := count("stage", func(cfg lifecycle.Config) error {
		r, err := lifecycle.Stage(ctx, cfg)
		if err == nil && (r.Etc.State != store.EtcPrecomputed || r.Etc.Written == 0) {
			t.Fatalf("stage: %+v", r.Etc)
		}
		return err
	})
	if n["Syncfs"] != 0 || n["Fsync"] != 0 || n["WriteFileAtomic"] == 0 {
		t.Fatalf("stage: %d syncfs, %d fsync, %d files written: want no flush", n["Syncfs"], n["Fsync"], n["WriteFileAtomic"])
	}
	faultEdit(t, c.EtcDir(), 2)
	n = count("a watcher batch", func(cfg lifecycle.Config) error {
		w, err := lifecycle.Refresh(ctx, cfg, nil)
		if err == nil && w == 0 {
			t.Fatal("the batch wrote nothing")
		}
		return err
	})
	if n["Syncfs"] != 0 || n["Fsync"] != 0 {
		t.Fatalf("watcher batch: %d syncfs, %d fsync: want none", n["Syncfs"], n["Fsync"])
	}
	n = count("finalize --pre", func(cfg lifecycle.Config) error {
		r, err := lifecycle.Pre(ctx, cfg)
		if err == nil && r.Etc.State != store.EtcSealed {
			t.Fatalf("pre: %+v", r.Etc)
		}
		return err
	})
	if n["Syncfs"] != 1 || n["Fsync"] != 0 {
		t.Fatalf("seal: %d syncfs, %d fsync: want exactly one syncfs", n["Syncfs"], n["Fsync"])
	}
}
