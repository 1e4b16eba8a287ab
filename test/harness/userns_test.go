package harness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// freezeScript tries FIFREEZE on /boot (the host's root filesystem here)
// and prints EPERM when refused. Should the freeze ever succeed it thaws at
// once (FITHAW) and exits 4, so the test fails loudly instead of leaving
// the machine's filesystem frozen.
const freezeScript = `python3 - <<'EOF'
import fcntl, os, sys
fd = os.open("/boot", os.O_RDONLY)
try:
    fcntl.ioctl(fd, 0xC0045877, 0)  # FIFREEZE
except PermissionError:
    print("EPERM")
    sys.exit(0)
except OSError as e:
    print("FIFREEZE failed with errno", e.errno)
    sys.exit(3)
fcntl.ioctl(fd, 0xC0045878, 0)  # FITHAW, at once
print("FROZE (and thawed): the namespace can freeze the host filesystem")
sys.exit(4)
EOF
`

func checkFreezeRefused(t *testing.T, b *BootedHost, what string) {
	t.Helper()
	out, _, err := b.Shell(context.Background(), freezeScript)
	if err != nil || out != "EPERM\n" {
		t.Fatalf("%s: FIFREEZE of /boot must fail with EPERM: %q, %v", what, out, err)
	}
}

// TestUserNSBooted checks what BootOptions.UserNS is for: bubblewrap can
// make its namespaces, chown and user xattrs work with host ids, the host
// filesystem still cannot be frozen, and ostree's staging and finalization
// work as without it.
func TestUserNSBooted(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	// The host's ostree and userland (python3): this checks the namespace.
	host := HostOracle()
	s := NewSysroot(t, Options{Oracle: &host})
	tree1 := NewTree(TreeOptions{Seed: 11})
	s.CommitWith("testos/main", tree1, CommitOptions{Timestamp: fixedTime})
	d := s.Deploy("testos", "testos/main", "root=LABEL=harness")
	data := t.TempDir()
	b := s.Boot(t, d, BootOptions{UserNS: true, Binds: []Bind{{Src: data, Dst: "/var/lib/harness-data", ReadOnly: true}}})

	out := b.MustShell(`set -e
		touch /var/lib/harness-data/x 2>/dev/null && exit 9
		cat /proc/self/uid_map /proc/self/gid_map
		bwrap --dev /dev --proc /proc --bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/bin /bin --unshare-pid /bin/true
		echo bwrap-ok
		echo x > /etc/harness-owned
		chown 1234:5678 /etc/harness-owned
		stat -c %u:%g /etc/harness-owned
		python3 -c 'import os; os.setxattr("/etc/harness-owned", "user.harness", b"v"); print(os.getxattr("/etc/harness-owned", "user.harness").decode())'`)
	fields := strings.Fields(out)
	want := []string{"0", "0", "4294967295", "0", "0", "4294967295", "bwrap-ok", "1234:5678", "v"}
	if strings.Join(fields, " ") != strings.Join(want, " ") {
		t.Errorf("inside the user namespace:\n%s\nwant fields %q", out, want)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(b.EtcDir(), "harness-owned"), &st); err != nil || st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("from the host the chowned file is %d:%d (%v), want the same ids", st.Uid, st.Gid, err)
	}
	checkFreezeRefused(t, b, "UserNS")
	checkFreezeRefused(t, s.Boot(t, d, BootOptions{}), "default options")

	// Stage and finalize under UserNS, as in TestBootedLifecycle.
	b.MustShell(`echo userns >> /etc/hostname; rm /etc/group`)
	tree2, _ := tree1.Churn(0.3, 1)
	c2 := s.CommitWith("testos/main", tree2, CommitOptions{Timestamp: fixedTime})
	if st := b.Stage("testos/main"); st.Checksum != c2 {
		t.Fatalf("staged %s, want %s", st.Checksum, c2)
	}
	// Copy carries the option.
	fork := b.Copy(t)
	if !fork.opts.UserNS {
		t.Error("Copy dropped UserNS")
	}
	for _, h := range []*BootedHost{b, fork} {
		res, err := h.FinalizeStaged(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Merged || res.Modified != 1 || res.Removed != 1 || res.Added != 1 {
			t.Errorf("finalize-staged under UserNS: %+v", res)
		}
		nb := h.Sysroot.NextBoot(t, BootOptions{UserNS: true})
		if nb.Deployment.Checksum != c2 {
			t.Fatalf("next boot into %s, want %s", nb.Deployment.Checksum, c2)
		}
		if got := nb.MustShell(`cat /etc/hostname; stat -c %u:%g /etc/harness-owned; test ! -e /etc/group && echo nogroup`); got != "harness\nuserns\n1234:5678\nnogroup\n" {
			t.Errorf("merged /etc after finalization under UserNS:\n%s", got)
		}
	}
}

// semoduleTree is a bootable tree with the fake semodule and an SELinux
// configuration whose module store holds base.
func semoduleTree(t *testing.T, seed int64, base string) *Tree {
	tree := WithFakeSemodule(t, NewTree(TreeOptions{Seed: seed}), false)
	tree.Set("usr/etc/selinux/config", Text("SELINUX=disabled\nSELINUXTYPE=targeted\n"))
	tree.Set("usr/etc/selinux/targeted/active/modules/100/base/cil", Text(base))
	return tree
}

