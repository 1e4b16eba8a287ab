package lifecycle

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/durable"
)

// The staged state, its backup and the finalization lock are written
// through the one durable writer (stateFS): a failure at any step before
// the rename leaves the old file as it was (for the lock: no lock) and no
// temporary behind, and is returned.
func TestStateWriteFaults(t *testing.T) {
	boom := errors.New("injected")
	steps := map[string]func(fs *durable.FS){
		"fsync":  func(fs *durable.FS) { fs.Fsync = func(*os.File) error { return boom } },
		"chmod":  func(fs *durable.FS) { fs.Chmod = func(*os.File, uint32) error { return boom } },
		"rename": func(fs *durable.FS) { fs.Rename = func(int, string, string) error { return boom } },
	}
	for name, inject := range steps {
		t.Run(name, func(t *testing.T) {
			old := stateFS
			defer func() { stateFS = old }()
			fs := durable.Real()
			inject(&fs)
			stateFS = fs
			run := t.TempDir()
			if err := os.MkdirAll(filepath.Join(run, "ostree"), 0o755); err != nil {
				t.Fatal(err)
			}
			staged := stagedPath(run)
			if err := os.WriteFile(staged, []byte("ostree's"), 0o644); err != nil {
				t.Fatal(err)
			}
			sysroot := t.TempDir()
			if err := os.Mkdir(filepath.Join(sysroot, "ostree"), 0o755); err != nil {
				t.Fatal(err)
			}
			cfg := &Config{Sysroot: sysroot, RunDir: run, LockTimeout: time.Minute}
			if err := replaceStaged(t.Context(), cfg, []byte("ours"), []byte("ostree's")); !errors.Is(err, boom) {
				t.Fatalf("replaceStaged: %v, want the injected failure", err)
			}
			if b, _ := os.ReadFile(staged); string(b) != "ostree's" {
				t.Fatalf("staged state is %q after a failed write", b)
			}
			if err := lockFinalization(cfg); !errors.Is(err, boom) {
				t.Fatalf("lockFinalization: %v, want the injected failure", err)
			}
			names, _ := os.ReadDir(filepath.Join(run, "ostree"))
			if len(names) != 1 {
				t.Fatalf("left in %s: %v (want only the staged state: no lock, no temporary)", run, names)
			}
		})
	}
}
