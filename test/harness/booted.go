package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BinDir is a per-run tmpfs directory inside the booted namespace that is
// first on PATH: the systemctl stub lives there and OnPath binds go there.
const BinDir = "/tmp/.harness/bin"

// InnerPath is PATH inside the booted namespace.
const InnerPath = BinDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Bind is an extra bind mount into the booted namespace.
type Bind struct {
	// Src is a host file or directory.
	Src string
	// Dst is an absolute path inside the namespace. A missing Dst is created
	// (directory or empty file, with parents) before mounting, which writes
	// wherever Dst resolves: under /tmp that is the per-run tmpfs, under
	// /run the test's run directory, under /etc the deployment's etc. Dst
	// may not be under /usr (that is the oracle's /usr).
	Dst string
	// ReadOnly remounts the bind read-only.
	ReadOnly bool
}

// OnPath binds a host file (e.g. bin/ostree-prefinalize built by the test)
// into BinDir under its own name, so it runs by name inside.
func OnPath(hostFile string) Bind {
	return Bind{Src: hostFile, Dst: BinDir + "/" + filepath.Base(hostFile), ReadOnly: true}
}

// BootOptions configure a booted namespace.
type BootOptions struct {
	// RunDir is the host directory bound on /run (default a new
	// t.TempDir()); Boot creates the empty ostree-booted marker in it. Tests
	// read e.g. RunDir/ostree/staged-deployment from outside.
	RunDir string
	// Binds are extra bind mounts, made after the standard ones.
	Binds []Bind
	// Env is extra KEY=VALUE for the command (the base is PATH=InnerPath,
	// HOME=/, LANG=C.UTF-8, OSTREE_SYSROOT_OPTS=skip-sync).
	Env []string
	// KeepSysAdmin keeps CAP_SYS_ADMIN for the command. By default it is
	// dropped from the bounding set so that ostree's FIFREEZE of /boot (the
	// host's root filesystem here) fails with EPERM and falls back to
	// syncfs, as RunOstree explains. For an oracle that refuses to run
	// without it (Oracle.KeepsSysAdmin) it is kept, and the nofreeze
	// command's seccomp filter makes FIFREEZE fail with EPERM instead.
	KeepSysAdmin bool
	// UserNS starts the namespace's unshare in a new user namespace that
	// maps the whole uid and gid range onto itself, and keeps CAP_SYS_ADMIN
	// for the command. Needed for anything that makes namespaces of its own,
	// such as the bubblewrap sandbox ostree runs semodule in at
	// finalization: bwrap needs CAP_SYS_ADMIN in the user namespace owning
	// its current namespaces, which dropping it from the bounding set
	// forbids. The freeze stays impossible without that drop: FIFREEZE
	// needs CAP_SYS_ADMIN in the initial user namespace (the host
	// filesystem's owner), which no process in a child user namespace has,
	// so ostree still gets EPERM and falls back to syncfs. The identity
	// mapping keeps ownership as the host sees it: chown to any id, user.*
	// xattrs and mounts all work, and files keep their real owners.
	// KeepSysAdmin has no further effect when UserNS is set.
	UserNS bool
}

// BootedHost runs commands as if the machine had booted deployment d of the
// sysroot. Each Run makes a fresh private mount and PID namespace (nothing
// is mounted on the host, and every process started inside dies with the
// run), assembled as on an ostree-booted host:
//
//	/            the deployment directory <sysroot>/ostree/deploy/OS/deploy/CSUM.SERIAL
//	             (a bind mount, so / has the deployment's device and inode, which is
//	             how ostree finds the booted deployment)
//	/sysroot     the physical sysroot; /ostree -> sysroot/ostree is the tree's own link
//	/boot        <sysroot>/boot
//	/var         the stateroot's var, <sysroot>/ostree/deploy/OS/var
//	/etc         the deployment's own etc (what tests edit)
//	/usr         the oracle's /usr (Oracle.Usr: the host's, or a Debian root's), so
//	             the oracle's ostree and our binary run; ostree still reads the
//	             deployment's usr/etc through /sysroot/ostree/deploy/... paths
//	/run         RunDir, with the ostree-booted marker
//	/tmp         a tmpfs per run; BinDir in it holds a systemctl stub (exit 0)
//	/dev, /proc  the host's /dev, a fresh proc for the PID namespace
//	/sys         the host's /sys, read-only, only when the deployment has a sys
//	             directory (ostree's semodule sandbox binds /sys/block etc. from it;
//	             NewTree has none, WithFakeSemodule adds one)
//
// The command runs in a further nested mount namespace, so ostree sees a
// mount namespace different from PID 1's and, like a service started by
// systemd with its own namespace, does not unshare one itself.
type BootedHost struct {
	t          testing.TB
	Sysroot    *Sysroot
	Deployment Deployment
	RunDir     string
	opts       BootOptions
	mnt        string
	// noFreeze is the nofreeze command when the oracle needs CAP_SYS_ADMIN
	// kept (Oracle.KeepsSysAdmin).
	noFreeze string
}

