package harness

// Longer than 500 lines on purpose: the sysroot fixture: one type (Sysroot)
// with the ostree commands that build it.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/treecmp"
	"golang.org/x/sys/unix"
)

// DefaultOS is the stateroot NewSysroot creates when Options.OS is empty.
const DefaultOS = "testos"

// Options configure NewSysroot.
type Options struct {
	// OS is the first stateroot (default DefaultOS).
	OS string
	// Oracle is the ostree whose commands make and change the sysroot
	// (default OracleOf(t)).
	Oracle *Oracle
}

// Sysroot is a throwaway physical sysroot made by the real ostree command
// (`admin init-fs --modern`, `admin os-init`) in a t.TempDir(). Every
// method runs the ostree command and fails the test (with the command line,
// stdout and stderr) when it fails. A Sysroot is bound to the test that made
// it; use WithT inside subtests.
type Sysroot struct {
	t testing.TB
	// Path is the physical sysroot (what ostree calls --sysroot).
	Path string
	// Repo is Path/ostree/repo (a "bare" repository).
	Repo string
	// OS is the first stateroot.
	OS string
	// Oracle is the ostree that made the sysroot; every ostree command on
	// it, and the booted namespaces, use it.
	Oracle Oracle
	// scratch holds trees being committed; outside Path so CopyTree never
	// copies it.
	scratch string
}

// NewSysroot makes an empty sysroot with one stateroot and no commits.
// Cleanup clears the immutable bit ostree puts on deployment directories so
// t.TempDir's removal works.
func NewSysroot(t testing.TB, o Options) *Sysroot {
	t.Helper()
	if o.OS == "" {
		o.OS = DefaultOS
	}
	dir := filepath.Join(t.TempDir(), "sysroot")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	oracle := OracleOf(t)
	if o.Oracle != nil {
		oracle = *o.Oracle
	}
	if err := oracle.check(); err != nil {
		t.Fatal(err)
	}
	s := &Sysroot{t: t, Path: dir, Repo: filepath.Join(dir, "ostree", "repo"), OS: o.OS, Oracle: oracle, scratch: t.TempDir()}
	registerImmutableCleanup(t, dir)
	s.mustRun("ostree", "admin", "init-fs", "--modern", dir)
	s.InitOS(o.OS)
	return s
}

// WithT returns the same sysroot reporting failures to t (for subtests).
func (s *Sysroot) WithT(t testing.TB) *Sysroot {
	c := *s
	c.t = t
	return &c
}

// RunOstree runs `ostree args...` on the host (not booted) and returns its
// output. It drops CAP_SYS_ADMIN from the command's bounding set so that
// ostree's FIFREEZE of /boot fails with EPERM and it falls back to syncfs:
// the throwaway sysroot lives on the host's root filesystem, which a freeze
// would stall for every process on the machine. OSTREE_SYSROOT_OPTS=skip-sync
// likewise skips ostree's global sync(). Neither changes what ostree writes.
// It runs DefaultOracle's ostree; Sysroot.RunOstree runs the sysroot's.
func RunOstree(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	return runCmd(ctx, DefaultOracle(), nil, "ostree", args...)
}

// RunOstree is the package's RunOstree with the sysroot's oracle.
func (s *Sysroot) RunOstree(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	return runCmd(ctx, s.Oracle, nil, "ostree", args...)
}

// ostreeArgv wraps an ostree command line as RunOstree describes.
func ostreeArgv(args []string) []string {
	if os.Geteuid() == 0 {
		return append([]string{"setpriv", "--bounding-set=-sys_admin", "ostree"}, args...)
	}
	return append([]string{"ostree"}, args...)
}

func ostreeEnv(extra []string) []string {
	env := os.Environ()
	if os.Getenv("OSTREE_SYSROOT_OPTS") == "" {
		env = append(env, "OSTREE_SYSROOT_OPTS=skip-sync")
	}
	return append(env, extra...)
}

func runCmd(ctx context.Context, oracle Oracle, env []string, name string, args ...string) (string, string, error) {
	argv := append([]string{name}, args...)
	if name == "ostree" {
		argv = oracle.oracleArgv(ostreeArgv(args))
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = ostreeEnv(env)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		err = &CmdError{Argv: append([]string{name}, args...), Stdout: out.String(), Stderr: errb.String(), Err: err}
	}
	return out.String(), errb.String(), err
}

// CmdError is a failed command with its output, so a test failure shows why.
type CmdError struct {
	Argv           []string
	Stdout, Stderr string
	Err            error
}

func (e *CmdError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v", strings.Join(e.Argv, " "), e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		fmt.Fprintf(&b, "\nstderr:\n%s", s)
	}
	if s := strings.TrimSpace(e.Stdout); s != "" {
		fmt.Fprintf(&b, "\nstdout:\n%s", s)
	}
	return b.String()
}

