package lifecycle

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestPolicyInput(t *testing.T) {
	yes := []string{"", "/", "selinux", "selinux/config", "selinux/targeted/active/modules/400/x/cil",
		"passwd", "group", "nsswitch.conf", "login.defs", "default", "default/useradd", "libuser.conf",
		"shells", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ld.so.conf.d/x.conf", "./passwd", "selinux/../passwd"}
	no := []string{"hosts", "passwd-", "shadow-x", "default/grub", "ssh/sshd_config", "sub/passwd", "selinuxx", "motd"}
	for _, p := range yes {
		if !policyInput(p) {
			t.Errorf("%q should be a policy input", p)
		}
	}
	for _, p := range no {
		if policyInput(p) {
			t.Errorf("%q should not be a policy input", p)
		}
	}
}

func TestPolicyStale(t *testing.T) {
	for _, c := range []struct {
		recorded PolicyState
		paths    []string
		want     bool
	}{
		{PolicyRefreshed, []string{"hosts", "motd"}, false},
		{PolicyRefreshed, []string{"hosts", "passwd"}, true},
		{PolicyRefreshed, []string{"selinux/targeted/active/modules/400/a/cil"}, true},
		{PolicyRefreshed, []string{""}, true},
		{PolicyNone, []string{"passwd"}, false}, // no config: users do not matter
		{PolicyNone, []string{"selinux"}, true}, // config may have appeared
		{PolicyNone, []string{"selinux/config"}, true},
		{PolicyNone, []string{""}, true},
		{PolicyUnsupported, []string{"", "selinux/config", "passwd"}, false}, // ostree does not refresh
		{PolicyRefreshed, nil, false},
	} {
		if got := policyStale(c.recorded, c.paths); got != c.want {
			t.Errorf("policyStale(%q, %q) = %v, want %v", c.recorded, c.paths, got, c.want)
		}
	}
}

// fakeTools writes an `ostree` that prints version and a `bwrap` that
// logs its working directory and arguments and runs what follows ostree's
// sandbox arguments with the deployment's usr/bin first on PATH (no
// sandbox: the test only checks what would run, where).
func fakeTools(t *testing.T, version string) (ostreeCmd, bwrap, log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "bwrap.log")
	ostreeCmd = filepath.Join(dir, "ostree")
	bwrap = filepath.Join(dir, "bwrap")
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(ostreeCmd, "#!/bin/sh\nprintf 'libostree:\\n Version: %s\\n Features:\\n  - selinux\\n' '"+version+"'\n")
	write(bwrap, `#!/bin/sh
echo "$PWD $*" >> `+log+`
n=`+strconv.Itoa(len(bwrapArgs))+`
shift $n
PATH="$PWD/usr/bin:$PATH" exec "$@"
`)
	return ostreeCmd, bwrap, log
}

// deploymentWithSemodule makes a deployment directory whose usr/bin has a
// semodule script: help text per help, exit code per rc.
func deploymentWithSemodule(t *testing.T, help string, rc int, config bool) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{"usr/bin", "etc/selinux", "var"} {
		if err := os.MkdirAll(filepath.Join(d, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := "#!/bin/sh\nif [ \"$1\" = --help ]; then echo '" + help + "'; exit 0; fi\necho \"$*\" >> " + filepath.Join(d, "ran") + "\necho 'semodule: something failed' >&2\nexit " + strconv.Itoa(rc) + "\n"
	if err := os.WriteFile(filepath.Join(d, "usr/bin/semodule"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if config {
		if err := os.WriteFile(filepath.Join(d, "etc/selinux/config"), []byte("SELINUX=enforcing\nSELINUXTYPE=targeted\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestRefreshPolicy(t *testing.T) {
	ctx := context.Background()
	const help = "usage: semodule [option]... MODE...\n  -N  do not reload\n  --rebuild-if-modules-changed  rebuild\n  --refresh  rebuild"
	cases := []struct {
		name       string
		version    string
		help       string
		rc         int
		config     bool
		want       PolicyState
		ran        string // semodule's arguments when it rebuilt
		fails      string
		bwrapCalls int
	}{
		{name: "no config", version: "2022.7", help: help, config: false, want: PolicyNone},
		{name: "2022.7", version: "2022.7", help: help, config: true, want: PolicyRefreshed, ran: "-N --rebuild-if-modules-changed", bwrapCalls: 2},
		{name: "2024.1", version: "2024.1", help: help, config: true, want: PolicyRefreshed, ran: "-N --refresh", bwrapCalls: 2},
		{name: "old ostree", version: "2021.6", help: help, config: true, want: PolicyUnsupported},
		{name: "semodule without the option", version: "2022.7", help: "usage: semodule -B", config: true, want: PolicyUnsupported, bwrapCalls: 1},
		{name: "semodule fails", version: "2022.7", help: help, rc: 1, config: true, fails: "semodule: something failed", ran: "-N --rebuild-if-modules-changed", bwrapCalls: 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ostreeCmd, bwrap, log := fakeTools(t, c.version)
			d := deploymentWithSemodule(t, c.help, c.rc, c.config)
			cfg := &Config{Ostree: ostreeCmd, Bwrap: bwrap, Log: slog.New(slog.DiscardHandler)}
			got, err := refreshPolicy(ctx, cfg, d)
			if c.fails != "" {
				if err == nil || !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), c.fails) {
					t.Fatalf("want ErrPolicy with %q, got %q, %v", c.fails, got, err)
				}
			} else if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
			ran, _ := os.ReadFile(filepath.Join(d, "ran"))
			if strings.TrimSpace(string(ran)) != c.ran {
				t.Errorf("semodule ran with %q, want %q", ran, c.ran)
			}
			logged, _ := os.ReadFile(log)
			lines := strings.Split(strings.TrimSpace(string(logged)), "\n")
			if len(logged) == 0 {
				lines = nil
			}
			if len(lines) != c.bwrapCalls {
				t.Fatalf("bwrap ran %d times, want %d:\n%s", len(lines), c.bwrapCalls, logged)
			}
			for _, l := range lines {
				// ostree's sandbox: run from the deployment directory with
				// its usr, etc and var bound.
				if !strings.HasPrefix(l, d+" ") || !strings.Contains(l, "--bind usr /usr --bind etc /etc --bind var /var") ||
					!strings.Contains(l, "--unshare-pid") || !strings.Contains(l, " semodule ") {
					t.Errorf("bwrap call %q is not ostree's run_in_deployment of %s", l, d)
				}
			}
		})
	}
}

func TestRefreshPolicyNoBwrap(t *testing.T) {
	ostreeCmd, _, _ := fakeTools(t, "2022.7")
	d := deploymentWithSemodule(t, "--rebuild-if-modules-changed", 0, true)
	cfg := &Config{Ostree: ostreeCmd, Bwrap: filepath.Join(t.TempDir(), "no-bwrap"), Log: slog.New(slog.DiscardHandler)}
	if _, err := refreshPolicy(context.Background(), cfg, d); err == nil || !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), "no-bwrap") {
		t.Fatalf("want an ErrPolicy naming the missing bwrap, got %v", err)
	}
	cfg.Ostree = filepath.Join(t.TempDir(), "no-ostree")
	if _, err := refreshPolicy(context.Background(), cfg, d); err == nil || !errors.Is(err, ErrPolicy) {
		t.Fatalf("want an ErrPolicy when ostree cannot say its version, got %v", err)
	}
}
