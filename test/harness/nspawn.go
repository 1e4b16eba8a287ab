package harness

// Longer than 500 lines on purpose: one harness mode: the boot image and
// the systemd-nspawn machine that boots it.

// Booting a real ostree deployment under systemd-nspawn: the container's
// PID 1 is the deployment's own systemd, /sysroot, /boot and /var are bound
// from the sysroot, and /run/ostree-booted is made by a tmpfiles.d entry, so
// ostree sees a booted host and its own units (ostree-finalize-staged.service
// from Debian's ostree-boot package) run at poweroff as on a real machine.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NspawnOS is the stateroot of a boot image's sysroot.
const NspawnOS = "debian"

// RequireNspawn is RequireRoot plus systemd-nspawn and the finished Debian
// root of suite (test/roots/build.sh SUITE); it returns the root's path.
func RequireNspawn(t testing.TB, suite string) string {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		t.Fatalf("%s=1 but systemd-nspawn is missing: %v (run make deps: systemd-container)", E2EEnv, err)
	}
	base := os.Getenv(RootsEnv)
	if base == "" {
		base = DefaultRoots
	}
	root := filepath.Join(base, suite)
	if _, err := os.Stat(filepath.Join(root, ".complete")); err != nil {
		t.Fatalf("%s=1 but the %s root is not built: %v (run test/roots/build.sh %s)", E2EEnv, suite, err, suite)
	}
	return root
}

// BootImage is one Debian root committed into a sysroot and deployed twice
// (v0 rollback, v1 default), ready to be copied and booted. Updates commit
// v2 on the same branch.
type BootImage struct {
	Suite, Root string
	// Sysroot is the template; boot a Copy.
	Sysroot *Sysroot
	// Branch is the ref every version is committed on.
	Branch  string
	updates []map[string]string
}

// BootImageOptions configure NewBootImage.
type BootImageOptions struct {
	// Layers are directories overlaid on the root (in order) in every
	// commit, e.g. a `make install DESTDIR=` tree.
	Layers []string
	// Enable lists units to enable as a vendor preset would
	// (TARGET.wants/UNIT symlinks under /usr/lib/systemd/system).
	Enable map[string][]string
	// Versions are files (paths relative to the tree) overlaid per version:
	// index 0 on v0, 1 on v1, 2 on the update (CommitUpdate). Overlays add
	// or replace, they cannot delete.
	Versions []map[string]string
}

