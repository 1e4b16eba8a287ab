package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fakeRoot makes a root with the SELinux config and a module store.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for rel, data := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func invoke(t *testing.T, root string, args ...string) (rc int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	rc = run(root, append([]string{"/usr/bin/semodule"}, args...), &o, &e)
	return rc, o.String(), e.String()
}

func read(t *testing.T, root, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func logLines(t *testing.T, root string) []string {
	t.Helper()
	return strings.Split(strings.TrimSuffix(read(t, root, logPath), "\n"), "\n")
}

const store = "etc/selinux/targeted/active/modules"

var base = map[string]string{
	configPath:               "SELINUX=disabled\nSELINUXTYPE=targeted\n",
	store + "/100/base/cil":  "base\n",
	store + "/400/extra/cil": "extra\n",
	"usr/bin/semodule":       "binary",
	"etc/passwd":             "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nsvc:x:999:999::/var/lib/svc:/sbin/nologin\nbob:x:1001:1001::/var/home/bob:/bin/sh\n",
	// The booted host's /run is never empty: not the sandbox.
	"run/ostree-booted": "",
}

func uidField() string { return "uid=" + strconv.Itoa(os.Getuid()) }

func TestHelp(t *testing.T) {
	root := fakeRoot(t, base)
	rc, out, errOut := invoke(t, root, "--help")
	if rc != 0 || errOut != "" || !strings.Contains(out, "--rebuild-if-modules-changed") || !strings.Contains(out, "--refresh") {
		t.Fatalf("--help: rc %d, stdout %q, stderr %q", rc, out, errOut)
	}

	old := fakeRoot(t, map[string]string{noFlagPath: "", configPath: base[configPath]})
	rc, out, _ = invoke(t, old, "--help")
	if rc != 0 || !strings.Contains(out, "usage:") || strings.Contains(out, "--rebuild-if-modules-changed") || strings.Contains(out, "--refresh") {
		t.Fatalf("--help of an old semodule: rc %d, stdout %q", rc, out)
	}
	// An old semodule does not know the flags at all.
	for _, flag := range []string{"--rebuild-if-modules-changed", "--refresh"} {
		if rc, _, errOut := invoke(t, old, "-N", flag); rc != 2 || !strings.Contains(errOut, "unsupported") {
			t.Errorf("old semodule -N %s: rc %d, stderr %q", flag, rc, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(old, "etc/selinux/targeted")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old semodule rebuilt: %v", err)
	}
}

func TestUsageErrors(t *testing.T) {
	root := fakeRoot(t, base)
	for _, args := range [][]string{nil, {"-N"}, {"--rebuild-if-modules-changed"}, {"--rebuild-if-modules-changed", "-N"}, {"-B"}, {"--help", "x"}} {
		if rc, out, errOut := invoke(t, root, args...); rc != 2 || out != "" || !strings.Contains(errOut, "usage:") {
			t.Errorf("%q: rc %d, stdout %q, stderr %q", args, rc, out, errOut)
		}
	}
	if got := len(logLines(t, root)); got != 6 {
		t.Errorf("%d log lines, want one per invocation (6)", got)
	}
}

func TestRebuildThenNoRebuild(t *testing.T) {
	for _, flag := range []string{"--rebuild-if-modules-changed", "--refresh"} {
		t.Run(flag, func(t *testing.T) {
			root := fakeRoot(t, base)
			rc, out, errOut := invoke(t, root, "-N", flag)
			if rc != 0 || out != "" || errOut != "" {
				t.Fatalf("rc %d, stdout %q, stderr %q", rc, out, errOut)
			}
			// The digest, computed independently from the documented format.
			h := sha256.New()
			h.Write([]byte("f 12:100/base/cil 5:base\n"))
			h.Write([]byte("f 13:400/extra/cil 6:extra\n"))
			digest := hex.EncodeToString(h.Sum(nil))
			want := map[string]string{
				"etc/selinux/targeted/policy/policy.33":                      "policy from modules " + digest + "\n",
				"etc/selinux/targeted/contexts/files/file_contexts.homedirs": "/home/alice(/.*)? user_home_t\n/var/home/bob(/.*)? user_home_t\n",
				store + ".checksum":        digest,
				markerPath:                 digest,
				"etc/selinux/semodule.log": "semodule -N " + flag + " " + uidField() + " sandbox=no\n",
			}
			for rel, data := range want {
				if got := read(t, root, rel); got != data {
					t.Errorf("%s = %q, want %q", rel, got, data)
				}
			}
			for _, rel := range []string{"etc/selinux/targeted/policy", "etc/selinux/targeted/contexts", "etc/selinux/targeted/contexts/files", "var/lib/fake-semodule"} {
				fi, err := os.Stat(filepath.Join(root, rel))
				if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 || !fi.ModTime().Equal(FixedTime) {
					t.Errorf("created directory %s: %v, %v", rel, fi, err)
				}
			}

			// Same modules: nothing is written but the log.
			before := snapshot(t, root)
			if rc, out, errOut := invoke(t, root, "-N", flag); rc != 0 || out != "" || errOut != "" {
				t.Fatalf("second run: rc %d, stdout %q, stderr %q", rc, out, errOut)
			}
			after := snapshot(t, root)
			for rel, v := range before {
				if rel != logPath && after[rel] != v {
					t.Errorf("%s changed without a module change", rel)
				}
			}
			if len(after) != len(before) {
				t.Errorf("files appeared without a module change: %d -> %d", len(before), len(after))
			}
			if got := logLines(t, root); len(got) != 2 || got[0] != got[1] {
				t.Errorf("log: %q", got)
			}

			// A module change (a new symlink counts) rebuilds again.
			if err := os.Symlink("../100/base", filepath.Join(root, store, "400/link")); err != nil {
				t.Fatal(err)
			}
			if rc, _, errOut := invoke(t, root, "-N", flag); rc != 0 {
				t.Fatalf("third run: rc %d, stderr %q", rc, errOut)
			}
			h.Reset()
			h.Write([]byte("f 12:100/base/cil 5:base\n"))
			h.Write([]byte("f 13:400/extra/cil 6:extra\n"))
			h.Write([]byte("l 8:400/link 11:../100/base"))
			if got, want := read(t, root, store+".checksum"), hex.EncodeToString(h.Sum(nil)); got != want {
				t.Errorf("checksum after adding a symlink %s, want %s", got, want)
			}
		})
	}
}

// snapshot maps every regular file under root to its content and mtime.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		m[filepath.ToSlash(rel)] = string(b) + "@" + fi.ModTime().String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEmptyStoreAndNoPasswd(t *testing.T) {
	root := fakeRoot(t, map[string]string{configPath: "SELINUXTYPE=mls\n"})
	if rc, _, errOut := invoke(t, root, "-N", "--refresh"); rc != 0 {
		t.Fatalf("rc %d, stderr %q", rc, errOut)
	}
	empty := sha256.Sum256(nil)
	if got := read(t, root, "etc/selinux/mls/active/modules.checksum"); got != hex.EncodeToString(empty[:]) {
		t.Errorf("checksum of a missing store %s", got)
	}
	if got := read(t, root, "etc/selinux/mls/contexts/files/file_contexts.homedirs"); got != "" {
		t.Errorf("homedirs without passwd %q", got)
	}
	if got := logLines(t, root); len(got) != 1 || got[0] != "semodule -N --refresh "+uidField()+" sandbox=no" {
		t.Errorf("log %q", got)
	}
}

func TestFailures(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		want  string
	}{
		"FAIL":          {map[string]string{configPath: "SELINUXTYPE=targeted\n", store + "/400/x/FAIL": ""}, "semodule: Failed!\n"},
		"no config":     {map[string]string{}, "reading SELinux config"},
		"no type":       {map[string]string{configPath: "SELINUX=enforcing\n"}, "no SELINUXTYPE"},
		"bad type":      {map[string]string{configPath: "SELINUXTYPE=../x\n"}, "bad SELINUXTYPE"},
		"bad passwd":    {map[string]string{configPath: "SELINUXTYPE=t\n", "etc/passwd": "root:x:0:0\n"}, "/etc/passwd line 1"},
		"bad passwd id": {map[string]string{configPath: "SELINUXTYPE=t\n", "etc/passwd": "a:x:z:0::/h:/bin/sh\n"}, `uid "z"`},
	} {
		t.Run(name, func(t *testing.T) {
			root := fakeRoot(t, tc.files)
			rc, out, errOut := invoke(t, root, "-N", "--rebuild-if-modules-changed")
			if rc != 1 || out != "" || !strings.Contains(errOut, tc.want) {
				t.Fatalf("rc %d, stdout %q, stderr %q, want exit 1 and %q", rc, out, errOut, tc.want)
			}
			if _, err := os.Stat(filepath.Join(root, markerPath)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("rebuilt marker after a failure: %v", err)
			}
			if got := logLines(t, root); len(got) != 1 {
				t.Errorf("log %q", got)
			}
		})
	}
}

func TestLogSandboxAndFixedTimes(t *testing.T) {
	// Inside bwrap: /usr/bin/semodule present and /run empty.
	root := fakeRoot(t, map[string]string{"usr/bin/semodule": "", configPath: "SELINUXTYPE=targeted\n"})
	if err := os.Mkdir(filepath.Join(root, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	invoke(t, root, "--help")
	var o, e bytes.Buffer
	run(root, []string{"semodule", "-N", "--rebuild-if-modules-changed"}, &o, &e)
	want := []string{
		"semodule --help " + uidField() + " sandbox=yes",
		"semodule -N --rebuild-if-modules-changed " + uidField() + " sandbox=yes",
	}
	if got := logLines(t, root); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("log %q, want %q", got, want)
	}
	// Every file written has mode 0644 and the fixed time; no temporaries.
	err := filepath.WalkDir(filepath.Join(root, "etc/selinux"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".fake-semodule") {
			t.Errorf("temporary file left: %s", p)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && filepath.Base(p) != "config" && (fi.Mode().Perm() != 0o644 || !fi.ModTime().Equal(FixedTime)) {
			t.Errorf("%s: mode %v, mtime %v", p, fi.Mode(), fi.ModTime())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	if fi, err := os.Stat(filepath.Join(root, "etc/selinux/targeted")); err != nil || !fi.ModTime().Equal(FixedTime) {
		t.Errorf("created directory etc/selinux/targeted: %v, %v", fi, err)
	}

	// Two roots run at different times end identical (times included).
	other := fakeRoot(t, map[string]string{"usr/bin/semodule": "", configPath: "SELINUXTYPE=targeted\n"})
	if err := os.Mkdir(filepath.Join(other, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	invoke(t, other, "--help")
	run(other, []string{"semodule", "-N", "--rebuild-if-modules-changed"}, &o, &e)
	a, b := snapshot(t, filepath.Join(root, "etc/selinux")), snapshot(t, filepath.Join(other, "etc/selinux"))
	delete(a, "config")
	delete(b, "config")
	if len(a) != len(b) || len(a) != 4 {
		t.Fatalf("snapshots %v vs %v", a, b)
	}
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s differs: %q vs %q", k, v, b[k])
		}
	}
}

// FuzzParse: the two decoders of files the program reads never panic, and
// what they accept is well-formed.
func FuzzParse(f *testing.F) {
	f.Add([]byte("SELINUX=disabled\nSELINUXTYPE=targeted\n"))
	f.Add([]byte(base["etc/passwd"]))
	f.Add([]byte("SELINUXTYPE=../x\n"))
	f.Add([]byte("a:x:4294967296:0::/h:/bin/sh\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if typ, err := parseType(b); err == nil && (typ == "" || strings.ContainsAny(typ, "/\x00") || typ == "." || typ == "..") {
			t.Errorf("parseType accepted %q", typ)
		}
		if out, err := parseHomedirs(b); err == nil {
			for _, l := range strings.SplitAfter(string(out), "\n") {
				if l != "" && !strings.HasSuffix(l, "(/.*)? user_home_t\n") {
					t.Errorf("homedirs line %q", l)
				}
			}
		}
	})
}
