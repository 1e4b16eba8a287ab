package ostree

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// srOstree runs the real ostree command; the test fails on error.
func srOstree(t *testing.T, args ...string) string {
	t.Helper()
	out, err := srOstreeErr(args...)
	if err != nil {
		t.Fatalf("ostree %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func srOstreeErr(args ...string) (string, error) {
	cmd := exec.Command("ostree", args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), err
}

// srRealSysroot makes a sysroot with the ostree command: init-fs --modern,
// a stateroot, and a repo with branch os/x committed from a minimal tree.
func srRealSysroot(t *testing.T, osname string) string {
	t.Helper()
	harness.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "sysroot")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Deployment roots are immutable; TempDir's cleanup needs them mutable.
	t.Cleanup(func() { _ = exec.Command("chattr", "-R", "-i", filepath.Join(dir, "ostree/deploy")).Run() })
	srOstree(t, "admin", "init-fs", "--modern", dir)
	srOstree(t, "admin", "--sysroot="+dir, "os-init", osname)
	srCommit(t, dir, "os/x", "one")
	return dir
}

// srCommit commits a bootable tree whose usr/etc/version.conf holds v.
func srCommit(t *testing.T, sysroot, branch, v string) {
	t.Helper()
	tree := t.TempDir()
	for rel, content := range map[string]string{
		"usr/lib/os-release":                  "ID=test\nVERSION_ID=" + v + "\n",
		"usr/lib/modules/5.0.0/vmlinuz":       "kernel " + v,
		"usr/lib/modules/5.0.0/initramfs.img": "initramfs " + v,
		"usr/etc/version.conf":                v + "\n",
		"usr/etc/passwd":                      "root:x:0:0:root:/root:/bin/sh\n",
	} {
		srWriteFile(t, tree, rel, content)
	}
	srOstree(t, "--repo="+filepath.Join(sysroot, "ostree/repo"), "commit", "-b", branch, "--tree=dir="+tree, "-s", v)
}

type srStatusEntry struct {
	line    string // "OS CSUM.SERIAL"
	booted  bool
	suffix  string // " (staged)" etc.
	pinned  bool
	refspec string // "origin: none" → "-"
}

var srStatusLine = regexp.MustCompile(`^([* ]) (\S+) ([0-9a-f]{64}\.[0-9]+)( \((staged|pending|rollback)\))?$`)

// srStatus parses `ostree admin status` (2022.7 has no --json).
func srStatus(t *testing.T, out string) []srStatusEntry {
	t.Helper()
	var es []srStatusEntry
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if l == "No deployments." {
			return nil
		}
		if m := srStatusLine.FindStringSubmatch(l); m != nil {
			es = append(es, srStatusEntry{line: m[2] + " " + m[3], booted: m[1] == "*", suffix: m[4]})
			continue
		}
		if len(es) == 0 || !strings.HasPrefix(l, "    ") {
			t.Fatalf("unexpected status line %q in:\n%s", l, out)
		}
		e := &es[len(es)-1]
		switch a := strings.TrimPrefix(l, "    "); {
		case a == "Pinned: yes":
			e.pinned = true
		case a == "origin: none":
			e.refspec = "-"
		case strings.HasPrefix(a, "origin refspec: "):
			e.refspec = strings.TrimPrefix(a, "origin refspec: ")
		}
	}
	return es
}

