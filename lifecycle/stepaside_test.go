package lifecycle

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

func TestStepAsideReasons(t *testing.T) {
	run := t.TempDir()
	write := func(rel string, b []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(run, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(run, rel), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if r := transientEtcReason(run); r != "" {
		t.Errorf("no ostree-booted: %q", r)
	}
	write("ostree-booted", nil)
	if r := transientEtcReason(run); r != "" {
		t.Errorf("empty ostree-booted (older ostree): %q", r)
	}
	meta, err := ostree.EncodeVardict([]ostree.VariantEntry{{Key: "transient-etc", Type: "s", Value: ostree.EncodeString("/run/ostree/transient-etc.x")}})
	if err != nil {
		t.Fatal(err)
	}
	write("ostree-booted", meta)
	if r := transientEtcReason(run); !strings.Contains(r, "/etc is transient") {
		t.Errorf("transient etc: %q", r)
	}
	// Unreadable metadata: do less (no takeover), and say so.
	write("ostree-booted", []byte("garbage that is no a{sv}"))
	if r := transientEtcReason(run); !strings.Contains(r, "cannot tell whether /etc is transient") {
		t.Errorf("garbage: %q", r)
	}
	if r := bootcComposefsReason(run); r != "" {
		t.Errorf("no bootc state: %q", r)
	}
	write("composefs/staged-deployment", []byte("x"))
	if r := bootcComposefsReason(run); !strings.Contains(r, "bootc's composefs backend") {
		t.Errorf("bootc composefs: %q", r)
	}
}