// NewBootImage builds the template sysroot: the root (without /dev, /proc,
// /sys, /run, /tmp, /var, /boot, whose empty mount points are added), its
// /etc as /usr/etc, a kernel and initramfs stub, the ostree-boot package's
// units (downloaded with apt from the root's own package lists when the root
// lacks them), the tmpfiles.d entry for /run/ostree-booted, a persistent
// journal, and the layers; committed as v0 and v1 and both deployed.
func NewBootImage(t testing.TB, suite, root string, o BootImageOptions) *BootImage {
	t.Helper()
	start := time.Now()
	defer func() { t.Logf("boot image of %s built in %v", suite, time.Since(start).Round(time.Millisecond)) }()
	work := t.TempDir()
	layer := filepath.Join(work, "boot")
	unitDir := filepath.Join(layer, "usr/lib/systemd/system")
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "var", "boot", "sysroot", "usr/lib/modules/6.1.0-test",
		"usr/lib/tmpfiles.d", "usr/lib/systemd/journald.conf.d", "usr/lib/systemd/system"} {
		mustMkdir(t, filepath.Join(layer, d))
	}
	os.Chmod(filepath.Join(layer, "tmp"), 0o1777)
	mustSymlink(t, "sysroot/ostree", filepath.Join(layer, "ostree"))
	mustWrite(t, filepath.Join(layer, "usr/lib/modules/6.1.0-test/vmlinuz"), "kernel stub\n")
	mustWrite(t, filepath.Join(layer, "usr/lib/modules/6.1.0-test/initramfs.img"), "initramfs stub\n")
	mustWrite(t, filepath.Join(layer, "usr/lib/tmpfiles.d/ostree-booted-nspawn.conf"),
		"# the initramfs's ostree-prepare-root makes this on a real boot\nf /run/ostree-booted 0644 root root -\n")
	mustWrite(t, filepath.Join(layer, "usr/lib/systemd/journald.conf.d/test.conf"), "[Journal]\nStorage=persistent\n")
	installOstreeBoot(t, root, work, unitDir)
	t.Logf("ostree-boot units after %v", time.Since(start).Round(time.Millisecond))
	// ostree 2022.7 starts its finalization unit through its path unit;
	// ostree ≥ 2025.2 has none (deploy --stage starts the service).
	enable := map[string][]string{}
	if _, err := os.Stat(filepath.Join(unitDir, "ostree-finalize-staged.path")); err == nil {
		enable["multi-user.target"] = []string{"ostree-finalize-staged.path"}
	}
	for tgt, us := range o.Enable {
		enable[tgt] = append(enable[tgt], us...)
	}
	for tgt, us := range enable {
		mustMkdir(t, filepath.Join(unitDir, tgt+".wants"))
		for _, u := range us {
			mustSymlink(t, "../"+u, filepath.Join(unitDir, tgt+".wants", u))
		}
	}
	etc := filepath.Join(work, "etc", "usr")
	mustMkdir(t, etc)
	if out, err := exec.Command("cp", "-a", filepath.Join(root, "etc"), filepath.Join(etc, "etc")).CombinedOutput(); err != nil {
		t.Fatalf("cp %s/etc: %v\n%s", root, err, out)
	}
	skip := filepath.Join(work, "skip")
	mustWrite(t, skip, "/etc\n/dev\n/proc\n/sys\n/run\n/tmp\n/var\n/boot\n/.complete\n/.ostree-version\n")

	s := NewSysroot(t, Options{OS: NspawnOS})
	img := &BootImage{Suite: suite, Root: root, Sysroot: s, Branch: NspawnOS + "/" + suite}
	args := []string{"commit", "--repo=" + s.Repo, "-b", img.Branch, "-s", "v0", "--skip-list=" + skip,
		"--owner-uid=0", "--owner-gid=0", "--no-xattrs", "--tree=dir=" + root, "--tree=dir=" + filepath.Dir(etc), "--tree=dir=" + layer}
	for _, l := range o.Layers {
		args = append(args, "--tree=dir="+l)
	}
	if len(o.Versions) > 0 {
		args = append(args, "--tree=dir="+filesLayer(t, o.Versions[0]))
	}
	s.mustRun("ostree", args...)
	t.Logf("committed after %v", time.Since(start).Round(time.Millisecond))
	img.updates = o.Versions
	v0 := s.RevParse(img.Branch)
	img.commitVersion(1)
	s.Deploy(NspawnOS, v0)
	s.Deploy(NspawnOS, img.Branch)
	return img
}

func (img *BootImage) commitVersion(v int) {
	s := img.Sysroot
	s.t.Helper()
	args := []string{"commit", "--repo=" + s.Repo, "-b", img.Branch, "-s", "v" + strconv.Itoa(v), "--tree=ref=" + img.Branch}
	if v < len(img.updates) {
		args = append(args, "--tree=dir="+filesLayer(s.t, img.updates[v]))
	} else {
		args = append(args, "--allow-empty") // only the version differs
	}
	s.mustRun("ostree", args...)
}

// CommitUpdate commits the update (v2) into sysroot s (a Copy of the
// template) and returns its checksum.
func (img *BootImage) CommitUpdate(s *Sysroot) string {
	c := *img
	c.Sysroot = s
	c.commitVersion(2)
	return s.RevParse(img.Branch)
}

// filesLayer is a tree with files (relative paths to contents).
func filesLayer(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, c := range files {
		mustMkdir(t, filepath.Dir(filepath.Join(dir, p)))
		mustWrite(t, filepath.Join(dir, p), c)
	}
	return dir
}