// Boot prepares a booted view of deployment d (from Deployments()). It runs
// nothing yet; the run directory persists across runs like /run during one
// boot.
func (s *Sysroot) Boot(t testing.TB, d Deployment, opts BootOptions) *BootedHost {
	t.Helper()
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		if target, err := os.Readlink("/" + l); err != nil || !strings.HasPrefix(strings.TrimPrefix(target, "/"), "usr/") {
			t.Fatalf("booted namespace needs a merged-/usr host (/%s -> usr/%s), got %q, %v", l, l, target, err)
		}
	}
	// Always from s: d may come from another sysroot (e.g. the one s was
	// copied from), whose directory must not be booted with s.
	d.Dir = s.DeploymentDir(d.OS, d.Checksum, d.Serial)
	for _, p := range []string{"sysroot", "boot", "var", "dev", "proc", "run", "tmp", "usr", "etc"} {
		if fi, err := os.Stat(filepath.Join(d.Dir, p)); err != nil || !fi.IsDir() {
			t.Fatalf("deployment %s is not bootable: no /%s directory (trees from NewTree have it)", d.Dir, p)
		}
	}
	for _, b := range opts.Binds {
		if !strings.HasPrefix(b.Dst, "/") || b.Dst == "/usr" || strings.HasPrefix(filepath.Clean(b.Dst), "/usr/") {
			t.Fatalf("bind destination %q: must be absolute and not under /usr (the oracle's)", b.Dst)
		}
		if _, err := os.Stat(b.Src); err != nil {
			t.Fatalf("bind source: %v", err)
		}
	}
	if opts.RunDir == "" {
		opts.RunDir = t.TempDir()
	}
	if err := os.WriteFile(filepath.Join(opts.RunDir, "ostree-booted"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	b := &BootedHost{t: t, Sysroot: s, Deployment: d, RunDir: opts.RunDir, opts: opts, mnt: mnt}
	if s.Oracle.KeepsSysAdmin() {
		b.noFreeze = noFreezeCommand(t)
	}
	return b
}

// NextBoot boots the default deployment (index 0 of the host's view), with
// a fresh run directory unless opts.RunDir says otherwise: the reboot after
// finalization.
func (s *Sysroot) NextBoot(t testing.TB, opts BootOptions) *BootedHost {
	t.Helper()
	ds := s.WithT(t).Deployments()
	if len(ds) == 0 {
		t.Fatal("NextBoot: no deployments")
	}
	return s.Boot(t, ds[0], opts)
}

// WithT returns the same booted host reporting failures to t.
func (b *BootedHost) WithT(t testing.TB) *BootedHost {
	c := *b
	c.t = t
	c.Sysroot = b.Sysroot.WithT(t)
	return &c
}

// Copy forks the booted machine: an identical copy of the sysroot
// (CopyTree) and of the run directory (so a staged deployment stays staged),
// booted into the same deployment with the same options. One copy can then
// finalize with ostree alone and the other with ostree-prefinalize first.
func (b *BootedHost) Copy(t testing.TB) *BootedHost {
	t.Helper()
	s := b.Sysroot.Copy(t)
	opts := b.opts
	opts.RunDir = CopyTree(t, b.RunDir)
	return s.Boot(t, b.Deployment, opts)
}

// EtcDir is the booted deployment's etc on the host (the booted /etc).
func (b *BootedHost) EtcDir() string { return b.Deployment.EtcDir() }

// StagedPath is /run/ostree/staged-deployment as the host sees it.
func (b *BootedHost) StagedPath() string {
	return filepath.Join(b.RunDir, "ostree", "staged-deployment")
}

// bootScript is run by `unshare --mount --pid --fork` as PID 1 of the new
// namespaces: it mounts the booted view and runs the command as a child
// (never exec: PID 1 ignores signals it has no handler for, and ostree
// compares its mount namespace with PID 1's). Exit 125 means setup failed.
const bootScript = `
fail() { echo "harness: $*" >&2; exit 125; }
R=$H_ROOT
mount --bind "$H_DEPLOY" "$R" || fail "bind-mounting the deployment $H_DEPLOY"
mount --bind "$H_SYSROOT" "$R/sysroot" || fail "mounting /sysroot"
mount --bind "$H_SYSROOT/boot" "$R/boot" || fail "mounting /boot"
mount --bind "$H_VAR" "$R/var" || fail "mounting /var from $H_VAR"
mount --rbind /dev "$R/dev" || fail "mounting /dev"
mount -t proc proc "$R/proc" || fail "mounting /proc"
mount --bind "$H_RUN" "$R/run" || fail "mounting /run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" || fail "mounting /tmp"
mount --rbind "$H_USR" "$R/usr" || fail "mounting the oracle's /usr $H_USR"
if [ -d "$R/sys" ]; then
	mount --rbind /sys "$R/sys" || fail "mounting /sys"
	mount -o remount,bind,ro,nosuid,nodev,noexec "$R/sys" || fail "remounting /sys read-only"
fi
mkdir -p "$R` + BinDir + `" || fail "making ` + BinDir + `"
printf '#!/bin/sh\n# harness stub: ostree-finalize-staged is run by the test\nexit 0\n' > "$R` + BinDir + `/systemctl"
chmod 0755 "$R` + BinDir + `/systemctl"
while [ "$1" != "--" ]; do
	src=$1 dst=$2 ro=$3
	shift 3
	if [ -d "$src" ]; then
		mkdir -p "$R$dst" || fail "making mount point $dst"
	else
		mkdir -p "$(dirname "$R$dst")" || fail "making mount point $dst"
		[ -e "$R$dst" ] || : > "$R$dst" || fail "making mount point $dst"
	fi
	mount --bind "$src" "$R$dst" || fail "binding $src on $dst"
	if [ "$ro" = ro ]; then
		mount -o remount,bind,ro "$R$dst" || fail "remounting $dst read-only"
	fi
done
shift
$H_PREFIX chroot "$R" "$@"
rc=$?
exit $rc
`

// Proc is a command running in a booted namespace.
type Proc struct {
	argv           []string
	cmd            *exec.Cmd
	stdout, stderr lockedBuffer
	done           chan struct{}
	err            error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Start starts argv inside a new booted namespace. The namespace and all
// its processes end when argv exits or ctx is done.
func (b *BootedHost) Start(ctx context.Context, argv ...string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("harness: Start: empty argv")
	}
	args := []string{"--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
		"/bin/sh", "-c", bootScript, "harness-boot"}
	for _, bd := range b.opts.Binds {
		ro := "rw"
		if bd.ReadOnly {
			ro = "ro"
		}
		args = append(args, bd.Src, filepath.Clean(bd.Dst), ro)
	}
	args = append(args, "--", "/usr/bin/env", "-i", "PATH="+InnerPath, "HOME=/", "LANG=C.UTF-8",
		"OSTREE_SYSROOT_OPTS=skip-sync")
	args = append(args, b.opts.Env...)
	args = append(args, argv...)

	prefix := "unshare --mount --propagation private setpriv --bounding-set=-sys_admin"
	switch {
	case b.opts.KeepSysAdmin || b.opts.UserNS:
		prefix = "unshare --mount --propagation private"
	case b.noFreeze != "":
		prefix = "unshare --mount --propagation private " + b.noFreeze
	}
	d := b.Deployment
	cmd := exec.CommandContext(ctx, "unshare", args...)
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"H_ROOT=" + b.mnt,
		"H_DEPLOY=" + d.Dir,
		"H_SYSROOT=" + b.Sysroot.Path,
		"H_VAR=" + b.Sysroot.VarDir(d.OS),
		"H_RUN=" + b.RunDir,
		"H_PREFIX=" + prefix,
		"H_USR=" + b.Sysroot.Oracle.Usr(),
	}
	cmd.WaitDelay = 10 * time.Second
	// If the test binary dies, unshare dies, and --kill-child takes the
	// namespace with it: no daemon outlives the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if b.opts.UserNS {
		// See BootOptions.UserNS. Setgroups stays allowed so that tools
		// (setpriv, su) can still change supplementary groups inside.
		full := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1<<32 - 1}}
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = full
		cmd.SysProcAttr.GidMappings = full
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
	}
	p := &Proc{argv: argv, cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &p.stdout, &p.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("harness: starting booted namespace: %w", err)
	}
	go func() {
		err := cmd.Wait()
		if err != nil {
			ce := &CmdError{Argv: argv, Stdout: p.stdout.String(), Stderr: p.stderr.String(), Err: err}
			if ce.ExitCode() == 125 && strings.Contains(ce.Stderr, "harness: ") {
				err = fmt.Errorf("harness: booted namespace setup for %s failed: %w", d.Dir, ce)
			} else {
				err = ce
			}
		}
		p.err = err
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process (and its namespace) has ended.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Output is what the process printed so far.
func (p *Proc) Output() (stdout, stderr string) { return p.stdout.String(), p.stderr.String() }

// Wait waits for the process; err is a *CmdError (with output) when it
// failed.
func (p *Proc) Wait() (stdout, stderr string, err error) {
	<-p.done
	return p.stdout.String(), p.stderr.String(), p.err
}

// Signal sends sig to the command itself (not to the namespace's PID 1). It
// waits (up to 10s) until the command has been exec'd, recognised by its
// command line, so a signal never hits the setup steps instead.
func (p *Proc) Signal(sig syscall.Signal) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-p.done:
			return os.ErrProcessDone
		default:
		}
		if pid := p.commandPid(); pid > 0 {
			return syscall.Kill(pid, sig)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("harness: %s did not start within 10s", p.argv[0])
		}
		time.Sleep(5 * time.Millisecond) // polling /proc, not synchronising
	}
}

