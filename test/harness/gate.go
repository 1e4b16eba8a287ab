// Package harness builds throwaway ostree sysroots with the real ostree
// command and runs commands inside a "booted" mount namespace, so tests can
// compare ostree-prefinalize against ostree itself.
package harness

import (
	"os"
	"os/exec"
	"testing"
)

// E2EEnv is the explicit switch for tests that need root or the ostree
// command. `make test` and .ci/run turn it on; with it on, a missing
// requirement fails the test instead of skipping it, so CI can never pass
// by silently skipping what it was meant to check.
const E2EEnv = "OSTREE_PREFINALIZE_E2E"

// Enabled reports whether the end-to-end switch is on.
func Enabled() bool { return os.Getenv(E2EEnv) == "1" }

// RequireOstree skips the test when the switch is off, and fails it when the
// switch is on but the ostree command is missing.
func RequireOstree(t testing.TB) {
	t.Helper()
	if !Enabled() {
		t.Skipf("end-to-end test: set %s=1 (make test does)", E2EEnv)
	}
	if _, err := exec.LookPath("ostree"); err != nil {
		t.Fatalf("%s=1 but the ostree command is missing: %v (run make deps)", E2EEnv, err)
	}
}

// RequireRoot is RequireOstree plus root (for unshare, chattr, chown).
func RequireRoot(t testing.TB) {
	t.Helper()
	RequireOstree(t)
	if os.Geteuid() != 0 {
		t.Fatalf("%s=1 but not running as root", E2EEnv)
	}
}
