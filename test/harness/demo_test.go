package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStandalone(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	s, err := NewStandalone("sa")
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	d := s.TempDir()
	if err := os.WriteFile(filepath.Join(d, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Cleanup(func() { order = append(order, 1) })
	s.Cleanup(func() { order = append(order, 2) })
	err = s.Run(func() {
		s.Fatalf("stop %d", 7)
		t.Error("Fatalf returned")
	})
	if err == nil || err.Error() != "stop 7" || !s.Failed() {
		t.Errorf("Run: %v, failed %v", err, s.Failed())
	}
	// An unimplemented testing.TB method is an error, not a crash.
	if err := s.Run(func() { s.Chdir("/") }); err == nil || !strings.Contains(err.Error(), "panic") {
		t.Errorf("unimplemented method: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if len(order) != 2 || order[0] != 2 || order[1] != 1 {
		t.Errorf("cleanups ran %v, want last first", order)
	}
	if _, err := os.Stat(s.Base()); !os.IsNotExist(err) {
		t.Errorf("base not removed: %v", err)
	}
}
