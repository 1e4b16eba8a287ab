package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	t.Setenv(logModeEnv, "text")
	var o, e bytes.Buffer
	code = runWith(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

// TestExitUsage: bad usage is exit status 2 with one error line and a
// pointer to --help, before anything is read.
func TestExitUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"},
		{"status", "--bogus"},
		{"status", "extra-arg"},
		{"nosuchcommand"},
		{"--sysroot"},
		{"plan", "--json", "--list"},
		{"finalize"},
		{"finalize", "--pre", "--post"},
		{"finalize", "--pre", "--delete-now"},
		{"status", "--quiet"},
		{"status", "--metrics-file", "a", "--textfile-dir", "b"},
		{"cleanup", "--foreground=maybe"},
	} {
		code, out, errOut := runCLI(t, append(args, "--sysroot=/nonexistent-l6")...)
		if args[len(args)-1] == "--sysroot" {
			code, out, errOut = runCLI(t, args...)
		}
		if code != exitUsage {
			t.Errorf("%q: exit %d, want 2\nstdout: %s\nstderr: %s", args, code, out, errOut)
			continue
		}
		lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "ostree-prefinalize: ") || !strings.Contains(lines[1], "--help") {
			t.Errorf("%q: stderr is not one error line plus a --help hint:\n%s", args, errOut)
		}
		if out != "" {
			t.Errorf("%q: printed on stdout: %s", args, out)
		}
	}
}

func TestHelpAndCompletion(t *testing.T) {
	code, out, _ := runCLI(t, "--help")
	if code != 0 || !strings.Contains(out, "Exit status") {
		t.Errorf("--help: exit %d\n%s", code, out)
	}
	for _, c := range []string{"stage", "watch", "finalize", "cleanup", "status", "plan"} {
		code, out, _ := runCLI(t, c, "--help")
		if code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%s --help: exit %d\n%s", c, code, out)
		}
	}
	for sh, marker := range map[string]string{"bash": "__start_ostree-prefinalize", "zsh": "#compdef ostree-prefinalize", "fish": "complete -c ostree-prefinalize"} {
		code, out, errOut := runCLI(t, "completion", sh)
		if code != 0 || !strings.Contains(out, marker) {
			t.Errorf("completion %s: exit %d, no %q\n%s", sh, code, marker, errOut)
		}
	}
	// The shell asks the binary itself for the candidates.
	code, out, _ = runCLI(t, "__complete", "fin")
	if code != 0 || !strings.Contains(out, "finalize") {
		t.Errorf("__complete fin: exit %d\n%s", code, out)
	}
}

// newInitFS makes an empty sysroot with the real `ostree admin init-fs`.
func newInitFS(t *testing.T) (sysroot, runDir string) {
	t.Helper()
	harness.RequireOstree(t)
	sysroot = filepath.Join(t.TempDir(), "sysroot")
	if err := os.Mkdir(sysroot, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := harness.RunOstree(context.Background(), "admin", "init-fs", "--modern", sysroot); err != nil {
		t.Fatal(err)
	}
	return sysroot, t.TempDir()
}

// TestExitNothing: with nothing staged or pending every command succeeds
// (exit 0) and says so.
func TestExitNothing(t *testing.T) {
	sysroot, runDir := newInitFS(t)
	g := []string{"--sysroot", sysroot, "--run-dir", runDir}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status"}, "Staged:   nothing"},
		{[]string{"stage"}, "Nothing staged."},
		{[]string{"plan"}, "Nothing staged"},
		{[]string{"plan", "--list"}, ""},
		{[]string{"plan", "--json"}, `"staged": false`},
		{[]string{"cleanup"}, "Nothing pending."},
		{[]string{"cleanup", "--json"}, `"pending": false`},
		{[]string{"finalize", "--pre"}, "Nothing staged."},
		{[]string{"finalize", "--post"}, "Nothing persisted"},
	} {
		code, out, errOut := runCLI(t, append(g, tc.args...)...)
		if code != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%q: exit %d, want 0 and %q\nstdout: %s\nstderr: %s", tc.args, code, tc.want, out, errOut)
		}
	}
	code, out, _ := runCLI(t, append(g, "status", "--json")...)
	var st lifecycle.Status
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Staged != nil || st.Etc.State != "none" || st.Prune.State != "none" || st.Cleanup.Pending {
		t.Errorf("status --json: exit %d, %v\n%s", code, err, out)
	}

	// Metrics for a timer: nothing on stdout, a parseable file.
	dir := t.TempDir()
	code, out, errOut := runCLI(t, append(g, "status", "--textfile-dir", dir, "--quiet")...)
	if code != 0 || out != "" {
		t.Fatalf("status --textfile-dir --quiet: exit %d\n%s%s", code, out, errOut)
	}
	b, err := os.ReadFile(filepath.Join(dir, textfileName))
	if err != nil {
		t.Fatal(err)
	}
	m := parseExposition(t, b)
	if m["ostree_prefinalize_status_success"] != 1 || m["ostree_prefinalize_staged"] != 0 || m[`ostree_prefinalize_etc_state{state="none"}`] != 1 {
		t.Errorf("metrics: %v", m)
	}
}

// TestExitError: a failure is exit status 1 and one line on stderr; the
// metrics still say the status failed.
func TestExitError(t *testing.T) {
	sysroot, runDir := newInitFS(t)
	missing := filepath.Join(t.TempDir(), "missing")
	if err := os.WriteFile(filepath.Join(sysroot, "ostree/repo/config"), []byte("[core\nmode=bare\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(t.TempDir(), "m.prom")
	for _, args := range [][]string{
		{"--sysroot", missing, "status"},
		{"--sysroot", missing, "--run-dir", runDir, "stage"},
		{"--sysroot", sysroot, "--run-dir", runDir, "plan"},
		{"--sysroot", sysroot, "--run-dir", runDir, "status", "--metrics-file", mf, "--quiet"},
	} {
		code, out, errOut := runCLI(t, args...)
		if code != exitError {
			t.Errorf("%q: exit %d, want 1\nstdout: %s\nstderr: %s", args, code, out, errOut)
			continue
		}
		last := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
		l := last[len(last)-1]
		if !strings.HasPrefix(l, "ostree-prefinalize: ") || len(l) < len("ostree-prefinalize: x") {
			t.Errorf("%q: last stderr line %q is not the error", args, l)
		}
	}
	b, err := os.ReadFile(mf)
	if err != nil {
		t.Fatal(err)
	}
	if m := parseExposition(t, b); m["ostree_prefinalize_status_success"] != 0 {
		t.Errorf("metrics after a failed status: %v", m)
	}
}