// installOstreeBoot copies the ostree-boot package's systemd units (Debian
// splits them from the ostree package) of the root's own ostree version into
// unitDir: from the root when installed there, else downloaded with
// apt-get using the root's package lists and sources.
func installOstreeBoot(t testing.TB, root, work, unitDir string) {
	t.Helper()
	for _, d := range []string{"usr/lib/systemd/system", "lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(root, d, "ostree-finalize-staged.service")); err == nil {
			return // installed in the root: committed with it
		}
	}
	dl := filepath.Join(work, "deb")
	mustMkdir(t, filepath.Join(dl, "cache"))
	cmd := exec.Command("apt-get", "download", "-q",
		"-o", "Dir::State::Lists="+filepath.Join(root, "var/lib/apt/lists"),
		"-o", "Dir::Etc::SourceList="+filepath.Join(root, "etc/apt/sources.list"),
		"-o", "Dir::Etc::SourceParts="+filepath.Join(root, "etc/apt/sources.list.d"),
		"-o", "Dir::State::status="+filepath.Join(root, "var/lib/dpkg/status"),
		"-o", "Dir::Cache="+filepath.Join(dl, "cache"),
		"-o", "APT::Sandbox::User=root",
		"ostree-boot")
	cmd.Dir = dl
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apt-get download ostree-boot for %s: %v\n%s", root, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "ostree-boot_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("apt-get download ostree-boot: got %v", debs)
	}
	x := filepath.Join(dl, "x")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x %s: %v\n%s", debs[0], err, out)
	}
	found := false
	for _, d := range []string{"usr/lib/systemd/system", "lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(x, d, "ostree-finalize-staged.service")); err == nil {
			if out, err := exec.Command("cp", "-a", filepath.Join(x, d)+"/.", unitDir).CombinedOutput(); err != nil {
				t.Fatalf("cp ostree-boot units: %v\n%s", err, out)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("%s has no ostree-finalize-staged.service", debs[0])
	}
}

func mustMkdir(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t testing.TB, p, content string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t testing.TB, target, p string) {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// Machine is a deployment booted under systemd-nspawn.
type Machine struct {
	t       testing.TB
	Sysroot *Sysroot
	// Deployment is the booted one.
	Deployment Deployment
	Name       string
	cmd        *exec.Cmd
	out        lockedBuffer
	done       chan struct{}
	err        error
	leader     int
}

var machineSeq struct {
	sync.Mutex
	n int
}

// NspawnBoot boots deployment d of s (a sysroot made by NewBootImage or a
// Copy of one) and waits until its systemd reports the system running.
// extra are further systemd-nspawn options (before the directory).
func (s *Sysroot) NspawnBoot(t testing.TB, d Deployment, extra ...string) *Machine {
	t.Helper()
	machineSeq.Lock()
	machineSeq.n++
	name := fmt.Sprintf("opf-%d-%d", os.Getpid(), machineSeq.n)
	machineSeq.Unlock()
	args := []string{"--boot", "--register=no", "--keep-unit", "--quiet", "--machine=" + name,
		"--directory=" + d.Dir,
		"--bind=" + s.Path + ":/sysroot", "--bind=" + filepath.Join(s.Path, "boot") + ":/boot",
		"--bind=" + s.VarDir(d.OS) + ":/var",
		"--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=pipe"}
	args = append(args, extra...)
	m := &Machine{t: t, Sysroot: s, Deployment: d, Name: name, done: make(chan struct{})}
	m.cmd = exec.Command("systemd-nspawn", args...)
	m.cmd.Stdout, m.cmd.Stderr = &m.out, &m.out
	m.cmd.Stdin = nil
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	go func() { m.err = m.cmd.Wait(); close(m.done) }()
	t.Cleanup(m.kill)
	// The container's PID 1 is nspawn's child running systemd.
	m.poll("the container's systemd to start", time.Minute, func() bool {
		for _, c := range children(m.cmd.Process.Pid) {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); err == nil && strings.TrimSpace(string(b)) == "systemd" {
				m.leader = c
				return true
			}
		}
		return false
	})
	state := ""
	m.poll("the system to finish booting", 2*time.Minute, func() bool {
		out, _ := m.Run("systemctl", "is-system-running")
		state = strings.TrimSpace(out)
		return state == "running" || state == "degraded"
	})
	if state == "degraded" {
		out, _ := m.Run("systemctl", "--failed", "--no-legend")
		t.Logf("%s booted degraded:\n%s", name, out)
	}
	return m
}

