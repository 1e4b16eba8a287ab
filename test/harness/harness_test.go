package harness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// world is the fixture most tests here share: stateroot testos with three
// deployments (d1 pinned, d2 the rollback that finalization will drop, d3
// the default), a second stateroot otheros, an extra ref and a remote ref.
type world struct {
	s          *Sysroot
	tree3      *Tree
	c1, c2, c3 string
	cOther     string
	d1, d2, d3 Deployment
	dOther     Deployment
}

// fixedTime makes commits reproducible, so a copied sysroot given the same
// operations gets the same checksums.
const fixedTime = "2024-01-02 03:04:05 +0000"

func buildWorld(t *testing.T, seed int64) *world {
	t.Helper()
	t.Logf("seed %d", seed)
	w := &world{s: NewSysroot(t, Options{})}
	s := w.s
	s.InitOS("otheros")
	w.cOther = s.CommitWith("otheros/main", NewTree(TreeOptions{Seed: seed + 100}), CommitOptions{Timestamp: fixedTime})
	w.dOther = s.Deploy("otheros", "otheros/main", "root=LABEL=other")

	tree1 := NewTree(TreeOptions{Seed: seed})
	w.c1 = s.CommitWith("testos/main", tree1, CommitOptions{Timestamp: fixedTime, DetachedMetadata: map[string]string{"harness.sig": "x"}})
	w.d1 = s.Deploy("testos", "testos/main", "root=LABEL=harness", "quiet")
	s.Pin(0)
	tree2, _ := tree1.Churn(0.3, 1)
	w.c2 = s.CommitWith("testos/main", tree2, CommitOptions{Timestamp: fixedTime})
	w.d2 = s.Deploy("testos", "testos/main", "root=LABEL=harness")
	w.tree3, _ = tree2.Churn(0.3, 2)
	w.c3 = s.CommitWith("testos/main", w.tree3, CommitOptions{Timestamp: fixedTime})
	w.d3 = s.Deploy("testos", "testos/main", "root=LABEL=harness")

	s.CreateRef("extra/keep", w.c1)
	s.AddRemote("origin", "")
	s.CreateRef("origin:main", w.c2)
	return w
}

func TestWorldStatus(t *testing.T) {
	RequireRoot(t)
	w := buildWorld(t, time.Now().UnixNano())
	s := w.s

	want := "  testos " + w.c3 + ".0\n" +
		"    origin refspec: testos/main\n" +
		"  testos " + w.c2 + ".0\n" +
		"    origin refspec: testos/main\n" +
		"  testos " + w.c1 + ".0\n" +
		"    Pinned: yes\n" +
		"    origin refspec: testos/main\n" +
		"  otheros " + w.cOther + ".0\n" +
		"    origin refspec: otheros/main\n"
	if got := s.Status(); got != want {
		t.Errorf("ostree admin status:\n%s\nwant:\n%s", got, want)
	}
	ds := s.Deployments()
	if len(ds) != 4 || ds[0].Checksum != w.c3 || ds[2].Checksum != w.c1 || !ds[2].Pinned || ds[3].OS != "otheros" {
		t.Errorf("Deployments() = %+v", ds)
	}
	if ds[0].Name() != w.d3.Name() || ds[3].Name() != w.dOther.Name() || ds[3].Dir != w.dOther.Dir {
		t.Errorf("Deploy returned %+v and %+v, status says %+v and %+v", w.d3, w.dOther, ds[0], ds[3])
	}
	for _, d := range ds {
		fl, err := Flags(d.Dir)
		if err != nil || fl&FlagImmutable == 0 {
			t.Errorf("deployment %s: flags %#x, %v: want immutable", d.Dir, fl, err)
		}
		if _, err := os.Stat(filepath.Join(d.UsrEtcDir(), "hostname")); err != nil {
			t.Error(err)
		}
	}
	wantRefs := []string{"extra/keep", "origin:main", "ostree/0/1/0", "ostree/0/1/1", "ostree/0/1/2", "ostree/0/1/3", "otheros/main", "testos/main"}
	if got := s.Refs(); !reflect.DeepEqual(got, wantRefs) {
		t.Errorf("refs = %q, want %q", got, wantRefs)
	}
	if got := s.RevParse("origin:main"); got != w.c2 {
		t.Errorf("origin:main = %s, want %s", got, w.c2)
	}
	if _, err := os.Stat(filepath.Join(s.Repo, "objects", w.c1[:2], w.c1[2:]+".commitmeta")); err != nil {
		t.Errorf("detached metadata: %v", err)
	}
}

