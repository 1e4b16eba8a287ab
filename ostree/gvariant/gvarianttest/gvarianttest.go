// Package gvarianttest holds the test helpers shared by the GVariant codec's
// tests and ostree's decoder tests: GLib's own GVariant reader and writer as
// an oracle (glibvariant.py through python3-gi), and an error check.
package gvarianttest

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// Oracle drives glibvariant.py (beside this file): GLib's own GVariant
// reader and writer through python3-gi (Debian package python3-gi), the
// reference the decoder and encoder are checked against.
type Oracle struct {
	in  io.WriteCloser
	out *bufio.Reader
}

const systemPython = "/usr/bin/python3" // python3-gi installs into the system python only

// Script is the path of glibvariant.py (also used by ostree/testdata/regen.sh).
func Script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "glibvariant.py")
}

// RequireGLib starts the oracle. Like harness.RequireOstree it skips when
// the end-to-end switch is off and fails when it is on and GLib's python
// bindings are missing.
func RequireGLib(t testing.TB) *Oracle {
	t.Helper()
	harness.RequireOstree(t)
	if out, err := exec.Command(systemPython, "-c", "from gi.repository import GLib").CombinedOutput(); err != nil {
		t.Fatalf("%s=1 but %s cannot import GLib (install python3-gi): %v: %s", harness.E2EEnv, systemPython, err, out)
	}
	cmd := exec.Command(systemPython, Script())
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Wait()
	})
	return &Oracle{in: in, out: bufio.NewReader(out)}
}

func (g *Oracle) call(t testing.TB, req map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.in.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	line, err := g.out.ReadBytes('\n')
	if err != nil {
		t.Fatalf("glib oracle: %v", err)
	}
	var resp map[string]any
	if err := json.Unmarshal(line, &resp); err != nil {
		t.Fatalf("glib oracle reply %q: %v", line, err)
	}
	if e, ok := resp["error"]; ok {
		t.Fatalf("glib oracle on %s: %v", b, e)
	}
	return resp
}

// Serialize has GLib parse text as a value of type typ and returns its bytes.
func (g *Oracle) Serialize(t testing.TB, typ, text string) []byte {
	t.Helper()
	b, err := hex.DecodeString(g.call(t, map[string]any{"op": "parse", "type": typ, "text": text})["hex"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Read has GLib read data as typ: its printed form and whether it is normal.
func (g *Oracle) Read(t testing.TB, typ string, data []byte) (string, bool) {
	t.Helper()
	r := g.call(t, map[string]any{"op": "read", "type": typ, "hex": hex.EncodeToString(data)})
	return r["print"].(string), r["normal"].(bool)
}

// Vardict has GLib's g_variant_builder build an a{sv} from [key, type, text] triples.
func (g *Oracle) Vardict(t testing.TB, entries [][3]string) []byte {
	t.Helper()
	b, err := hex.DecodeString(g.call(t, map[string]any{"op": "vardict", "entries": entries})["hex"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ReadFile reads a test data file, failing the test when it cannot.
func ReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WantIs fails t unless err wraps target (gvariant.ErrCorrupt, which
// ostree.ErrCorrupt is too) and mentions substr.
func WantIs(t *testing.T, err, target error, substr string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error containing %q, got nil", substr)
	}
	if !errors.Is(err, target) {
		t.Fatalf("error %q does not wrap %v", err, target)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not mention %q", err, substr)
	}
}

// Lookup has GLib's g_variant_lookup_value find key in the a{sv} data: its
// printed form, or nil when GLib finds no such key.
func (g *Oracle) Lookup(t testing.TB, data []byte, key string) any {
	t.Helper()
	return g.call(t, map[string]any{"op": "lookup", "hex": hex.EncodeToString(data), "key": key})["print"]
}
