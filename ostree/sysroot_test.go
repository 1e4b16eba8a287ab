package ostree

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeSysroot writes, without ostree, the on-disk layout ostree 2022.7
// leaves behind: repo, deployment directories, origins, boot links and BLS
// entries. It is for error paths and ordering that the real command cannot
// be made to produce; the e2e tests check the layout itself against ostree.
type fakeSysroot struct {
	t    *testing.T
	dir  string
	bv   int // bootversion
	sub  int // subbootversion
	deps []fakeDep
}

type fakeDep struct {
	os       string
	csum     string
	serial   int
	bootcsum string
	version  string // "" = no version line
	origin   string // "" = no origin file
	options  string // extra options before ostree=
}

func srCsum(c byte) string { return strings.Repeat(string(c), 64) }

func newFakeSysroot(t *testing.T) *fakeSysroot {
	t.Helper()
	return &fakeSysroot{t: t, dir: t.TempDir(), bv: 1}
}

func (f *fakeSysroot) add(d fakeDep) *fakeSysroot {
	if d.bootcsum == "" {
		d.bootcsum = srCsum('b')
	}
	f.deps = append(f.deps, d)
	return f
}

func (f *fakeSysroot) write() string {
	t := f.t
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mkdir := func(rel string) { must(os.MkdirAll(filepath.Join(f.dir, rel), 0o755)) }
	file := func(rel, s string) {
		mkdir(filepath.Dir(rel))
		must(os.WriteFile(filepath.Join(f.dir, rel), []byte(s), 0o644))
	}
	link := func(rel, target string) {
		mkdir(filepath.Dir(rel))
		must(os.Symlink(target, filepath.Join(f.dir, rel)))
	}
	file("ostree/repo/config", "[core]\nrepo_version=1\nmode=bare\n")
	mkdir("ostree/repo/objects")
	mkdir("ostree/deploy")
	link("boot/loader", fmt.Sprintf("loader.%d", f.bv))
	link(fmt.Sprintf("ostree/boot.%d", f.bv), fmt.Sprintf("boot.%d.%d", f.bv, f.sub))
	mkdir(fmt.Sprintf("boot/loader.%d/entries", f.bv))
	for i, d := range f.deps {
		name := fmt.Sprintf("%s.%d", d.csum, d.serial)
		mkdir(fmt.Sprintf("ostree/deploy/%s/deploy/%s", d.os, name))
		if d.origin != "" {
			file(fmt.Sprintf("ostree/deploy/%s/deploy/%s.origin", d.os, name), d.origin)
		}
		// bootserial = position among same os+bootcsum, as ostree numbers them
		bs := 0
		for _, o := range f.deps[:i] {
			if o.os == d.os && o.bootcsum == d.bootcsum {
				bs++
			}
		}
		link(fmt.Sprintf("ostree/boot.%d.%d/%s/%s/%d", f.bv, f.sub, d.os, d.bootcsum, bs),
			fmt.Sprintf("../../../deploy/%s/deploy/%s", d.os, name))
		entry := fmt.Sprintf("title %s\n", d.os)
		if d.version != "" {
			entry += "version " + d.version + "\n"
		}
		entry += fmt.Sprintf("options %sostree=/ostree/boot.%d/%s/%s/%d\n", d.options, f.bv, d.os, d.bootcsum, bs)
		file(fmt.Sprintf("boot/loader.%d/entries/ostree-%d-%s.conf", f.bv, i+1, d.os), entry)
	}
	return f.dir
}

func srDevIno(t *testing.T, path string) *[2]uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return &[2]uint64{uint64(st.Dev), st.Ino}
}