// TestSemoduleFinalize runs ostree's own SELinux policy refresh at
// finalization (sysroot_finalize_selinux_policy: semodule --help, then
// semodule -N --rebuild-if-modules-changed, each in bwrap) against the fake
// semodule. It works in a UserNS booted namespace and fails in the default
// one, where bwrap cannot make namespaces.
func TestSemoduleFinalize(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	// The host's ostree (2022.7 here): the flag and the failure without
	// UserNS below are its behaviour; the parity suites cover each oracle.
	host := HostOracle()
	s := NewSysroot(t, Options{Oracle: &host})
	tree1 := semoduleTree(t, 21, "base\n")
	s.CommitWith("testos/main", tree1, CommitOptions{Timestamp: fixedTime})
	d := s.Deploy("testos", "testos/main", "root=LABEL=harness")
	fi, err := os.Stat(filepath.Join(d.Dir, "usr/bin/semodule"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("deployed semodule: %v, %v (want mode 0755 kept by the commit)", fi, err)
	}
	b := s.Boot(t, d, BootOptions{UserNS: true})
	// Build the booted deployment's policy, as the installer would have:
	// its checksum then travels into the new deployment with the /etc
	// merge, so only a module change makes finalization rebuild.
	b.MustRun("/sysroot/ostree/deploy/testos/deploy/"+d.Name()+"/usr/bin/semodule", "-N", "--rebuild-if-modules-changed")
	bootedPolicy, err := os.ReadFile(filepath.Join(b.EtcDir(), "selinux/targeted/policy/policy.33"))
	if err != nil {
		t.Fatal(err)
	}

	tree2 := semoduleTree(t, 21, "base v2\n")
	c2 := s.CommitWith("testos/main", tree2, CommitOptions{Timestamp: fixedTime})
	staged := b.Stage("testos/main")
	if staged.Checksum != c2 {
		t.Fatalf("staged %s, want %s", staged.Checksum, c2)
	}
	fork := b.Copy(t)
	plain := fork.Sysroot.Boot(t, fork.Deployment, BootOptions{RunDir: fork.RunDir})

	res, err := b.FinalizeStaged(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Merged {
		t.Errorf("finalize-staged did not merge /etc: %+v", res)
	}
	etc := filepath.Join(staged.Dir, "etc")
	log, err := os.ReadFile(filepath.Join(etc, "selinux/semodule.log"))
	if err != nil {
		t.Fatal(err)
	}
	wantLog := "semodule -N --rebuild-if-modules-changed uid=0 sandbox=no\n" + // the booted run above, merged
		"semodule --help uid=0 sandbox=yes\n" +
		"semodule -N --rebuild-if-modules-changed uid=0 sandbox=yes\n"
	if string(log) != wantLog {
		t.Errorf("semodule.log of the new deployment:\n%s\nwant:\n%s", log, wantLog)
	}
	policy, err := os.ReadFile(filepath.Join(etc, "selinux/targeted/policy/policy.33"))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := os.ReadFile(filepath.Join(etc, "selinux/targeted/active/modules.checksum"))
	if err != nil {
		t.Fatal(err)
	}
	if string(policy) == string(bootedPolicy) || string(policy) != "policy from modules "+string(sum)+"\n" {
		t.Errorf("policy.33 after the module change: %q (booted %q, checksum %q)", policy, bootedPolicy, sum)
	}
	// The sandbox's /var is the deployment's own var directory.
	if rebuilt, err := os.ReadFile(filepath.Join(staged.Dir, "var/lib/fake-semodule/rebuilt")); err != nil || string(rebuilt) != string(sum) {
		t.Errorf("rebuilt marker %q, %v; want %q", rebuilt, err, sum)
	}
	if ds := s.Deployments(); ds[0].Checksum != c2 {
		t.Errorf("after finalization the default is %s, want %s", ds[0].Checksum, c2)
	}

	// Without UserNS bwrap cannot make its namespaces and ostree fails
	// finalization (it has already removed the staged state by then).
	res, err = plain.FinalizeStaged(ctx)
	if err == nil {
		t.Fatalf("finalize-staged without UserNS succeeded:\n%s%s", res.Stdout, res.Stderr)
	}
	t.Logf("finalize-staged without UserNS, as expected: %v", err)
	for _, want := range []string{"Creating new namespace failed", "failed to run semodule"} {
		if !strings.Contains(res.Stderr, want) {
			t.Errorf("finalize-staged without UserNS: stderr lacks %q:\n%s", want, res.Stderr)
		}
	}
	var ce *CmdError
	if !errors.As(err, &ce) || ce.ExitCode() != 1 {
		t.Errorf("finalize-staged without UserNS: %v", err)
	}
}

// TestSemoduleFinalizeNoFlag: with a semodule that lacks
// --rebuild-if-modules-changed ostree asks for --help only and finalizes
// without a rebuild.
func TestSemoduleFinalizeNoFlag(t *testing.T) {
	RequireRoot(t)
	s := NewSysroot(t, Options{})
	tree1 := WithFakeSemodule(t, semoduleTree(t, 31, "base\n"), true)
	s.CommitWith("testos/main", tree1, CommitOptions{Timestamp: fixedTime})
	d := s.Deploy("testos", "testos/main")
	b := s.Boot(t, d, BootOptions{UserNS: true})
	s.CommitWith("testos/main", WithFakeSemodule(t, semoduleTree(t, 31, "base v2\n"), true), CommitOptions{Timestamp: fixedTime})
	staged := b.Stage("testos/main")
	if _, err := b.FinalizeStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	etc := filepath.Join(staged.Dir, "etc")
	if log, err := os.ReadFile(filepath.Join(etc, "selinux/semodule.log")); err != nil || string(log) != "semodule --help uid=0 sandbox=yes\n" {
		t.Errorf("semodule.log %q, %v", log, err)
	}
	if _, err := os.Stat(filepath.Join(etc, "selinux/targeted/policy")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("policy without the flag: %v", err)
	}
}