// commandPid finds unshare -> PID 1 (sh) -> command, and returns the
// command's host pid once its whole command line is the one we started
// (the forked shell that execs the setup chain has a different one).
func (p *Proc) commandPid() int {
	want := strings.Join(p.argv, "\x00") + "\x00"
	for _, init := range children(p.cmd.Process.Pid) {
		for _, c := range children(init) {
			cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c))
			if err == nil && string(cl) == want {
				return c
			}
		}
	}
	return 0
}

func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// Run runs argv inside a new booted namespace and waits for it.
func (b *BootedHost) Run(ctx context.Context, argv ...string) (stdout, stderr string, err error) {
	p, err := b.Start(ctx, argv...)
	if err != nil {
		return "", "", err
	}
	return p.Wait()
}

// Shell runs `/bin/sh -c script` inside.
func (b *BootedHost) Shell(ctx context.Context, script string) (stdout, stderr string, err error) {
	return b.Run(ctx, "/bin/sh", "-c", script)
}

// MustRun is Run that fails the test on error and returns stdout.
func (b *BootedHost) MustRun(argv ...string) string {
	b.t.Helper()
	out, _, err := b.Run(context.Background(), argv...)
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// MustShell is Shell that fails the test on error and returns stdout.
func (b *BootedHost) MustShell(script string) string {
	b.t.Helper()
	return b.MustRun("/bin/sh", "-c", script)
}

// Status is `ostree admin status` inside (with booted/staged marks).
func (b *BootedHost) Status() string {
	b.t.Helper()
	return b.MustRun("ostree", "admin", "status")
}

// Deployments parses the booted `ostree admin status`.
func (b *BootedHost) Deployments() []Deployment {
	b.t.Helper()
	ds, err := ParseStatus(b.Status(), b.Sysroot.Path)
	if err != nil {
		b.t.Fatal(err)
	}
	return ds
}

// Stage runs `ostree admin deploy --stage --os=OS ARGS... REF` inside (OS
// is the booted deployment's unless args has --os=) and returns the staged
// deployment. It fails the test when staging fails.
func (b *BootedHost) Stage(ref string, args ...string) Deployment {
	b.t.Helper()
	argv := []string{"ostree", "admin", "deploy", "--stage"}
	hasOS := false
	for _, a := range args {
		hasOS = hasOS || strings.HasPrefix(a, "--os=")
	}
	if !hasOS {
		argv = append(argv, "--os="+b.Deployment.OS)
	}
	argv = append(argv, args...)
	b.MustRun(append(argv, ref)...)
	if _, err := os.Stat(b.StagedPath()); err != nil {
		b.t.Fatalf("ostree admin deploy --stage succeeded but %v", err)
	}
	for _, d := range b.Deployments() {
		if d.Staged {
			return d
		}
	}
	b.t.Fatalf("no staged deployment in status:\n%s", b.Status())
	return Deployment{}
}

// FinalizeResult is what `ostree admin finalize-staged` did.
type FinalizeResult struct {
	Stdout, Stderr string
	// Merged reports the "Copying /etc changes: N modified, N removed, N
	// added" line that ostree prints (2022.7, merge_configuration_from) when
	// it performs the /etc merge itself, i.e. when the staged state has a
	// merge-deployment; the counts are ostree's.
	Merged                   bool
	Modified, Removed, Added int
}

var copyingEtcRE = regexp.MustCompile(`(?m)^Copying /etc changes: ([0-9]+) modified, ([0-9]+) removed, ([0-9]+) added$`)

// ParseFinalize reads ostree's merge line from finalize-staged (or
// non-staged deploy) output.
func ParseFinalize(stdout, stderr string) FinalizeResult {
	r := FinalizeResult{Stdout: stdout, Stderr: stderr}
	if m := copyingEtcRE.FindStringSubmatch(stdout); m != nil {
		r.Merged = true
		r.Modified, _ = strconv.Atoi(m[1])
		r.Removed, _ = strconv.Atoi(m[2])
		r.Added, _ = strconv.Atoi(m[3])
	}
	return r
}

// FinalizeStaged runs `ostree admin finalize-staged` inside, as
// ostree-finalize-staged.service does at shutdown, and returns its output
// parsed; the result is filled even when it fails.
func (b *BootedHost) FinalizeStaged(ctx context.Context) (FinalizeResult, error) {
	out, errOut, err := b.Run(ctx, "ostree", "admin", "finalize-staged")
	return ParseFinalize(out, errOut), err
}