// srCheckAgainstOstree loads dir and compares it with what ostree says and
// with the files ostree wrote.
func srCheckAgainstOstree(t *testing.T, dir string, wantKargs map[string][]string) *Sysroot {
	t.Helper()
	want := srStatus(t, srOstree(t, "admin", "--sysroot="+dir, "status"))
	s, err := LoadSysroot(dir, LoadOptions{NoBooted: true})
	if err != nil {
		t.Fatalf("LoadSysroot: %v", err)
	}
	if len(s.Deployments) != len(want) {
		t.Fatalf("%d deployments, ostree has %d: %v vs %v", len(s.Deployments), len(want), s.Deployments, want)
	}
	for i, d := range s.Deployments {
		w := want[i]
		ref, ok := d.OriginRefspec()
		if !ok {
			ref = "-"
			if d.Origin != nil {
				ref = "" // "<unknown origin type>", not produced here
			}
		}
		if d.String() != w.line || d.Pinned != w.pinned || d.Booted != w.booted || ref != w.refspec || d.Index != i {
			t.Errorf("deployment %d: %s pinned=%v booted=%v refspec=%q; ostree: %s pinned=%v booted=%v refspec=%q",
				i, d, d.Pinned, d.Booted, ref, w.line, w.pinned, w.booted, w.refspec)
		}
		// The files ostree wrote: the deployment dir, the boot link to it,
		// the kernel under /boot/ostree/OS-BOOTCSUM, the kargs it was given.
		real, err := filepath.EvalSymlinks(filepath.Join(dir, fmt.Sprintf("ostree/boot.%d/%s/%s/%d", s.BootVersion, d.OSName, d.BootCsum, d.BootSerial)))
		if err != nil || real != s.DeploymentDir(d) {
			t.Errorf("%s: boot link resolves to %q (%v), want %s", d, real, err, s.DeploymentDir(d))
		}
		if _, err := os.Stat(filepath.Join(dir, "boot/ostree", d.OSName+"-"+d.BootCsum, "vmlinuz-5.0.0")); err != nil {
			t.Errorf("%s: bootcsum %s: %v", d, d.BootCsum, err)
		}
		var kargs []string
		for _, k := range d.Kargs {
			if !strings.HasPrefix(k, "ostree=") {
				kargs = append(kargs, k)
			}
		}
		if wk, ok := wantKargs[d.OSName]; ok && strings.Join(kargs, " ") != strings.Join(wk, " ") {
			t.Errorf("%s: kargs %q, deployed with %q", d, kargs, wk)
		}
		if arg, _ := d.Entry.OstreeArg(); arg != fmt.Sprintf("/ostree/boot.%d/%s/%s/%d", s.BootVersion, d.OSName, d.BootCsum, d.BootSerial) {
			t.Errorf("%s: ostree=%s", d, arg)
		}
	}
	if len(s.Deployments) == 0 {
		return s // init-fs writes no boot/loader: bootversion 0
	}
	for rel, v := range map[string]int{"boot/loader": s.BootVersion} {
		if target, err := os.Readlink(filepath.Join(dir, rel)); err != nil || target != fmt.Sprintf("loader.%d", v) {
			t.Errorf("%s → %q (%v), loaded bootversion %d", rel, target, err, v)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, fmt.Sprintf("ostree/boot.%d", s.BootVersion))); err != nil || target != fmt.Sprintf("boot.%d.%d", s.BootVersion, s.SubBootVersion) {
		t.Errorf("ostree/boot.%d → %q (%v), loaded subbootversion %d", s.BootVersion, target, err, s.SubBootVersion)
	}
	return s
}

