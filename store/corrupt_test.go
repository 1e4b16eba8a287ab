package store

import (
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFlippedBytesNeverCrash flips random bytes of a valid persisted plan:
// every read returns the original plan or an error (bbolt faults included),
// never a crash and never a different plan.
func TestFlippedBytesNeverCrash(t *testing.T) {
	seedFile, err := os.ReadFile("testdata/plan-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewSource(seed))
	sysroot := t.TempDir()
	os.MkdirAll(filepath.Dir(PlanPath(sysroot)), 0o700)
	corrupt := 0
	for i := 0; i < 6000; i++ {
		b := append([]byte(nil), seedFile...)
		for j := 0; j < 1+r.Intn(8); j++ {
			b[r.Intn(len(b))] = byte(r.Intn(256))
		}
		if err := os.WriteFile(PlanPath(sysroot), b, 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := ReadPlan(sysroot)
		if err != nil {
			corrupt++
			continue
		}
		if string(p.Plan) != "seed plan body" {
			t.Fatalf("iteration %d: corrupted file read back as a different plan %q", i, p.Plan)
		}
	}
	t.Logf("%d of 6000 corrupted files refused", corrupt)
}

// FuzzViewRuntime: whatever bytes sit at the runtime store's path, reading
// every part of it gives values or an error, never a panic, a crash or a
// runaway allocation.
func FuzzViewRuntime(f *testing.F) {
	if b, err := os.ReadFile("testdata/runtime-v1.db"); err == nil {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		run := t.TempDir()
		os.MkdirAll(filepath.Dir(RuntimePath(run)), 0o700)
		if err := os.WriteFile(RuntimePath(run), data, 0o600); err != nil {
			t.Fatal(err)
		}
		ViewRuntime(run, func(tx *RuntimeTx) error {
			if _, err := tx.State(); err != nil {
				return err
			}
			tx.Blob(BlobPlan)
			tx.Pending(0)
			_, err := tx.History()
			return err
		})
	})
}
