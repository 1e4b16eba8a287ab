package lifecycle

// The SELinux policy refresh. After its /etc merge, ostree (2022.3 and
// later, built with SELinux) rebuilds the policy of the new deployment when
// its etc has selinux/config (ostree-sysroot-deploy.c,
// sysroot_finalize_selinux_policy): in a bwrap sandbox made of the
// deployment's usr, etc and var (run_in_deployment) it runs `semodule
// --help`, and when the help mentions the option, `semodule -N
// --rebuild-if-modules-changed` (`--refresh` from 2023.2; the choice is a
// row of ostree.Rows). A staged state
// without merge-deployment skips both the merge and the refresh, so when we
// take over the merge we run the refresh ourselves, the same way, right
// after our merge: the policy is then built from the same merged etc ostree
// would build it from.
//
// It stays valid only while its inputs do not change. They are the merged
// etc under selinux/ and the user database that genhomedircon reads for
// home directory labels (policyInput). A watcher batch that touches one of
// them redoes the merge of the whole staged etc (which wipes the earlier
// refresh's output) and refreshes again; a seal that finds one changed
// falls back, and ostree merges and refreshes as it always did.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// ErrPolicy: the SELinux policy refresh could not be done as ostree does
// it. ostree's finalization runs the same commands and would most likely
// fail the same way.
var ErrPolicy = errors.New("SELinux policy refresh")

// errPolicyStale: an input of the policy refresh changed after it ran.
var errPolicyStale = errors.New("the SELinux policy inputs changed after the refresh at staging")

// bwrapArgs are ostree's run_in_deployment arguments before the command;
// the sandbox's /usr, /etc and /var are the deployment's (relative to the
// working directory, the deployment directory).
var bwrapArgs = []string{
	"--dev", "/dev", "--proc", "/proc", "--dir", "/run", "--dir", "/tmp",
	"--chdir", "/",
	"--die-with-parent",
	"--unshare-pid",
	"--unshare-uts",
	"--unshare-ipc",
	"--unshare-cgroup-try",
	"--ro-bind", "/sys/block", "/sys/block",
	"--ro-bind", "/sys/bus", "/sys/bus",
	"--ro-bind", "/sys/class", "/sys/class",
	"--ro-bind", "/sys/dev", "/sys/dev",
	"--ro-bind", "/sys/devices", "/sys/devices",
	"--bind", "usr", "/usr",
	"--bind", "etc", "/etc",
	"--bind", "var", "/var",
	"--symlink", "/usr/lib", "/lib",
	"--symlink", "/usr/lib32", "/lib32",
	"--symlink", "/usr/lib64", "/lib64",
	"--symlink", "/usr/bin", "/bin",
	"--symlink", "/usr/sbin", "/sbin",
}

// ostreeRefresh is how the installed ostree refreshes the policy.
type ostreeRefresh struct {
	flag    string // the semodule option it looks for and passes; "" = it does not refresh
	version string
}

// policyRefreshOf reads `ostree --version`: the table of version-dependent
// choices (ostree.Rows, row selinux_refresh) decides the option from the
// version, and the feature list whether ostree was built with SELinux at all.
func policyRefreshOf(ctx context.Context, ostreeCmd string) (ostreeRefresh, error) {
	v, err := ostree.InstalledVersion(ctx, ostreeCmd)
	if err != nil {
		return ostreeRefresh{}, fmt.Errorf("%w: cannot tell how ostree refreshes the policy: %v", ErrPolicy, err)
	}
	c := ostree.ChoicesFor(v)
	return ostreeRefresh{flag: c.SELinuxRefresh, version: c.Version}, nil
}

// refreshPolicy does what ostree's finalization does after its merge, in
// the deployment directory dir, and says what it did. An error means the
// staged etc may have been partly written by semodule: the caller falls
// back (resets it).
func refreshPolicy(ctx context.Context, cfg *Config, dir string) (PolicyState, error) {
	if _, err := os.Lstat(filepath.Join(dir, "etc/selinux/config")); errors.Is(err, os.ErrNotExist) {
		return PolicyNone, nil
	} else if err != nil {
		return "", fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	how, err := policyRefreshOf(ctx, cfg.Ostree)
	if err != nil {
		return "", err
	}
	if how.flag == "" {
		cfg.Log.Info("this ostree does not refresh the SELinux policy", "ostree", how.version)
		return PolicyUnsupported, nil
	}
	help, err := runInDeployment(ctx, cfg.Bwrap, dir, "semodule", "--help")
	if err != nil {
		return "", fmt.Errorf("%w: failed to run semodule: %v", ErrPolicy, err)
	}
	if !bytes.Contains(help, []byte(how.flag)) {
		cfg.Log.Info("semodule does not have "+how.flag+"; ostree does not refresh the SELinux policy either", "ostree", how.version)
		return PolicyUnsupported, nil
	}
	cfg.Log.Info("refreshing the SELinux policy of the staged deployment", "command", "semodule -N "+how.flag)
	if _, err := runInDeployment(ctx, cfg.Bwrap, dir, "semodule", "-N", how.flag); err != nil {
		return "", fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	return PolicyRefreshed, nil
}

// runInDeployment runs argv in ostree's sandbox of the deployment dir and
// returns its standard output. Its standard error ends up in the error.
func runInDeployment(ctx context.Context, bwrap, dir string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bwrap, append(append([]string{}, bwrapArgs...), argv...)...)
	cmd.Dir = dir
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg != "" {
			return nil, fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, msg)
		}
		return nil, fmt.Errorf("%s: %v", strings.Join(argv, " "), err)
	}
	return stdout.Bytes(), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	b   []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// userDB are the files of etc, besides selinux/, that the policy build
// reads: genhomedircon labels the home directories of the users it finds
// through NSS (passwd, group, nsswitch.conf), within the UID range and
// home root of login.defs, default/useradd and libuser.conf, with a login
// shell listed in shells; ld.so.* decide which libraries semodule loads.
var userDB = []string{"passwd", "group", "nsswitch.conf", "login.defs", "libuser.conf", "shells", "ld.so.cache", "ld.so.conf"}

// policyInput reports whether a change at p (relative to etc; "" is the
// whole etc, a directory stands for its subtree) can change what the
// policy refresh produces.
func policyInput(p string) bool {
	p = strings.Trim(filepath.Clean("/"+p), "/")
	if p == "" {
		return true
	}
	first, rest, _ := strings.Cut(p, "/")
	switch first {
	case "selinux", "ld.so.conf.d":
		return true
	case "default":
		return rest == "" || rest == "useradd"
	}
	if rest != "" {
		return false
	}
	for _, f := range userDB {
		if first == f {
			return true
		}
	}
	return false
}

// policyStale reports whether the changed paths make the recorded refresh
// outcome stale: for a refresh that ran, any input; with none needed at
// the time, the appearance of selinux/config (anything under selinux/).
// When ostree does not refresh at all, nothing.
func policyStale(recorded PolicyState, paths []string) bool {
	for _, p := range paths {
		switch recorded {
		case PolicyRefreshed:
			if policyInput(p) {
				return true
			}
		case PolicyNone:
			q := strings.Trim(filepath.Clean("/"+p), "/")
			if q == "" || q == "selinux" || strings.HasPrefix(q, "selinux/") {
				return true
			}
		}
	}
	return false
}

// firstPolicyInput names the first changed path that is a policy input,
// for the logs.
func firstPolicyInput(paths []string) string {
	for _, p := range paths {
		if policyInput(p) {
			if p == "" {
				return "the whole etc"
			}
			return p
		}
	}
	return "none"
}