func TestE2ESysrootMatchesOstree(t *testing.T) {
	dir := srRealSysroot(t, "os")
	kargs := map[string][]string{"os": {"root=/dev/sda1"}, "other": {"root=/dev/sda2", "quiet"}}
	deploy := func(osname string, extra ...string) {
		args := []string{"admin", "--sysroot=" + dir, "deploy", "--os=" + osname}
		for _, k := range kargs[osname] {
			args = append(args, "--karg="+k)
		}
		srOstree(t, append(append(args, extra...), "os/x")...)
	}
	s := srCheckAgainstOstree(t, dir, kargs) // no deployments yet
	if len(s.Deployments) != 0 {
		t.Fatalf("fresh sysroot has %d deployments", len(s.Deployments))
	}
	deploy("os")
	srCheckAgainstOstree(t, dir, kargs)
	srCommit(t, dir, "os/x", "two")
	deploy("os")
	srCheckAgainstOstree(t, dir, kargs)
	srOstree(t, "admin", "--sysroot="+dir, "pin", "1")
	s = srCheckAgainstOstree(t, dir, kargs)
	if !s.Deployments[1].Pinned {
		t.Errorf("pin 1 did not pin deployment 1")
	}
	srCommit(t, dir, "os/x", "three")
	deploy("os")
	deploy("os") // same commit again: serial 1
	s = srCheckAgainstOstree(t, dir, kargs)
	if len(s.Deployments) < 3 {
		t.Errorf("pinned deployment dropped: %v", s.Deployments)
	}
	srOstree(t, "admin", "--sysroot="+dir, "os-init", "other")
	deploy("other")
	srCheckAgainstOstree(t, dir, kargs)
	srOstree(t, "admin", "--sysroot="+dir, "undeploy", "1")
	srCheckAgainstOstree(t, dir, kargs)
	srOstree(t, "admin", "--sysroot="+dir, "pin", "--unpin", "1")
	srCheckAgainstOstree(t, dir, kargs)
}

// TestE2EOriginsMatchOstree puts each seed origin file on a real deployment
// and checks that ostree and LoadSysroot agree: both refuse it, or both read
// the same pinned flag and refspec.
func TestE2EOriginsMatchOstree(t *testing.T) {
	dir := srRealSysroot(t, "os")
	srOstree(t, "admin", "--sysroot="+dir, "deploy", "--os=os", "os/x")
	s, err := LoadSysroot(dir, LoadOptions{NoBooted: true})
	if err != nil {
		t.Fatal(err)
	}
	originPath := s.OriginPath(s.Deployments[0])
	seeds, err := filepath.Glob("testdata/sysroot/origin/*")
	if err != nil || len(seeds) == 0 {
		t.Fatalf("no seeds: %v", err)
	}
	extra := map[string]string{
		"crlf":            "[origin]\r\nrefspec=a\r\n[libostree-transient]\r\npinned=true\r\n",
		"no-final-nl-cr":  "[origin]\nrefspec=a\r",
		"vtab-value":      "[libostree-transient]\npinned=true\v\n[origin]\nrefspec=x\n",
		"group-trailing":  "[origin] \t\nrefspec=x\n",
		"group-cr":        "[origin]\r\r\nrefspec=x\n",
		"key-space-mid":   "[origin]\nref spec=x\nrefspec=y\n",
		"key-lead-space":  "[origin]\n refspec=x\n",
		"empty":           "",
		"only-comment":    "# x\n",
		"pinned-TRUE":     "[libostree-transient]\npinned=TRUE\n",
		"pinned-0":        "[libostree-transient]\npinned=0\n",
		"encoding-ok":     "[origin]\nEncoding=utf-8\nrefspec=x\n",
		"encoding-later":  "[a]\n[origin]\nEncoding=latin1\nrefspec=x\n",
		"dup-group":       "[origin]\nrefspec=x\n[other]\n[origin]\nrefspec=y\n",
		"trailing-escape": "[origin]\nrefspec=x\\\n",
	}
	type origin struct{ name, content string }
	var all []origin
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, origin{filepath.Base(p), string(b)})
	}
	for n, c := range extra {
		all = append(all, origin{n, c})
	}
	for _, o := range all {
		if err := os.WriteFile(originPath, []byte(o.content), 0o644); err != nil {
			t.Fatal(err)
		}
		out, oerr := srOstreeErr("admin", "--sysroot="+dir, "status")
		s, err := LoadSysroot(dir, LoadOptions{NoBooted: true})
		if (oerr != nil) != (err != nil) {
			t.Errorf("origin %s %q: ostree error %v (%s); ours %v", o.name, o.content, oerr, strings.TrimSpace(out), err)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), originPath) {
				t.Errorf("origin %s: error %v does not name the file or wrap ErrCorrupt", o.name, err)
			}
			continue
		}
		w := srStatus(t, out)[0]
		d := s.Deployments[0]
		ref, ok := d.OriginRefspec()
		if !ok {
			ref = "<unknown origin type>"
		}
		if w.refspec == "" {
			w.refspec = "<unknown origin type>"
			if i := strings.Index(out, "origin: "); i >= 0 {
				w.refspec = strings.TrimSpace(strings.SplitN(out[i+len("origin: "):], "\n", 2)[0])
			}
		}
		if d.Pinned != w.pinned || ref != w.refspec {
			t.Errorf("origin %s %q: pinned=%v refspec=%q; ostree pinned=%v refspec=%q", o.name, o.content, d.Pinned, ref, w.pinned, w.refspec)
		}
	}
}

