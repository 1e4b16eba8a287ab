package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// TestDemo runs `make demo`'s program (test/demo) as make demo does, with
// its temporary directory under the test's, and checks that it told the
// whole story, checked A against B, and removed everything it made.
func TestDemo(t *testing.T) {
	harness.RequireRoot(t)
	bin := parityBuild(t)
	demo := filepath.Join(t.TempDir(), "demo")
	if out, err := exec.Command("go", "build", "-o", demo, "github.com/ostree-prefinalize/ostree-prefinalize/test/demo").CombinedOutput(); err != nil {
		t.Fatalf("go build demo: %v\n%s", err, out)
	}
	tmp := t.TempDir()
	cmd := exec.Command(demo, "-bin", bin)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"ostree's own merge taken over",
		"identical to ostree's own merge",
		"the repositories hold the same",
		"ostree fsck is clean",
		"What it saved",
		"Cleaning up",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("demo left %v in its temporary directory", left)
	}
}
