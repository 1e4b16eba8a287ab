// Command genseeds regenerates the store's fuzz seeds in the directory
// given as its argument (go generate ./store/ writes store/testdata):
// plan-v1.db, a valid persisted plan, and runtime-v1.db, a runtime store
// with a state, a pending path and a blob.
package main

import (
	"os"
	"path/filepath"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/seedgen"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

func main() { seedgen.Main(run) }

func run(out string) error {
	tmp, err := os.MkdirTemp("", "genseeds")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	sysroot := filepath.Join(tmp, "sysroot")
	if err := os.MkdirAll(filepath.Join(sysroot, "ostree"), 0o755); err != nil {
		return err
	}
	p := store.PersistedPlan{Plan: []byte("seed plan body"), RootsHash: "abc", Objects: 1, Bytes: 2, CreatedAt: time.Unix(1, 0)}
	if err := store.WritePlan(sysroot, p); err != nil {
		return err
	}
	if err := copyFile(store.PlanPath(sysroot), filepath.Join(out, "plan-v1.db")); err != nil {
		return err
	}

	run := filepath.Join(tmp, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		return err
	}
	err = store.UpdateRuntime(run, func(tx *store.RuntimeTx) error {
		tx.PutBlob(store.BlobPlan, []byte("plan"))
		tx.AddPending("a", "b/c")
		return tx.PutState(store.State{Staged: &store.StagedID{OSName: "os", Checksum: "ab", Serial: 1}, EtcState: store.EtcPrecomputed, PruneState: store.PrunePlanned})
	})
	if err != nil {
		return err
	}
	return copyFile(store.RuntimePath(run), filepath.Join(out, "runtime-v1.db"))
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}