// TestE2EEntryOrderMatchesOstree rewrites the "version" lines of real BLS
// entries and checks that the deployment order equals ostree's, including
// entries without version (ostree's asymmetric comparator) and ties.
func TestE2EEntryOrderMatchesOstree(t *testing.T) {
	dir := srRealSysroot(t, "os")
	srOstree(t, "admin", "--sysroot="+dir, "os-init", "b")
	srOstree(t, "admin", "--sysroot="+dir, "os-init", "c")
	srOstree(t, "admin", "--sysroot="+dir, "os-init", "d")
	srOstree(t, "admin", "--sysroot="+dir, "os-init", "e")
	for _, osname := range []string{"os", "b", "c", "d", "e"} {
		srOstree(t, "admin", "--sysroot="+dir, "deploy", "--os="+osname, "os/x")
	}
	s, err := LoadSysroot(dir, LoadOptions{NoBooted: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Deployments) != 5 {
		t.Fatalf("%d deployments", len(s.Deployments))
	}
	entriesDir := filepath.Join(dir, fmt.Sprintf("boot/loader.%d/entries", s.BootVersion))
	files := map[string]string{}
	for _, d := range s.Deployments {
		files[d.OSName] = filepath.Join(entriesDir, d.Entry.Name)
	}
	versionSets := [][]string{
		{"1", "2", "3", "4", "5"},
		{"", "", "", "", ""},
		{"", "9", "", "10", ""},
		{"1.10", "1.9", "01", "1", "1"},
		{"7", "7", "7", "", "7"},
		{"a", "a1", "a01", "a001", "b"},
	}
	for _, vs := range versionSets {
		for i, osname := range []string{"os", "b", "c", "d", "e"} {
			b, err := os.ReadFile(files[osname])
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, l := range strings.Split(string(b), "\n") {
				if !strings.HasPrefix(l, "version ") {
					lines = append(lines, l)
				}
			}
			if vs[i] != "" {
				lines = append([]string{"version " + vs[i]}, lines...)
			}
			if err := os.WriteFile(files[osname], []byte(strings.Join(lines, "\n")), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want := srStatus(t, srOstree(t, "admin", "--sysroot="+dir, "status"))
		s, err := LoadSysroot(dir, LoadOptions{NoBooted: true})
		if err != nil {
			t.Fatal(err)
		}
		var got, wantL []string
		for i, d := range s.Deployments {
			got = append(got, d.String())
			wantL = append(wantL, want[i].line)
		}
		if strings.Join(got, "\n") != strings.Join(wantL, "\n") {
			t.Errorf("versions %q: order\n%s\nostree:\n%s", vs, strings.Join(got, "\n"), strings.Join(wantL, "\n"))
		}
	}
}

// TestE2EStagedMatchesOstree boots a deployment (harness booted namespace),
// stages with the real ostree, then loads the sysroot from outside with the
// run directory and the booted deployment's device/inode: staged, booted and
// merge deployments and the list order must equal ostree's view inside.
func TestE2EStagedMatchesOstree(t *testing.T) {
	harness.RequireRoot(t)
	h := harness.NewSysroot(t, harness.Options{OS: "os"})
	tree := harness.NewTree(harness.TreeOptions{Seed: 1})
	h.Commit("os/x", tree)
	h.Deploy("os", "os/x", "root=/dev/sda1")
	h.Commit("os/x", tree.Clone().Set("usr/etc/two.conf", harness.Text("2\n")))
	h.Deploy("os", "os/x", "root=/dev/sda1")
	h.Pin(1)
	// a second stateroot, kept whatever happens to "os"
	h.InitOS("other")
	h.Deploy("other", "os/x", "root=/dev/sda2")

	var booted harness.Deployment
	for _, d := range h.Deployments() {
		if d.OS == "os" {
			booted = d // the newest "os" deployment
			break
		}
	}
	b := h.Boot(t, booted, harness.BootOptions{})
	h.Commit("os/x", tree.Clone().Set("usr/etc/three.conf", harness.Text("3\n")))

	check := func(wantLocked bool) {
		t.Helper()
		inside := b.Deployments()
		t.Logf("ostree admin status inside:\n%s", b.Status())
		s, err := LoadSysroot(h.Path, LoadOptions{RunDir: b.RunDir, BootedDevIno: srDevIno(t, booted.Dir)})
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Deployments) != len(inside) {
			t.Fatalf("%d deployments, ostree inside has %d:\n%s", len(s.Deployments), len(inside), b.Status())
		}
		for i, d := range s.Deployments {
			w := inside[i]
			if d.OSName != w.OS || d.Checksum.String() != w.Checksum || d.Serial != w.Serial ||
				d.Staged != w.Staged || d.Booted != w.Booted || d.Pinned != w.Pinned {
				t.Errorf("deployment %d: %s staged=%v booted=%v pinned=%v; ostree: %s %s.%d staged=%v booted=%v pinned=%v",
					i, d, d.Staged, d.Booted, d.Pinned, w.OS, w.Checksum, w.Serial, w.Staged, w.Booted, w.Pinned)
			}
			if r, _ := d.OriginRefspec(); r != w.Origin {
				t.Errorf("deployment %d: refspec %q, ostree %q", i, r, w.Origin)
			}
		}
		if s.Booted == nil || s.Booted.DeployName() != booted.Name() || s.Booted.OSName != booted.OS {
			t.Errorf("booted %v, want %s", s.Booted, booted.Name())
		}
		if s.Staged == nil || s.Staged != s.Deployments[0] || s.StagedState == nil {
			t.Fatalf("no staged deployment first: %v", s.Deployments)
		}
		if id := s.StagedState.Target; id.OSName != s.Staged.OSName || id.Checksum != s.Staged.Checksum || id.Serial != s.Staged.Serial {
			t.Errorf("staged state target %+v vs staged %s", id, s.Staged)
		}
		// ostree's merge deployment for a stage from the booted stateroot is
		// the booted deployment.
		if s.StagedState.Merge == nil || s.Merge != s.Booted {
			t.Errorf("merge %v (state %+v), booted %v", s.Merge, s.StagedState.Merge, s.Booted)
		}
		if strings.Join(s.Staged.Kargs, " ") != "root=/dev/sda1" && s.StagedState.HasKargs {
			t.Errorf("staged kargs %q", s.Staged.Kargs)
		}
		if s.StagedLocked != wantLocked {
			t.Errorf("locked %v, want %v", s.StagedLocked, wantLocked)
		}
		// Without the booted root, as ostree, there is no staged deployment.
		s2, err := LoadSysroot(h.Path, LoadOptions{RunDir: b.RunDir})
		if err != nil || s2.Staged != nil || s2.Booted != nil || len(s2.Deployments) != len(inside)-1 {
			t.Errorf("from outside, unbooted: %v err %v", s2, err)
		}
	}
	b.Stage("os/x")
	check(false)
	b.MustRun("ostree", "admin", "deploy", "--stage", "--lock-finalization", "--os=os", "os/x")
	check(true)
}
