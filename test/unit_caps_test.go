package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// unitCaps reads a unit's CapabilityBoundingSet= as setpriv's
// --bounding-set argument ("-all,+sys_admin,...").
func unitCaps(t *testing.T, unit string) string {
	t.Helper()
	u := readUnit(t, "../dist/systemd/"+unit)
	vals := u["Service.CapabilityBoundingSet"]
	if len(vals) != 1 {
		t.Fatalf("%s: CapabilityBoundingSet %q, want one line", unit, vals)
	}
	arg := "-all"
	for _, c := range strings.Fields(vals[0]) {
		arg += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	return arg
}

// sandboxed is argv run as the unit runs it: no new privileges, and only
// the unit's capability bounding set.
func sandboxed(t *testing.T, unit string, argv ...string) []string {
	return append([]string{"setpriv", "--no-new-privs", "--bounding-set", unitCaps(t, unit), "--"}, argv...)
}

// TestUnitCapabilitiesSuffice runs stage, the watcher and the seal with
// only the capabilities their units keep (and no new privileges), on an
// /etc with what needs them: a user's private directory and file (read
// and owned by someone else), a setuid file, a file capability; the seal
// still gives ostree's exact merge. (The rest of the sandbox, the
// read-only file system, needs systemd itself.)
func TestUnitCapabilitiesSuffice(t *testing.T) {
	harness.RequireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) is needed")
	}
	tag := fmt.Sprintf("OSTREE_PREFINALIZE_CAPS_TAG=%d-%d", os.Getpid(), time.Now().UnixNano())
	w := newWatchEnv(t, watchOptions{seed: 18, env: []string{tag}})
	edit := func(t *testing.T, etc, _ string) {
		priv := filepath.Join(etc, "private.d")
		writeFile(t, filepath.Join(priv, "secret.conf"), "only the user reads this\n")
		must(t, os.Chmod(filepath.Join(priv, "secret.conf"), 0o600))
		must(t, os.Chmod(priv, 0o700))
		must(t, os.Lchown(filepath.Join(priv, "secret.conf"), 1000, 1000))
		must(t, os.Lchown(priv, 1000, 1000))
		writeFile(t, filepath.Join(etc, "suid-tool"), "#!/bin/sh\n")
		must(t, os.Chmod(filepath.Join(etc, "suid-tool"), 0o4755))
		writeFile(t, filepath.Join(etc, "cap-tool"), "tool\n")
		// security.capability v2: cap_net_bind_service (bit 10) permitted.
		capv2 := []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		if err := unix.Setxattr(filepath.Join(etc, "cap-tool"), "security.capability", capv2, 0); err != nil {
			t.Fatal(err)
		}
	}
	// stage again, sandboxed, with a change made before it.
	w.edit(edit)
	w.b.MustRun(sandboxed(t, "ostree-prefinalize-stage.service", "ostree-prefinalize", "stage")...)
	p := w.startWatcherArgv(sandboxed(t, "ostree-prefinalize-watch.service", "ostree-prefinalize", "-v", "watch"))
	w.edit(func(t *testing.T, etc, _ string) {
		writeFile(t, filepath.Join(etc, "private.d", "later.conf"), "later\n")
		must(t, os.Lchown(filepath.Join(etc, "private.d", "later.conf"), 1000, 1000))
		must(t, os.Chmod(filepath.Join(etc, "suid-tool"), 0o6755))
	})
	pollUntil(t, "the watcher applied the later edit", 30*time.Second, hasContent(filepath.Join(w.staged.EtcDir(), "private.d", "later.conf"), "later\n"))
	want := w.expected("")
	// setpriv exec'd the watcher: signal it by its own command line.
	pid := findTagged(tag, "ostree-prefinalize")
	if pid == 0 {
		t.Fatal("the sandboxed watcher is not found in /proc")
	}
	must(t, syscall.Kill(pid, syscall.SIGTERM))
	if _, stderr, err := p.Wait(); err != nil {
		t.Fatalf("sandboxed watcher after SIGTERM: %v\n%s", err, stderr)
	}
	out := w.b.MustRun(sandboxed(t, "ostree-prefinalize-seal.service", "ostree-prefinalize", "finalize", "--pre")...)
	if st := w.status(); st.Etc.State != "sealed" || !st.Etc.Takeover {
		t.Fatalf("status after the sandboxed --pre: %+v\n%s", st.Etc, out)
	}
	w.sealAndCompare(want) // seals again (nothing left to do), then ostree finalizes

}