// pollErr calls cond until it holds (true) or timeout passes or the
// container exits (false).
func (m *Machine) pollErr(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-m.done:
			return false
		default:
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// poll calls cond until it holds, failing the test after timeout (also
// when the container exits before).
func (m *Machine) poll(what string, timeout time.Duration, cond func() bool) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-m.done:
			m.t.Fatalf("%s: container exited while waiting for %s: %v\n%s", m.Name, what, m.err, m.out.String())
		default:
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: %s: not within %v\n%s", m.Name, what, timeout, m.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Poll is poll for tests (cond checked every 100 ms until timeout).
func (m *Machine) Poll(what string, timeout time.Duration, cond func() bool) {
	m.t.Helper()
	m.poll(what, timeout, cond)
}

// Run runs argv inside the container (all its namespaces, a clean
// environment) and returns stdout (stderr on error, in the *CmdError).
func (m *Machine) Run(argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{"-t", strconv.Itoa(m.leader), "-a", "--", "/usr/bin/env", "-i",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), &CmdError{Argv: argv, Stdout: out.String(), Stderr: errb.String(), Err: err}
	}
	return out.String(), nil
}

// MustRun is Run failing the test on error.
func (m *Machine) MustRun(argv ...string) string {
	m.t.Helper()
	out, err := m.Run(argv...)
	if err != nil {
		m.t.Fatalf("%s: %v", m.Name, err)
	}
	return out
}

// MustShell runs `/bin/sh -c script` inside.
func (m *Machine) MustShell(script string) string {
	m.t.Helper()
	return m.MustRun("/bin/sh", "-c", script)
}

// UnitState is `systemctl show -P ActiveState,SubState,Result UNIT` as
// "active/running/success".
func (m *Machine) UnitState(unit string) string {
	out, err := m.Run("systemctl", "show", "--property=ActiveState,SubState,Result", unit)
	if err != nil {
		return "error: " + err.Error()
	}
	kv := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			kv[k] = v
		}
	}
	return kv["ActiveState"] + "/" + kv["SubState"] + "/" + kv["Result"]
}

// WaitUnit polls until the unit's UnitState has the prefix want.
func (m *Machine) WaitUnit(unit, want string, timeout time.Duration) {
	m.t.Helper()
	last := ""
	ok := m.pollErr(timeout, func() bool { last = m.UnitState(unit); return strings.HasPrefix(last, want) })
	if !ok {
		st, _ := m.Run("systemctl", "status", "--no-pager", "-l", unit)
		j, _ := m.Run("journalctl", "--no-pager", "-b", "-n", "60")
		m.t.Fatalf("%s: %s: want %s within %v, is %s\n%s\n%s", m.Name, unit, want, timeout, last, st, j)
	}
}

// Poweroff runs `systemctl poweroff` and waits (up to timeout) for the
// container to exit.
func (m *Machine) Poweroff(timeout time.Duration) {
	m.t.Helper()
	m.Run("systemctl", "poweroff") // may fail as the system goes down
	m.Wait(timeout)
}

// Wait waits (up to timeout) for the container to exit by itself.
func (m *Machine) Wait(timeout time.Duration) {
	m.t.Helper()
	select {
	case <-m.done:
	case <-time.After(timeout):
		m.t.Fatalf("%s: still running %v after poweroff\n%s", m.Name, timeout, m.out.String())
	}
	if m.err != nil {
		m.t.Fatalf("%s: systemd-nspawn: %v\n%s", m.Name, m.err, m.out.String())
	}
}

// Done is closed when the container has exited.
func (m *Machine) Done() <-chan struct{} { return m.done }

