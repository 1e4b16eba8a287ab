package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// newRunDir returns a run directory for a test and registers a consistency
// check of the store (if one was created) on cleanup.
func newRunDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() { checkConsistent(t, RuntimePath(dir)) })
	return dir
}

func checkConsistent(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Errorf("consistency check: open %s: %v", path, err)
		return
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return checkSchema(tx)
	})
	if err != nil {
		t.Errorf("consistency check of %s: %v", path, err)
	}
}

func TestRuntimeRoundTrip(t *testing.T) {
	run := newRunDir(t)
	if err := ViewRuntime(run, func(*RuntimeTx) error { return nil }); !errors.Is(err, ErrNotExist) {
		t.Fatalf("view of missing store: %v, want ErrNotExist", err)
	}
	id := &StagedID{OSName: "fedora", Checksum: "ab", Serial: 2}
	err := UpdateRuntime(run, func(tx *RuntimeTx) error {
		if err := tx.PutBlob(BlobOrigStaged, []byte("orig")); err != nil {
			return err
		}
		if err := tx.AddPending("a/b", "c", ""); err != nil {
			return err
		}
		return tx.PutState(State{Staged: id, EtcState: EtcPrecomputed, EtcReason: "stage", PruneState: PrunePlanned, PruneObjects: 3})
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Dir(RuntimePath(run)))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("store dir mode: %v %v, want 0700", st.Mode(), err)
	}
	st, err = os.Stat(RuntimePath(run))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("store file mode: %v %v, want 0600", st.Mode(), err)
	}
	err = ViewRuntime(run, func(tx *RuntimeTx) error {
		s, err := tx.State()
		if err != nil {
			return err
		}
		if *s.Staged != *id || s.EtcState != EtcPrecomputed || s.PruneObjects != 3 {
			t.Errorf("state = %+v", s)
		}
		if got := tx.Blob(BlobOrigStaged); string(got) != "orig" {
			t.Errorf("blob = %q", got)
		}
		if p, n := tx.Pending(1); n != 2 || len(p) != 1 || p[0] != "a/b" {
			t.Errorf("pending = %q, %d", p, n)
		}
		h, err := tx.History()
		if err != nil {
			return err
		}
		if len(h) != 2 || h[0].To != EtcPrecomputed || h[1].To != PrunePlanned || h[0].Reason != "stage" {
			t.Errorf("history = %+v", h)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUpdateErrorDiscardsChanges(t *testing.T) {
	run := newRunDir(t)
	boom := errors.New("boom")
	UpdateRuntime(run, func(tx *RuntimeTx) error { return tx.PutState(State{EtcState: EtcSealed}) })
	err := UpdateRuntime(run, func(tx *RuntimeTx) error {
		tx.PutState(State{EtcState: EtcFallback})
		tx.AddPending("x")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	ViewRuntime(run, func(tx *RuntimeTx) error {
		s, _ := tx.State()
		if _, n := tx.Pending(0); s.EtcState != EtcSealed || n != 0 {
			t.Errorf("state after failed update: %+v pending %d", s, n)
		}
		return nil
	})
}

func TestHistoryIsBounded(t *testing.T) {
	run := newRunDir(t)
	for i := 0; i < HistoryLen+20; i++ {
		state := EtcDirty
		if i%2 == 0 {
			state = EtcSealed
		}
		if err := UpdateRuntime(run, func(tx *RuntimeTx) error {
			return tx.PutState(State{EtcState: state, EtcReason: fmt.Sprint(i)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	ViewRuntime(run, func(tx *RuntimeTx) error {
		h, err := tx.History()
		if err != nil || len(h) != HistoryLen || h[len(h)-1].Reason != fmt.Sprint(HistoryLen+19) {
			t.Errorf("history: %d entries, last %+v, err %v", len(h), h[len(h)-1], err)
		}
		return nil
	})
}

// A writer and readers at once: readers never block for long and always
// see a whole state (pending count and state counter written together).
func TestConcurrentReadersAndWriter(t *testing.T) {
	run := newRunDir(t)
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; i <= n; i++ {
			err := UpdateRuntime(run, func(tx *RuntimeTx) error {
				if err := tx.AddPending(fmt.Sprintf("p%03d", i)); err != nil {
					return err
				}
				return tx.PutState(State{PruneObjects: int64(i)})
			})
			if err != nil {
				errs <- err
				return
			}
		}
	}()
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				err := ViewRuntime(run, func(tx *RuntimeTx) error {
					s, err := tx.State()
					if err != nil {
						return err
					}
					if _, c := tx.Pending(0); int64(c) != s.PruneObjects {
						return fmt.Errorf("torn read: %d pending, state says %d", c, s.PruneObjects)
					}
					return nil
				})
				if err != nil && !errors.Is(err, ErrNotExist) {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCorruptAndWrongVersion(t *testing.T) {
	run := newRunDir(t)
	os.MkdirAll(filepath.Dir(RuntimePath(run)), 0o700)
	if err := os.WriteFile(RuntimePath(run), bytes.Repeat([]byte("garbage!"), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ViewRuntime(run, func(*RuntimeTx) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("garbage store: %v, want ErrCorrupt", err)
	}
	if err := UpdateRuntime(run, func(*RuntimeTx) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("garbage store update: %v, want ErrCorrupt", err)
	}
	// The documented reset.
	if err := Reset(RuntimePath(run)); err != nil {
		t.Fatal(err)
	}
	if err := UpdateRuntime(run, func(*RuntimeTx) error { return nil }); err != nil {
		t.Fatalf("after reset: %v", err)
	}
	// A future schema version is refused, not guessed at.
	db, err := bolt.Open(RuntimePath(run), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, []byte("99")) })
	db.Close()
	if err := ViewRuntime(run, func(*RuntimeTx) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("version 99: %v, want ErrCorrupt", err)
	}
	Reset(RuntimePath(run))
}

func TestUnsafeLocations(t *testing.T) {
	// A state directory that is a symlink.
	run := t.TempDir()
	other := t.TempDir()
	if err := os.Symlink(other, filepath.Join(run, "ostree-prefinalize")); err != nil {
		t.Fatal(err)
	}
	if err := UpdateRuntime(run, func(*RuntimeTx) error { return nil }); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("symlinked state dir: %v, want ErrUnsafe", err)
	}
	if _, err := os.Stat(filepath.Join(other, "state.db")); err == nil {
		t.Fatal("store created through a symlink")
	}
	// Writable by others.
	run2 := t.TempDir()
	dir := filepath.Join(run2, "ostree-prefinalize")
	os.Mkdir(dir, 0o700)
	os.Chmod(dir, 0o777)
	if err := UpdateRuntime(run2, func(*RuntimeTx) error { return nil }); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("world-writable state dir: %v, want ErrUnsafe", err)
	}
	// The store file itself a symlink.
	run3 := t.TempDir()
	dir3 := filepath.Join(run3, "ostree-prefinalize")
	os.Mkdir(dir3, 0o700)
	os.Symlink(filepath.Join(other, "x.db"), RuntimePath(run3))
	if err := UpdateRuntime(run3, func(*RuntimeTx) error { return nil }); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("symlinked store file: %v, want ErrUnsafe", err)
	}
}

func TestLockTimeout(t *testing.T) {
	run := newRunDir(t)
	UpdateRuntime(run, func(*RuntimeTx) error { return nil })
	old := LockTimeout
	LockTimeout = 100 * time.Millisecond
	defer func() { LockTimeout = old }()
	db, err := bolt.Open(RuntimePath(run), 0o600, nil) // holds the exclusive flock
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := UpdateRuntime(run, func(*RuntimeTx) error { return nil }); !errors.Is(err, ErrBusy) {
		t.Fatalf("held store: %v, want ErrBusy", err)
	}
}

func TestPersistedPlan(t *testing.T) {
	sysroot := t.TempDir()
	os.MkdirAll(filepath.Join(sysroot, "ostree"), 0o755)
	t.Cleanup(func() { checkConsistent(t, PlanPath(sysroot)) })
	if _, err := ReadPlan(sysroot); !errors.Is(err, ErrNotExist) {
		t.Fatalf("missing plan: %v", err)
	}
	p := PersistedPlan{Plan: bytes.Repeat([]byte{7}, 1<<20), RootsHash: "h", Staged: StagedID{OSName: "os", Serial: 1}, Objects: 5, Bytes: 6, CreatedAt: time.Unix(100, 0)}
	if err := WritePlan(sysroot, p); err != nil {
		t.Fatal(err)
	}
	got, err := ReadPlan(sysroot)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Plan, p.Plan) || got.RootsHash != "h" || got.Staged != p.Staged || got.Objects != 5 || !got.CreatedAt.Equal(p.CreatedAt) {
		t.Fatalf("plan round trip: %+v", got.Staged)
	}
	// A second write replaces it whole.
	p.Plan = []byte("small")
	if err := WritePlan(sysroot, p); err != nil {
		t.Fatal(err)
	}
	if got, _ := ReadPlan(sysroot); string(got.Plan) != "small" {
		t.Fatal("plan not replaced")
	}
	if _, err := os.Stat(PlanPath(sysroot) + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("temporary plan left behind")
	}
	if err := RemovePlan(sysroot); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPlan(sysroot); !errors.Is(err, ErrNotExist) {
		t.Fatalf("after remove: %v", err)
	}
}

// TestWritePlanFaults makes each step of the shared writer fail in turn
// (PlanFS): the old plan stays readable and whole, no temporary is left.
func TestWritePlanFaults(t *testing.T) {
	injected := errors.New("injected")
	saved := PlanFS
	t.Cleanup(func() { PlanFS = saved })
	for _, step := range []string{"chmod", "fsync", "rename"} {
		sysroot := t.TempDir()
		os.MkdirAll(filepath.Join(sysroot, "ostree"), 0o755)
		old := PersistedPlan{Plan: []byte("old"), RootsHash: "h", CreatedAt: time.Unix(1, 0)}
		PlanFS = saved
		if err := WritePlan(sysroot, old); err != nil {
			t.Fatal(err)
		}
		switch step {
		case "chmod":
			PlanFS.Chmod = func(*os.File, uint32) error { return injected }
		case "fsync":
			PlanFS.Fsync = func(*os.File) error { return injected }
		case "rename":
			PlanFS.Rename = func(int, string, string) error { return injected }
		}
		if err := WritePlan(sysroot, PersistedPlan{Plan: []byte("new"), CreatedAt: time.Unix(2, 0)}); !errors.Is(err, injected) {
			t.Fatalf("%s: error %v, want the injected one", step, err)
		}
		if got, err := ReadPlan(sysroot); err != nil || string(got.Plan) != "old" {
			t.Fatalf("%s: old plan not intact: %+v %v", step, got, err)
		}
		if _, err := os.Stat(PlanPath(sysroot) + ".tmp"); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: temporary plan left behind", step)
		}
	}
}

// FuzzReadPlan: whatever bytes sit at the plan's path, reading gives a plan
// or an error, never a panic or a hang.
func FuzzReadPlan(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.db")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0}, 8192))
	f.Fuzz(func(t *testing.T, data []byte) {
		sysroot := t.TempDir()
		dir := filepath.Dir(PlanPath(sysroot))
		os.MkdirAll(dir, 0o700)
		if err := os.WriteFile(PlanPath(sysroot), data, 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := ReadPlan(sysroot)
		if err == nil && p == nil {
			t.Fatal("nil plan without error")
		}
	})
}