func TestLoadSysrootOrderPinnedBooted(t *testing.T) {
	f := newFakeSysroot(t)
	f.add(fakeDep{os: "fedora", csum: srCsum('1'), serial: 0, version: "1", origin: "[origin]\nrefspec=os/x\n"})
	f.add(fakeDep{os: "fedora", csum: srCsum('2'), serial: 0, version: "10", options: "root=/dev/sda1  rw ",
		origin: "[origin]\nrefspec=a\\sb\n[libostree-transient]\npinned=true\n"})
	f.add(fakeDep{os: "other", csum: srCsum('3'), serial: 2, version: "2"})
	dir := f.write()
	booted := filepath.Join(dir, "ostree/deploy/fedora/deploy", srCsum('1')+".0")
	s, err := LoadSysroot(dir, LoadOptions{RunDir: t.TempDir(), BootedDevIno: srDevIno(t, booted)})
	if err != nil {
		t.Fatal(err)
	}
	if s.BootVersion != 1 || s.SubBootVersion != 0 {
		t.Errorf("bootversion %d.%d, want 1.0", s.BootVersion, s.SubBootVersion)
	}
	var got []string
	for i, d := range s.Deployments {
		if d.Index != i {
			t.Errorf("%s: index %d at position %d", d, d.Index, i)
		}
		got = append(got, fmt.Sprintf("%s %s.%d boot=%d pinned=%v booted=%v", d.OSName, d.Checksum.String()[:1], d.Serial, d.BootSerial, d.Pinned, d.Booted))
	}
	want := []string{
		"fedora 2.0 boot=1 pinned=true booted=false",
		"other 3.2 boot=0 pinned=false booted=false",
		"fedora 1.0 boot=0 pinned=false booted=true",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("deployments:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if s.Booted == nil || s.Booted != s.Deployments[2] {
		t.Errorf("booted = %v", s.Booted)
	}
	if s.Staged != nil || s.StagedState != nil {
		t.Errorf("staged without a staged file")
	}
	d := s.Deployments[0]
	if strings.Join(d.Kargs, "|") != "root=/dev/sda1||rw|ostree=/ostree/boot.1/fedora/"+srCsum('b')+"/1" {
		t.Errorf("kargs %q", d.Kargs)
	}
	if r, ok := d.OriginRefspec(); !ok || r != "a b" {
		t.Errorf("refspec %q %v", r, ok)
	}
	if s.Deployments[1].Origin != nil || s.Deployments[1].OriginFile != nil {
		t.Errorf("origin for a deployment without origin file")
	}
	if got, want := s.DeploymentDir(d), filepath.Join(dir, "ostree/deploy/fedora/deploy", srCsum('2')+".0"); got != want {
		t.Errorf("DeploymentDir %s, want %s", got, want)
	}
	if s.Repo == nil || s.Repo.Mode != ModeBare {
		t.Errorf("repo %+v", s.Repo)
	}
	if s.Find(d.ID()) != d {
		t.Errorf("Find(ID()) is not the deployment")
	}
}

func TestLoadSysrootNotBooted(t *testing.T) {
	f := newFakeSysroot(t)
	f.add(fakeDep{os: "os", csum: srCsum('1'), version: "1"})
	dir := f.write()
	run := t.TempDir()
	// ostree-booted in the run dir, but the sysroot is not "/": not booted.
	if err := os.WriteFile(filepath.Join(run, "ostree-booted"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := LoadSysroot(dir, LoadOptions{RunDir: run})
	if err != nil {
		t.Fatal(err)
	}
	if s.Booted != nil || len(s.Deployments) != 1 {
		t.Errorf("booted %v, %d deployments", s.Booted, len(s.Deployments))
	}
	// A booted root that matches no entry is ostree's "Unexpected state".
	_, err = LoadSysroot(dir, LoadOptions{RunDir: run, BootedDevIno: &[2]uint64{1, 1}})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("booted root matching nothing: %v", err)
	}
}

// TestLoadSysrootVersionOrder checks the asymmetric comparator for entries
// without version, reproduced with GLib's merge sort. The expected order
// was obtained from ostree admin status on the same layout
// (TestE2EEntryOrderMatchesOstree checks it live).
func TestLoadSysrootVersionOrder(t *testing.T) {
	f := newFakeSysroot(t)
	for i, v := range []string{"", "9", "", "10", "1.10", "1.9", "01", ""} {
		f.add(fakeDep{os: "os", csum: srCsum("0123456789abcdef"[i]), version: v})
	}
	dir := f.write()
	s, err := LoadSysroot(dir, LoadOptions{NoBooted: true})
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for _, d := range s.Deployments {
		v, _ := d.Entry.Get("version")
		vs = append(vs, v)
	}
	// strverscmp descending: 10 > 9 > 1.10 > 1.9 > 01; the version-less
	// ones come after, in an order that depends on directory order.
	if got := strings.Join(vs[:5], ","); got != "10,9,1.10,1.9,01" {
		t.Errorf("versions %q", vs)
	}
}

func TestLoadSysrootStaged(t *testing.T) {
	f := newFakeSysroot(t)
	f.add(fakeDep{os: "os", csum: srCsum('1'), version: "2", origin: "[origin]\nrefspec=os/x\n"})
	f.add(fakeDep{os: "os", csum: srCsum('2'), version: "1"})
	dir := f.write()
	// the staged deployment's directory and origin exist, as after deploy --stage
	stagedCsum := srCsum('9')
	if err := os.MkdirAll(filepath.Join(dir, "ostree/deploy/os/deploy", stagedCsum+".0"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ostree/deploy/os/deploy", stagedCsum+".0.origin"), []byte("[origin]\nrefspec=os/y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := t.TempDir()
	if err := os.MkdirAll(filepath.Join(run, "ostree"), 0o755); err != nil {
		t.Fatal(err)
	}
	dep := func(name, osname, bootcsum string) []byte {
		b, err := EncodeVardict([]VariantEntry{
			{Key: "name", Type: "s", Value: EncodeString(name)},
			{Key: "osname", Type: "s", Value: EncodeString(osname)},
			{Key: "bootcsum", Type: "s", Value: EncodeString(bootcsum)},
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	state, err := EncodeVardict([]VariantEntry{
		{Key: "target", Type: "a{sv}", Value: dep(stagedCsum+".0", "os", srCsum('c'))},
		{Key: "merge-deployment", Type: "a{sv}", Value: dep(srCsum('1')+".0", "os", srCsum('b'))},
		{Key: "kargs", Type: "as", Value: EncodeStrings([]string{"root=/dev/sda1", "quiet"})},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(run, "ostree/staged-deployment"), state, 0o644); err != nil {
		t.Fatal(err)
	}
	booted := srDevIno(t, filepath.Join(dir, "ostree/deploy/os/deploy", srCsum('1')+".0"))

	s, err := LoadSysroot(dir, LoadOptions{RunDir: run, BootedDevIno: booted})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Deployments) != 3 || s.Staged == nil || s.Deployments[0] != s.Staged {
		t.Fatalf("staged not first: %v", s.Deployments)
	}
	st := s.Staged
	if !st.Staged || st.Index != 0 || st.Checksum.String() != stagedCsum || st.BootCsum != srCsum('c') || st.BootSerial != -1 {
		t.Errorf("staged %+v", st)
	}
	if strings.Join(st.Kargs, " ") != "root=/dev/sda1 quiet" {
		t.Errorf("staged kargs %q", st.Kargs)
	}
	if r, _ := st.OriginRefspec(); r != "os/y" {
		t.Errorf("staged refspec %q", r)
	}
	if s.Merge == nil || s.Merge != s.Booted || s.Merge.Index != 1 {
		t.Errorf("merge %v booted %v", s.Merge, s.Booted)
	}
	if s.StagedLocked {
		t.Errorf("locked without lock file")
	}
	if err := os.WriteFile(filepath.Join(run, "ostree/staged-deployment-locked"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err = LoadSysroot(dir, LoadOptions{RunDir: run, BootedDevIno: booted}); err != nil || !s.StagedLocked {
		t.Errorf("locked file: locked=%v err=%v", s != nil && s.StagedLocked, err)
	}
	// Not booted: ostree does not look at the staged state at all.
	if s, err = LoadSysroot(dir, LoadOptions{RunDir: run, NoBooted: true}); err != nil || s.Staged != nil || len(s.Deployments) != 2 {
		t.Errorf("NoBooted: staged %v err %v", s != nil && s.Staged != nil, err)
	}
	// A staged file that does not decode is an error naming it.
	if err := os.WriteFile(filepath.Join(run, "ostree/staged-deployment"), state[:len(state)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadSysroot(dir, LoadOptions{RunDir: run, BootedDevIno: booted})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "staged-deployment") {
		t.Errorf("truncated staged state: %v", err)
	}
	// TolerateStaged: the rest loads, with no staged deployment and the
	// reason kept (the lock file of the unreadable state is not reported).
	s, err = LoadSysroot(dir, LoadOptions{RunDir: run, BootedDevIno: booted, TolerateStaged: true})
	if err != nil || s.Staged != nil || s.StagedState != nil || s.StagedLocked || len(s.Deployments) != 2 || s.Booted == nil ||
		!errors.Is(s.StagedErr, ErrCorrupt) || !strings.Contains(s.StagedErr.Error(), "staged-deployment") {
		t.Errorf("TolerateStaged: %v, %+v", err, s)
	}
}

// TestLoadSysrootBad breaks one thing at a time; each must be a clear
// error wrapping the right sentinel, never a panic or a silent success.
func TestLoadSysrootBad(t *testing.T) {
	csum1 := srCsum('1')
	depRel := "ostree/deploy/os/deploy/" + csum1 + ".0"
	linkRel := "ostree/boot.1.0/os/" + srCsum('b') + "/0"
	entryRel := "boot/loader.1/entries/ostree-1-os.conf"
	cases := []struct {
		name   string
		break_ func(t *testing.T, dir string)
		want   error
		substr string
	}{
		{"loader symlink absolute", func(t *testing.T, dir string) { srRelink(t, dir, "boot/loader", "/boot/loader.1") }, ErrCorrupt, "boot/loader"},
		{"loader symlink climbing", func(t *testing.T, dir string) { srRelink(t, dir, "boot/loader", "../../loader.1") }, ErrCorrupt, "boot/loader"},
		{"loader symlink loader.2", func(t *testing.T, dir string) { srRelink(t, dir, "boot/loader", "loader.2") }, ErrCorrupt, "loader.2"},
		{"loader not a symlink", func(t *testing.T, dir string) {
			srRm(t, dir, "boot/loader")
			srWriteFile(t, dir, "boot/loader", "loader.1")
		}, ErrCorrupt, "not a symbolic link"},
		{"boot.N bad target", func(t *testing.T, dir string) { srRelink(t, dir, "ostree/boot.1", "../boot.1.0") }, ErrCorrupt, "ostree/boot.1"},
		{"boot.N wrong version", func(t *testing.T, dir string) { srRelink(t, dir, "ostree/boot.1", "boot.0.0") }, ErrCorrupt, "ostree/boot.1"},
		{"entry without ostree=", func(t *testing.T, dir string) { srWriteFile(t, dir, entryRel, "title x\noptions root=/dev/sda1\n") }, ErrCorrupt, "no ostree="},
		{"entry garbage", func(t *testing.T, dir string) { srWriteFile(t, dir, entryRel, "\x00\xff\xfe garbage") }, ErrCorrupt, entryRel},
		{"entry truncated", func(t *testing.T, dir string) {
			srWriteFile(t, dir, entryRel, "title x\noptions ostree=/ostree/boot.1/os/"+srCsum('b')[:10])
		}, ErrCorrupt, "invalid ostree= argument"},
		{"entry names another boot checksum", func(t *testing.T, dir string) {
			srWriteFile(t, dir, entryRel, "title x\noptions ostree=/ostree/boot.1/os/"+srCsum('b')[:10]+"/0\n")
		}, ErrNotFound, "boot link"},
		{"entry bad bootlink", func(t *testing.T, dir string) {
			srWriteFile(t, dir, entryRel, "options ostree=/ostree/boot.1/os/../0\n")
		}, ErrCorrupt, "invalid ostree= argument"},
		{"bootlink missing", func(t *testing.T, dir string) { srRm(t, dir, linkRel) }, ErrNotFound, "boot link"},
		{"bootlink absolute", func(t *testing.T, dir string) { srRelink(t, dir, linkRel, "/"+depRel) }, ErrCorrupt, "out of the sysroot"},
		{"bootlink escaping", func(t *testing.T, dir string) {
			srRelink(t, dir, linkRel, "../../../../../../../../../../../../tmp/"+csum1+".0")
		}, ErrCorrupt, "out of the sysroot"},
		{"bootlink bad name", func(t *testing.T, dir string) { srRelink(t, dir, linkRel, "../../../deploy/os/deploy/xyz.0") }, ErrCorrupt, "deploy name"},
		{"bootlink elsewhere", func(t *testing.T, dir string) {
			srMkdirAll(t, dir, "ostree/deploy/other/deploy/"+csum1+".0")
			srRelink(t, dir, linkRel, "../../../deploy/other/deploy/"+csum1+".0")
		}, ErrCorrupt, "is not the directory"},
		{"deployment dir missing", func(t *testing.T, dir string) { srRm(t, dir, depRel) }, ErrNotFound, "deployment directory"},
		{"origin garbage", func(t *testing.T, dir string) { srWriteFile(t, dir, depRel+".origin", "garbage\n") }, ErrCorrupt, ".origin"},
		{"origin truncated", func(t *testing.T, dir string) { srWriteFile(t, dir, depRel+".origin", "[orig") }, ErrCorrupt, ".origin"},
		{"origin directory", func(t *testing.T, dir string) { srRm(t, dir, depRel+".origin"); srMkdirAll(t, dir, depRel+".origin") }, ErrCorrupt, ".origin"},
		{"origin fifo", func(t *testing.T, dir string) {
			srRm(t, dir, depRel+".origin")
			if err := unix.Mkfifo(filepath.Join(dir, depRel+".origin"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt, "not a regular file"},
		{"origin symlink out", func(t *testing.T, dir string) { srRelink(t, dir, depRel+".origin", "/etc/os-release") }, ErrCorrupt, "out of the sysroot"},
		{"no ostree/deploy", func(t *testing.T, dir string) { srRm(t, dir, "ostree/deploy") }, ErrNotFound, "ostree/deploy"},
		{"no repo", func(t *testing.T, dir string) { srRm(t, dir, "ostree/repo") }, ErrNotFound, "repo"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeSysroot(t)
			f.add(fakeDep{os: "os", csum: csum1, version: "1", origin: "[origin]\nrefspec=x\n"})
			dir := f.write()
			c.break_(t, dir)
			s, err := LoadSysroot(dir, LoadOptions{NoBooted: true})
			if err == nil {
				t.Fatalf("no error; loaded %v", s.Deployments)
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.substr) {
				t.Errorf("error %q: want %v and %q", err, c.want, c.substr)
			}
		})
	}
}

// TestLoadSysrootSkips covers what ostree ignores rather than refuses.
func TestLoadSysrootSkips(t *testing.T) {
	f := newFakeSysroot(t)
	f.add(fakeDep{os: "os", csum: srCsum('1'), version: "1"})
	dir := f.write()
	srWriteFile(t, dir, "boot/loader.1/entries/other.conf", "garbage\x00")        // not ostree-*.conf
	srWriteFile(t, dir, "boot/loader.1/entries/ostree-x.conf.bak", "garbage\x00") // wrong suffix
	if err := unix.Mkfifo(filepath.Join(dir, "boot/loader.1/entries/ostree-fifo.conf"), 0o644); err != nil {
		t.Fatal(err) // never opened, or the load would block
	}
	srMkdirAll(t, dir, "boot/loader.1/entries/ostree-dir.conf")                        // not a regular file
	srWriteFile(t, dir, "boot/loader.0/entries/ostree-9-os.conf", "options garbage\n") // other bootversion
	s, err := LoadSysroot(dir, LoadOptions{NoBooted: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Deployments) != 1 {
		t.Errorf("%d deployments", len(s.Deployments))
	}
	// no boot/loader at all: bootversion 0 and no entries
	srRm(t, dir, "boot")
	if s, err = LoadSysroot(dir, LoadOptions{NoBooted: true}); err != nil || s.BootVersion != 0 || len(s.Deployments) != 0 {
		t.Errorf("no boot dir: %v %v", s, err)
	}
}

func srRelink(t *testing.T, dir, rel, target string) {
	t.Helper()
	srRm(t, dir, rel)
	if err := os.Symlink(target, filepath.Join(dir, rel)); err != nil {
		t.Fatal(err)
	}
}

func srRm(t *testing.T, dir, rel string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(dir, rel)); err != nil {
		t.Fatal(err)
	}
}

func srWriteFile(t *testing.T, dir, rel, s string) {
	t.Helper()
	srMkdirAll(t, dir, filepath.Dir(rel))
	if err := os.WriteFile(filepath.Join(dir, rel), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func srMkdirAll(t *testing.T, dir, rel string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, rel), 0o755); err != nil {
		t.Fatal(err)
	}
}