func (e *CmdError) Unwrap() error { return e.Err }

// ExitCode is the command's exit status, or -1 when it did not exit normally.
func (e *CmdError) ExitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

func (s *Sysroot) mustRun(name string, args ...string) string {
	s.t.Helper()
	out, _, err := runCmd(context.Background(), s.Oracle, nil, name, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// Ostree runs `ostree args...` on the host and returns stdout.
func (s *Sysroot) Ostree(args ...string) string {
	s.t.Helper()
	return s.mustRun("ostree", args...)
}

// Admin runs `ostree admin SUB --sysroot=PATH ARGS...` and returns stdout.
func (s *Sysroot) Admin(sub string, args ...string) string {
	s.t.Helper()
	return s.Ostree(append([]string{"admin", sub, "--sysroot=" + s.Path}, args...)...)
}

// RepoCmd runs `ostree SUB --repo=REPO ARGS...` and returns stdout.
func (s *Sysroot) RepoCmd(sub string, args ...string) string {
	s.t.Helper()
	return s.Ostree(append([]string{sub, "--repo=" + s.Repo}, args...)...)
}

// InitOS adds a stateroot (`ostree admin os-init`).
func (s *Sysroot) InitOS(osname string) {
	s.t.Helper()
	s.Admin("os-init", osname)
}

// CommitOptions are the optional parts of a commit.
type CommitOptions struct {
	Subject string
	// Parent overrides the parent (ostree's --parent; "none" for none).
	Parent string
	// Timestamp overrides the commit time (ostree's --timestamp syntax,
	// e.g. "2020-01-01 00:00:00 +0000"); two identical commits made in the
	// same second otherwise get the same checksum.
	Timestamp string
	// Metadata and DetachedMetadata add string keys (detached metadata makes
	// a .commitmeta object).
	Metadata, DetachedMetadata map[string]string
	// Args are passed to `ostree commit` verbatim.
	Args []string
}

// Commit writes tree to a scratch directory and commits it on branch
// (branch "" makes an orphan commit); it returns the commit checksum.
func (s *Sysroot) Commit(branch string, tree *Tree) string {
	s.t.Helper()
	return s.CommitWith(branch, tree, CommitOptions{})
}

// CommitWith is Commit with options.
func (s *Sysroot) CommitWith(branch string, tree *Tree, o CommitOptions) string {
	s.t.Helper()
	dir, err := os.MkdirTemp(s.scratch, "tree")
	if err != nil {
		s.t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := tree.Write(dir); err != nil {
		s.t.Fatalf("writing tree for commit: %v", err)
	}
	subject := o.Subject
	if subject == "" {
		subject = "harness commit"
	}
	args := []string{"--tree=dir=" + dir, "--subject=" + subject}
	if branch == "" {
		args = append(args, "--orphan")
	} else {
		args = append(args, "--branch="+branch)
	}
	if o.Parent != "" {
		args = append(args, "--parent="+o.Parent)
	}
	if o.Timestamp != "" {
		args = append(args, "--timestamp="+o.Timestamp)
	}
	for _, k := range sortedKeys(o.Metadata) {
		args = append(args, "--add-metadata-string="+k+"="+o.Metadata[k])
	}
	for _, k := range sortedKeys(o.DetachedMetadata) {
		args = append(args, "--add-detached-metadata-string="+k+"="+o.DetachedMetadata[k])
	}
	args = append(args, o.Args...)
	out := strings.TrimSpace(s.RepoCmd("commit", args...))
	if !checksumRE.MatchString(out) {
		s.t.Fatalf("ostree commit printed %q, want a checksum", out)
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

var checksumRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// RevParse resolves a ref to its checksum.
func (s *Sysroot) RevParse(ref string) string {
	s.t.Helper()
	return strings.TrimSpace(s.RepoCmd("rev-parse", ref))
}

// Deploy runs `ostree admin deploy --sysroot=PATH --os=OS --karg=K... REF`
// (not booted, so finalized at once) and returns the new deployment.
func (s *Sysroot) Deploy(osname, ref string, kargs ...string) Deployment {
	s.t.Helper()
	args := []string{"--os=" + osname}
	for _, k := range kargs {
		args = append(args, "--karg="+k)
	}
	return s.DeployArgs(ref, args...)
}

// DeployArgs runs `ostree admin deploy --sysroot=PATH ARGS... REF` with raw
// arguments (--os, --karg, --not-as-default, --retain, ...) and returns the
// deployment that was not there before.
func (s *Sysroot) DeployArgs(ref string, args ...string) Deployment {
	s.t.Helper()
	before := map[string]bool{}
	for _, d := range s.Deployments() {
		before[d.OS+"/"+d.Name()] = true
	}
	s.Admin("deploy", append(args, ref)...)
	for _, d := range s.Deployments() {
		if !before[d.OS+"/"+d.Name()] {
			return d
		}
	}
	s.t.Fatalf("ostree admin deploy %s: no new deployment in status:\n%s", ref, s.Status())
	return Deployment{}
}

// Pin pins the deployment at index (`ostree admin pin`).
func (s *Sysroot) Pin(index int) {
	s.t.Helper()
	s.Admin("pin", strconv.Itoa(index))
}

// Unpin unpins the deployment at index.
func (s *Sysroot) Unpin(index int) {
	s.t.Helper()
	s.Admin("pin", "--unpin", strconv.Itoa(index))
}

// CreateRef makes ref name point at csum (`ostree refs --create`); a name
// "remote:ref" makes a remote ref under refs/remotes/remote/.
func (s *Sysroot) CreateRef(name, csum string) {
	s.t.Helper()
	s.RepoCmd("refs", "--create="+name, csum)
}

// DeleteRef deletes a ref (`ostree refs --delete`).
func (s *Sysroot) DeleteRef(name string) {
	s.t.Helper()
	s.RepoCmd("refs", "--delete", name)
}

// AddRemote adds a remote without GPG verification; url "" means a file://
// URL that does not exist (enough for remote refs).
func (s *Sysroot) AddRemote(name, url string) {
	s.t.Helper()
	if url == "" {
		url = "file:///nonexistent/harness-remote"
	}
	s.RepoCmd("remote", "add", "--no-gpg-verify", name, url)
}

// Refs lists the refs as `ostree refs` prints them ("name", "remote:name"), sorted.
func (s *Sysroot) Refs() []string {
	s.t.Helper()
	var refs []string
	for _, l := range strings.Split(s.RepoCmd("refs"), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			refs = append(refs, l)
		}
	}
	sort.Strings(refs)
	return refs
}

// Status is `ostree admin status --sysroot=PATH`.
func (s *Sysroot) Status() string {
	s.t.Helper()
	return s.Admin("status")
}

// Deployment is one line of `ostree admin status` (plus where it lives).
type Deployment struct {
	Index    int
	OS       string
	Checksum string
	Serial   int
	// Booted, Staged, Pending and Rollback are as status marks them (only a
	// booted view has them).
	Booted, Staged, Pending, Rollback bool
	// FinalizationLocked: status says "(finalization locked)" instead of
	// "(staged)" (2023.8 and later).
	FinalizationLocked bool
	Pinned             bool
	// Origin is the origin refspec ("" when none).
	Origin string
	// Dir is the deployment directory on the host:
	// <sysroot>/ostree/deploy/OS/deploy/CSUM.SERIAL.
	Dir string
}

// Name is "CSUM.SERIAL".
func (d Deployment) Name() string { return d.Checksum + "." + strconv.Itoa(d.Serial) }

// EtcDir is the deployment's etc on the host.
func (d Deployment) EtcDir() string { return filepath.Join(d.Dir, "etc") }

// UsrEtcDir is the deployment's usr/etc on the host.
func (d Deployment) UsrEtcDir() string { return filepath.Join(d.Dir, "usr", "etc") }

var statusLineRE = regexp.MustCompile(`^([* ]) (\S+) ([0-9a-f]{64})\.([0-9]+)(?: \((staged|finalization locked|pending|rollback)\))?$`)

// ParseStatus parses `ostree admin status` output; sysroot makes Dir.
func ParseStatus(out, sysroot string) ([]Deployment, error) {
	var ds []Deployment
	for _, l := range strings.Split(out, "\n") {
		if m := statusLineRE.FindStringSubmatch(l); m != nil {
			serial, _ := strconv.Atoi(m[4])
			d := Deployment{Index: len(ds), OS: m[2], Checksum: m[3], Serial: serial, Booted: m[1] == "*"}
			switch m[5] {
			case "staged":
				d.Staged = true
			case "finalization locked":
				// 2023.8 and later mark a locked staged deployment so
				d.Staged, d.FinalizationLocked = true, true
			case "pending":
				d.Pending = true
			case "rollback":
				d.Rollback = true
			}
			d.Dir = filepath.Join(sysroot, "ostree", "deploy", d.OS, "deploy", d.Name())
			ds = append(ds, d)
			continue
		}
		t := strings.TrimSpace(l)
		switch {
		case t == "" || t == "No deployments.":
		case !strings.HasPrefix(l, "    ") || len(ds) == 0:
			return nil, fmt.Errorf("unexpected ostree admin status line %q", l)
		case t == "Pinned: yes":
			ds[len(ds)-1].Pinned = true
		case strings.HasPrefix(t, "origin refspec: "):
			ds[len(ds)-1].Origin = strings.TrimPrefix(t, "origin refspec: ")
		}
	}
	return ds, nil
}

// Deployments parses `ostree admin status` (ostree's order).
func (s *Sysroot) Deployments() []Deployment {
	s.t.Helper()
	ds, err := ParseStatus(s.Status(), s.Path)
	if err != nil {
		s.t.Fatal(err)
	}
	return ds
}

// DeploymentDir is <sysroot>/ostree/deploy/OS/deploy/CSUM.SERIAL.
func (s *Sysroot) DeploymentDir(osname, csum string, serial int) string {
	return filepath.Join(s.Path, "ostree", "deploy", osname, "deploy", csum+"."+strconv.Itoa(serial))
}

// VarDir is the stateroot's var, <sysroot>/ostree/deploy/OS/var.
func (s *Sysroot) VarDir(osname string) string {
	return filepath.Join(s.Path, "ostree", "deploy", osname, "var")
}

// Copy makes an identical copy of the sysroot (CopyTree) bound to t.
func (s *Sysroot) Copy(t testing.TB) *Sysroot {
	t.Helper()
	dst := CopyTree(t, s.Path)
	return &Sysroot{t: t, Path: dst, Repo: filepath.Join(dst, "ostree", "repo"), OS: s.OS, Oracle: s.Oracle, scratch: t.TempDir()}
}

// CopyTree makes an identical copy of src in a new t.TempDir() and returns
// its path: one `cp -a` (so hardlinks between the repository and the
// deployments stay hardlinks, with modes, owners, times and xattrs), then
// the immutable and append-only flags, which cp does not copy, are set on
// the same paths. Cleanup clears them again.
func CopyTree(t testing.TB, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	registerImmutableCleanup(t, dst)
	if out, err := exec.Command("cp", "-a", "--", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v\n%s", src, dst, err, out)
	}
	type flagged struct {
		rel   string
		flags uint32
	}
	var todo []flagged
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() && !d.IsDir() {
			return nil
		}
		fl, err := getFlags(p)
		if err != nil {
			return err
		}
		if fl&(FlagImmutable|FlagAppend) != 0 {
			rel, _ := filepath.Rel(src, p)
			todo = append(todo, flagged{rel, fl & (FlagImmutable | FlagAppend)})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("CopyTree %s: reading flags: %v", src, err)
	}
	for _, f := range todo {
		p := filepath.Join(dst, f.rel)
		fl, err := getFlags(p)
		if err == nil {
			err = setFlags(p, fl|f.flags)
		}
		if err != nil {
			t.Fatalf("CopyTree: chattr %s: %v", p, err)
		}
	}
	return dst
}

// Flags returns the inode flags (chattr/lsattr) of path, e.g. to check
// FlagImmutable.
func Flags(path string) (uint32, error) { return getFlags(path) }

func openForFlags(p string) (int, error) {
	return unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
}

func getFlags(p string) (uint32, error) { return treecmp.Flags(p) }

func setFlags(p string, fl uint32) error {
	fd, err := openForFlags(p)
	if err != nil {
		return &fs.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(fl)); err != nil {
		return &fs.PathError{Op: "FS_IOC_SETFLAGS", Path: p, Err: err}
	}
	return nil
}

// ClearImmutable removes the immutable and append-only flags from every
// directory and regular file under root (chattr -i -a, recursively), so the
// tree can be removed or edited.
func ClearImmutable(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() && !d.IsDir() {
			return nil
		}
		return clearOne(p)
	})
}

func clearOne(p string) error {
	fl, err := getFlags(p)
	if err != nil {
		return err
	}
	if fl&(FlagImmutable|FlagAppend) == 0 {
		return nil
	}
	return setFlags(p, fl&^(FlagImmutable|FlagAppend))
}

// registerImmutableCleanup removes dir at cleanup after clearing the flags
// ostree sets (the deployment directories) and, if removal still fails, all
// flags under it. Registered after t.TempDir, so it runs first.
func registerImmutableCleanup(t testing.TB, dir string) {
	t.Cleanup(func() {
		deploys, _ := filepath.Glob(filepath.Join(dir, "ostree", "deploy", "*", "deploy", "*"))
		for _, d := range deploys {
			_ = clearOne(d) // a miss is caught by the RemoveAll below
		}
		if err := os.RemoveAll(dir); err == nil {
			return
		}
		if err := ClearImmutable(dir); err != nil {
			t.Errorf("clearing immutable flags under %s: %v", dir, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
}

// Inode flags as chattr names them (linux/fs.h FS_IMMUTABLE_FL, FS_APPEND_FL).
const (
	FlagImmutable = treecmp.FlagImmutable
	FlagAppend    = treecmp.FlagAppend
)