func hostUsr(t *testing.T) string {
	var st syscall.Stat_t
	if err := syscall.Stat("/usr", &st); err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(st.Dev, 10) + ":" + strconv.FormatUint(st.Ino, 10)
}

// mountsUnder lists the host's mounts whose mount point is under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, l)
		}
	}
	return out
}

func TestBootedLifecycle(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	w := buildWorld(t, time.Now().UnixNano())
	s := w.s
	tmpRoot := filepath.Dir(filepath.Dir(s.Path))

	b := s.Boot(t, w.d3, BootOptions{})
	inside := b.Deployments()
	if len(inside) != 4 || !inside[0].Booted || inside[0].Name() != w.d3.Name() || !inside[1].Rollback {
		t.Fatalf("booted status:\n%s", b.Status())
	}
	// The namespace is what the design says.
	out := b.MustShell(`set -e
		test -e /run/ostree-booted
		test "$(readlink /ostree)" = sysroot/ostree
		test -d /sysroot/ostree/repo/objects
		test -x /usr/bin/ostree
		test -x ` + BinDir + `/systemctl && systemctl start ostree-finalize-staged.service
		stat -c %d:%i / /ostree/deploy/testos/deploy/` + w.d3.Name() + `
		cat /etc/hostname
		test "$(stat -c %d:%i /usr)" = "` + hostUsr(t) + `"   # the host /usr is over the deployment's
		test -e /sysroot/ostree/deploy/testos/deploy/` + w.d3.Name() + `/usr/etc/hostname
		grep -q ' /proc proc ' /proc/self/mounts
		echo pid=$$`)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || lines[0] != lines[1] || lines[2] != "harness" {
		t.Errorf("inside the namespace:\n%s", out)
	}
	if !strings.HasPrefix(lines[3], "pid=") || lines[3] == "pid=1" {
		t.Errorf("the command should not be PID 1: %s", lines[3])
	}

	// Edit the booted /etc, then stage the next commit.
	b.MustShell(`echo changed >> /etc/hostname; echo new > /etc/harness-added.conf; rm /etc/group`)
	tree4, _ := w.tree3.Churn(0.3, 3)
	c4 := s.CommitWith("testos/main", tree4, CommitOptions{Timestamp: fixedTime})
	staged := b.Stage("testos/main")
	if staged.Checksum != c4 || !staged.Staged || staged.Index != 0 {
		t.Fatalf("staged %+v, want %s", staged, c4)
	}
	if fi, err := os.Stat(b.StagedPath()); err != nil || fi.Size() == 0 {
		t.Fatalf("staged-deployment from outside: %v", err)
	}
	if got := mountsUnder(t, tmpRoot); len(got) != 0 {
		t.Fatalf("mounts leaked to the host:\n%s", strings.Join(got, "\n"))
	}

	res, err := b.FinalizeStaged(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Merged || res.Modified != 1 || res.Removed != 1 || res.Added != 1 {
		t.Errorf("finalize-staged merge = %+v", res)
	}
	if _, err := os.Stat(b.StagedPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("staged-deployment after finalization: %v", err)
	}
	if _, err := os.Stat(w.d2.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the rollback deployment should be gone after finalization: %v", err)
	}
	var names []string
	for _, d := range s.Deployments() {
		names = append(names, d.OS+" "+d.Name())
	}
	wantNames := []string{"testos " + c4 + ".0", "testos " + w.c3 + ".0", "testos " + w.c1 + ".0", "otheros " + w.cOther + ".0"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("after finalization: %q, want %q", names, wantNames)
	}

	// Next boot: the new deployment, with the edit merged.
	nb := s.NextBoot(t, BootOptions{})
	if nb.Deployment.Checksum != c4 {
		t.Fatalf("next boot into %+v, want %s", nb.Deployment, c4)
	}
	if nb.RunDir == b.RunDir {
		t.Error("next boot must get a fresh /run")
	}
	got := nb.MustShell(`cat /etc/hostname /etc/harness-added.conf; test ! -e /etc/group && echo nogroup`)
	if got != "harness\nchanged\nnew\nnogroup\n" {
		t.Errorf("merged /etc in the new deployment:\n%s", got)
	}
	if ds := nb.Deployments(); !ds[0].Booted || ds[0].Checksum != c4 || !ds[1].Rollback {
		t.Errorf("next boot status:\n%s", nb.Status())
	}
	if out := nb.MustRun("ostree", "admin", "cleanup"); out != "" {
		t.Logf("cleanup: %s", out)
	}
	if _, _, err := RunOstree(ctx, "fsck", "--repo="+s.Repo); err != nil {
		t.Error(err)
	}
	if got := mountsUnder(t, tmpRoot); len(got) != 0 {
		t.Fatalf("mounts leaked to the host:\n%s", strings.Join(got, "\n"))
	}
}

func TestBootedBindsSignalsAndFailures(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	s := NewSysroot(t, Options{})
	s.Commit("testos/main", NewTree(TreeOptions{Seed: 1, Etc: &Shape{}, Usr: &Shape{}}))
	d := s.Deploy("testos", "testos/main")

	tool := filepath.Join(t.TempDir(), "harness-tool")
	if err := os.WriteFile(tool, []byte("#!/bin/sh\necho tool \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, "x"), []byte("data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := s.Boot(t, d, BootOptions{
		Binds: []Bind{OnPath(tool), {Src: data, Dst: "/var/lib/harness-data", ReadOnly: true}},
		Env:   []string{"HARNESS_X=1"},
	})
	out := b.MustShell(`harness-tool a b; cat /var/lib/harness-data/x; echo $HARNESS_X; touch /var/lib/harness-data/y 2>/dev/null || echo ro`)
	if out != "tool a b\ndata\n1\nro\n" {
		t.Errorf("binds and env:\n%s", out)
	}

	// A failing command reports its stderr and exit status.
	_, _, err := b.Shell(ctx, "echo oops >&2; exit 3")
	var ce *CmdError
	if !errors.As(err, &ce) || ce.ExitCode() != 3 || !strings.Contains(err.Error(), "oops") {
		t.Errorf("failing command: %v", err)
	}

	// Signals reach the command, not the namespace's PID 1.
	p, err := b.Start(ctx, "/bin/sh", "-c", `trap 'echo got-term; exit 7' TERM; echo ready > /run/ready; while :; do sleep 0.05; done`)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(b.RunDir, "ready")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the command never became ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := p.Wait()
	if !errors.As(err, &ce) || ce.ExitCode() != 7 || stdout != "got-term\n" {
		t.Errorf("after SIGTERM: %q, %v", stdout, err)
	}

	// A cancelled context ends the whole namespace.
	cctx, cancel := context.WithCancel(ctx)
	p, err = b.Start(cctx, "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("cancel did not end the namespace")
	}

	// Setup failures say so.
	bad := s.Boot(t, d, BootOptions{Binds: []Bind{{Src: data, Dst: "/proc/harness"}}})
	if _, _, err := bad.Run(ctx, "true"); err == nil || !strings.Contains(err.Error(), "booted namespace setup") {
		t.Errorf("setup failure: %v", err)
	}
}

func TestCopyTree(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	seed := time.Now().UnixNano()
	w := buildWorld(t, seed)
	a := w.s
	cp := a.Copy(t)

	full := ManifestOptions{MTime: true, Xattrs: true, Hardlinks: true}
	ma, err := TreeManifest(a.Path, full)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := TreeManifest(cp.Path, full)
	if err != nil {
		t.Fatal(err)
	}
	if d := ma.Diff(mb); d != nil {
		t.Fatalf("copy differs:\n%s", strings.Join(d, "\n"))
	}
	linked := 0
	for _, e := range ma {
		if e.LinkTo != "" {
			linked++
		}
	}
	if linked == 0 {
		t.Error("expected hardlinks between the repository and the deployments")
	}
	if ma[strings.TrimPrefix(w.d1.Dir, a.Path+"/")].Flags&FlagImmutable == 0 {
		t.Error("manifest lost the immutable flag")
	}
	if cp.Status() != a.Status() {
		t.Errorf("status differs:\n%s\n%s", a.Status(), cp.Status())
	}

	// The same operations give the same result on both.
	tree4, _ := w.tree3.Churn(0.5, 4)
	var results []FinalizeResult
	for _, s := range []*Sysroot{a, cp} {
		c4 := s.CommitWith("testos/main", tree4, CommitOptions{Timestamp: fixedTime})
		ds := s.Deployments()
		b := s.Boot(t, ds[0], BootOptions{})
		b.MustShell(`echo copy >> /etc/hostname`)
		if st := b.Stage("testos/main"); st.Checksum != c4 {
			t.Fatalf("staged %s, want %s", st.Checksum, c4)
		}
		res, err := b.FinalizeStaged(ctx)
		if err != nil {
			t.Fatal(err)
		}
		res.Stdout, res.Stderr = "", ""
		results = append(results, res)
	}
	if results[0] != results[1] {
		t.Errorf("finalize differs: %+v vs %+v", results[0], results[1])
	}
	// Times differ (new files were written at different instants), and the
	// repo's tmp holds caches; the rest must be identical.
	same := ManifestOptions{Hardlinks: true, Xattrs: true, Skip: func(rel string) bool { return rel == "ostree/repo/tmp" }}
	ma, err = TreeManifest(a.Path, same)
	if err != nil {
		t.Fatal(err)
	}
	mb, err = TreeManifest(cp.Path, same)
	if err != nil {
		t.Fatal(err)
	}
	if d := ma.Diff(mb); d != nil {
		t.Errorf("after the same operations:\n%s", strings.Join(d, "\n"))
	}
}

func TestBootedCopyAfterStaging(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	w := buildWorld(t, time.Now().UnixNano())
	b := w.s.Boot(t, w.d3, BootOptions{})
	b.MustShell(`echo forked >> /etc/hostname; mkdir /etc/newdir; echo x > /etc/newdir/x`)
	tree4, _ := w.tree3.Churn(0.2, 5)
	c4 := w.s.CommitWith("testos/main", tree4, CommitOptions{Timestamp: fixedTime})
	b.Stage("testos/main")

	fork := b.Copy(t)
	if fork.Sysroot.Path == b.Sysroot.Path || fork.RunDir == b.RunDir || !strings.HasPrefix(fork.Deployment.Dir, fork.Sysroot.Path) {
		t.Fatalf("fork shares state with the original: %+v", fork)
	}
	if ds := fork.Deployments(); !ds[0].Staged || ds[0].Checksum != c4 || !ds[1].Booted {
		t.Fatalf("fork does not see the staged deployment:\n%s", fork.Status())
	}
	var etcs []Manifest
	for _, h := range []*BootedHost{b, fork} {
		res, err := h.FinalizeStaged(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// ostree counts a new directory and each path in it as added.
		if !res.Merged || res.Modified != 1 || res.Removed != 0 || res.Added != 2 {
			t.Errorf("finalize: %+v", res)
		}
		nb := h.Sysroot.NextBoot(t, BootOptions{})
		m, err := TreeManifest(nb.EtcDir(), ManifestOptions{Hardlinks: true})
		if err != nil {
			t.Fatal(err)
		}
		etcs = append(etcs, m)
	}
	if d := etcs[0].Diff(etcs[1]); d != nil {
		t.Errorf("merged etc differs between the fork and the original:\n%s", strings.Join(d, "\n"))
	}
}

// TestTreeChurn checks churn for a fixed seed that once failed (a modified
// one-byte file kept its content) and for a fresh seed, logged.
func TestTreeChurn(t *testing.T) {
	for _, seed := range []int64{1796163979489497025, time.Now().UnixNano()} {
		t.Run(strconv.FormatInt(seed, 10), func(t *testing.T) {
			t.Logf("seed %d", seed)
			checkChurn(t, seed)
		})
	}
}

func checkChurn(t *testing.T, seed int64) {
	tr := NewTree(TreeOptions{Seed: seed, Etc: &Shape{Files: 40, Dirs: 6, Depth: 3, MinSize: 1, MaxSize: 100}})
	again := NewTree(TreeOptions{Seed: seed, Etc: &Shape{Files: 40, Dirs: 6, Depth: 3, MinSize: 1, MaxSize: 100}})
	if !reflect.DeepEqual(tr.Paths(), again.Paths()) {
		t.Fatal("generation is not deterministic")
	}
	n := len(tr.Generated())
	c, res := tr.Churn(0.25, 9)
	if len(res.Modified) == 0 || len(res.Removed) == 0 || len(res.Added) == 0 {
		t.Fatalf("churn did nothing: %+v", res)
	}
	if got, want := len(c.Generated()), n-len(res.Removed)+len(res.Added); got != want {
		t.Errorf("after churn %d generated files, want %d", got, want)
	}
	for _, p := range res.Modified {
		if string(c.Entries[p].Content()) == string(tr.Entries[p].Content()) {
			t.Errorf("%s not modified", p)
		}
	}
	for _, p := range res.Removed {
		if _, ok := c.Entries[p]; ok {
			t.Errorf("%s not removed", p)
		}
		if _, ok := tr.Entries[p]; !ok {
			t.Errorf("churn mutated the original (%s)", p)
		}
	}
	dir := t.TempDir()
	if err := c.Write(dir); err != nil {
		t.Fatal(err)
	}
	m, err := TreeManifest(dir, ManifestOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for p, f := range c.Entries {
		e, ok := m[p]
		if !ok {
			t.Errorf("%s not written", p)
			continue
		}
		if f.IsRegular() && (e.Type != "file" || e.Size != int64(len(f.Content())) || e.Mode != f.Perm()) {
			t.Errorf("%s written as %+v", p, e)
		}
	}
}