// kill ends a container a failed test left running (its PID 1 first, which
// ends the whole PID namespace).
func (m *Machine) kill() {
	select {
	case <-m.done:
		return
	default:
	}
	if m.leader > 0 {
		syscall.Kill(m.leader, syscall.SIGKILL)
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
}

// JournalEntry is one message of the persistent journal.
type JournalEntry struct {
	Boot, Unit, Ident, Message string
	Priority                   int
}

func (e JournalEntry) String() string {
	u := e.Unit
	if u == "" {
		u = "-"
	}
	return fmt.Sprintf("%s %s %s: %s", e.Boot[:min(8, len(e.Boot))], u, e.Ident, e.Message)
}

// Journal reads the stateroot's persistent journal (var/log/journal) with
// the host's journalctl, in order.
func (s *Sysroot) Journal(t testing.TB) []JournalEntry {
	t.Helper()
	dir := filepath.Join(s.VarDir(NspawnOS), "log", "journal")
	out, err := exec.Command("journalctl", "--directory="+dir, "-o", "json", "--no-pager").Output()
	if err != nil {
		t.Fatalf("journalctl --directory=%s: %v", dir, err)
	}
	var es []JournalEntry
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var raw map[string]any
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			t.Fatalf("journal: %v: %s", err, sc.Text())
		}
		// UNIT is set on PID 1's messages about a unit (Stopping...).
		e := JournalEntry{Boot: jstr(raw["_BOOT_ID"]), Unit: jstr(raw["UNIT"]), Ident: jstr(raw["SYSLOG_IDENTIFIER"]), Message: jstr(raw["MESSAGE"])}
		if e.Unit == "" {
			e.Unit = jstr(raw["_SYSTEMD_UNIT"])
		}
		e.Priority, _ = strconv.Atoi(jstr(raw["PRIORITY"]))
		es = append(es, e)
	}
	return es
}

// jstr is a journal JSON field: a string, or an array of bytes when the
// value is not UTF-8.
func jstr(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []any:
		b := make([]byte, 0, len(x))
		for _, c := range x {
			if f, ok := c.(float64); ok {
				b = append(b, byte(f))
			}
		}
		return string(b)
	}
	return ""
}

// HostPID is the host's PID of the unit's main process (0 when none).
func (m *Machine) HostPID(unit string) int {
	m.t.Helper()
	inner, _ := strconv.Atoi(strings.TrimSpace(m.MustRun("systemctl", "show", "--value", "--property=MainPID", unit)))
	if inner == 0 {
		return 0
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", m.leader))
	if err != nil {
		m.t.Fatal(err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/status")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) == 3 && f[0] == "NSpid:" && f[2] == strconv.Itoa(inner) {
				pid, _ := strconv.Atoi(f[1])
				if n, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); n == ns {
					return pid
				}
			}
		}
	}
	m.t.Fatalf("%s: no host PID for %s's main PID %d", m.Name, unit, inner)
	return 0
}

// Hang stops the unit's main process for good, as a process that hangs
// would: every thread traced from the host (ptrace), so neither SIGTERM
// nor the SIGCONT systemd sends after it resumes it; only SIGKILL ends it.
// The tracer reaps each thread's exit so systemd sees the process end.
func (m *Machine) Hang(unit string) {
	m.t.Helper()
	pid := m.HostPID(unit)
	attached := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // ptrace is per tracer thread; it ends with us
		traced := map[int]bool{}
		for grew := true; grew; { // until no thread is left untraced
			grew = false
			ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil {
				attached <- err
				return
			}
			for _, e := range ents {
				tid, _ := strconv.Atoi(e.Name())
				if traced[tid] {
					continue
				}
				if err := syscall.PtraceAttach(tid); err != nil {
					attached <- fmt.Errorf("thread %d: %w", tid, err)
					return
				}
				var ws syscall.WaitStatus
				if _, err := syscall.Wait4(tid, &ws, syscall.WALL, nil); err != nil {
					attached <- err
					return
				}
				traced[tid], grew = true, true
			}
		}
		attached <- nil
		// Never resume; reap each thread's exit (after SIGKILL).
		for len(traced) > 0 {
			for tid := range traced {
				var ws syscall.WaitStatus
				w, err := syscall.Wait4(tid, &ws, syscall.WALL|syscall.WNOHANG, nil)
				if err != nil || (w == tid && (ws.Exited() || ws.Signaled())) {
					delete(traced, tid)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	if err := <-attached; err != nil {
		m.t.Fatalf("%s: ptrace %s (pid %d): %v", m.Name, unit, pid, err)
	}
}
