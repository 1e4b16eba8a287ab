package test

// Issue 11: an unprivileged user who owns a directory of /etc races the
// root merge engine. The attacker (test/harness/attacker, run as uid 1000)
// swaps /etc/svc/d with a symlink to a root-only directory outside /etc
// (a secret and a setuid-root binary in it), moves planted setuid files
// (a hard link to that binary, a root-owned setuid file with its own
// content) into /etc/svc and out again, and renames, for
// OSTREE_PREFINALIZE_ATTACK_SECONDS (default 5, 20 under
// OSTREE_PREFINALIZE_STRESS=1) while (a) the watcher runs, (b) `stage`
// runs, (c) `finalize --pre` runs. Meanwhile and afterwards:
//   - the secret is in no file of the staged etc, of the booted etc or of
//     the attacker's stash (nothing outside /etc was read into a file);
//   - no file of the staged etc is setuid, setgid or has a
//     security.capability unless ostree's own merge of the final /etc
//     (real finalize-staged on a fork) has it at that path too;
//   - the root-only directory is unchanged, and inotify saw nothing in it
//     opened, read or written (nothing followed the symlink at all);
//   - after the attacker stops (it undoes its exchanges, so /etc is back
//     to its initial state), our seal then the real finalize-staged give
//     exactly the /etc that ostree alone gives on the fork, whether we
//     sealed or fell back.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

const attackUID = 1000

type attackEnv struct {
	*watchEnv
	attacker string // the helper binary
	rootonly string // the root-only directory outside /etc (host path)
	stash    string // the attacker's directory outside /etc (host path)
	secret   string
	suid     string // content of the setuid-root binary
	alone    string // content of the root-owned setuid file the user wrote
	want     harness.Manifest
}

func attackDuration() time.Duration {
	if s := os.Getenv("OSTREE_PREFINALIZE_ATTACK_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err == nil && n > 0 {
			return time.Duration(n) * time.Second
		}
	}
	if os.Getenv("OSTREE_PREFINALIZE_STRESS") == "1" {
		return 20 * time.Second
	}
	return 5 * time.Second
}

func buildAttacker(t *testing.T) string {
	t.Helper()
	// Outside t.TempDir() (0700): the attacker's uid must be able to run it.
	dir, err := os.MkdirTemp("", "attacker")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, "attacker")
	if b, err := exec.Command("go", "build", "-o", bin, "github.com/ostree-prefinalize/ostree-prefinalize/test/harness/attacker").CombinedOutput(); err != nil {
		t.Fatalf("go build attacker: %v\n%s", err, b)
	}
	must(t, os.Chmod(bin, 0o755))
	return bin
}

// newAttackEnv boots a machine whose /etc has the user's directory svc,
// stages an update with the real ostree, forks the machine (the oracle:
// ostree alone finalizes the fork with /etc in its initial state), and,
// with stage, runs our `stage`.
func newAttackEnv(t *testing.T, stage bool) *attackEnv {
	e := newParityEnv(t)
	n := newNotifyListener(t)
	e.opts.Binds = append(e.opts.Binds, harness.Bind{Src: n.dir, Dst: notifyDst})
	e.opts.Env = append(e.opts.Env, "NOTIFY_SOCKET="+notifyDst+"/sock")
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	tr := harness.NewTree(harness.TreeOptions{Seed: seed, Etc: &harness.Shape{Files: 30, Dirs: 4, Depth: 2, MinSize: 16, MaxSize: 300, Symlinks: 2}})
	e.commit("testos/main", tr)
	d := e.s.Deploy("testos", "testos/main", "root=LABEL=x")
	w := &watchEnv{parityEnv: e, t: t, b: e.boot(d), notify: n, tree: tr, away: t.TempDir()}
	a := &attackEnv{watchEnv: w, attacker: buildAttacker(t),
		secret: fmt.Sprintf("TOPSECRET-%d", seed), suid: fmt.Sprintf("SUIDBINARY-%d", seed), alone: fmt.Sprintf("ATTACKER-SUID-%d", seed)}
	w.b.MustShell("echo changed >> /etc/hostname")

	// Outside /etc, in /var (same filesystem as /etc): the root-only
	// directory and the user's stash.
	v := e.s.VarDir("testos")
	a.rootonly = filepath.Join(v, "lib", "rootonly")
	a.stash = filepath.Join(v, "attacker-stash")
	must(t, os.MkdirAll(a.rootonly, 0o700))
	must(t, os.Chmod(a.rootonly, 0o700))
	must(t, os.WriteFile(filepath.Join(a.rootonly, "secret"), []byte(a.secret+"\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(a.rootonly, "suid"), []byte(a.suid+"\n"), 0o755))
	must(t, os.Chmod(filepath.Join(a.rootonly, "suid"), 0o755|os.ModeSetuid))
	must(t, os.Mkdir(a.stash, 0o700))
	must(t, os.Link(filepath.Join(a.rootonly, "suid"), filepath.Join(a.stash, "suidlink")))
	must(t, os.WriteFile(filepath.Join(a.stash, "suidalone"), []byte(a.alone+"\n"), 0o755))
	must(t, os.Chmod(filepath.Join(a.stash, "suidalone"), 0o755|os.ModeSetuid|os.ModeSetgid))
	must(t, os.Lchown(a.stash, attackUID, attackUID))

	// /etc/svc, the user's: d holds decoys named as the root-only files.
	svc := filepath.Join(w.b.EtcDir(), "svc")
	must(t, os.MkdirAll(filepath.Join(svc, "d"), 0o755))
	for name, content := range map[string]string{"d/secret": "decoy\n", "d/suid": "decoy\n", "x": "x\n", "y": "y\n",
		"own.conf": "own\n", "r1.conf": "one\n", "r2.conf": "two\n"} {
		must(t, os.WriteFile(filepath.Join(svc, name), []byte(content), 0o644))
	}
	// Absolute: it resolves to the root-only directory in the booted
	// namespace (/var there is the stateroot's var).
	must(t, os.Symlink("/var/lib/rootonly", filepath.Join(svc, "dl")))
	must(t, filepath.WalkDir(svc, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, attackUID, attackUID)
	}))

	tr2, _ := tr.Churn(0.2, seed+1)
	e.commit("testos/main", tr2)
	w.staged = w.b.Stage("testos/main")
	w.ostreeOnly = w.b.Copy(t)
	if stage {
		out := w.b.MustRun("ostree-prefinalize", "stage", "--json")
		var sr lifecycle.StageResult
		if err := json.Unmarshal([]byte(out), &sr); err != nil || sr.Etc.State != "precomputed" || !sr.Etc.Takeover {
			t.Fatalf("stage: %v\n%s", err, out)
		}
	}
	a.want = w.expected("")
	return a
}

// attackerProc is one run of the attacker.
type attackerProc struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
}

func (a *attackEnv) startAttacker(d time.Duration) *attackerProc {
	t := a.t
	t.Helper()
	open := func(p string) *os.File {
		f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	p := &attackerProc{done: make(chan struct{})}
	p.cmd = exec.Command(a.attacker, "-duration", d.String())
	p.cmd.ExtraFiles = []*os.File{open(filepath.Join(a.b.EtcDir(), "svc")), open(a.stash)}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attackUID, Gid: attackUID, Groups: []uint32{}},
		Pdeathsig: syscall.SIGKILL}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.Dir = "/"
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	return p
}

func (p *attackerProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// wait checks that the attacker really attacked: its exit status and
// enough swaps, plants and renames.
func (p *attackerProc) wait(t *testing.T) {
	t.Helper()
	<-p.done
	if !p.cmd.ProcessState.Success() {
		t.Fatalf("attacker: %v\n%s", p.cmd.ProcessState, p.stderr.String())
	}
	var c struct {
		Swaps, Plants, Links, Renames int
		Errors                        map[string]int
		UID                           int
	}
	if err := json.Unmarshal(p.stdout.Bytes(), &c); err != nil {
		t.Fatalf("attacker output: %v\n%s", err, p.stdout.String())
	}
	t.Logf("attacker (uid %d): %d swaps, %d plants, %d links, %d renames, errors %v", c.UID, c.Swaps, c.Plants, c.Links, c.Renames, c.Errors)
	if c.UID != attackUID || c.Swaps < 1000 || c.Plants < 100 || c.Links < 50 || c.Renames < 50 || len(c.Errors) > 0 {
		t.Fatalf("the attacker did not attack as planned: %+v", c)
	}
}

// sampler walks the staged etc (and the attacker-readable trees) while the
// attacker runs and records the first violation.
type sampler struct {
	mu      sync.Mutex
	bad     string
	samples int
	stop    chan struct{}
	done    chan struct{}
}

func (a *attackEnv) startSampler() *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			default:
			}
			bad := a.violation(nil)
			s.mu.Lock()
			s.samples++
			if s.bad == "" {
				s.bad = bad
			}
			s.mu.Unlock()
			time.Sleep(20 * time.Millisecond) // a sampling rate, not synchronisation
		}
	}()
	return s
}

func (s *sampler) finish(t *testing.T) {
	t.Helper()
	close(s.stop)
	<-s.done
	t.Logf("%d samples of the staged etc during the attack", s.samples)
	if s.bad != "" {
		t.Fatal("during the attack: " + s.bad)
	}
	if s.samples < 2 {
		t.Fatalf("only %d samples during the attack", s.samples)
	}
}

// violation looks for the secret in any file of the staged etc, the
// booted etc and the stash, for a setuid, setgid or capability file of
// the staged etc that ostree's merge of the final /etc does not have (want
// nil: none allowed but the attacker's own planted contents are always
// reported), and returns the first it finds. Files vanishing during the
// walk are skipped.
func (a *attackEnv) violation(want harness.Manifest) string {
	staged := a.staged.EtcDir()
	for _, root := range []string{staged, a.b.EtcDir(), a.stash} {
		var bad string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || bad != "" || !d.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			if bytes.Contains(b, []byte(a.secret)) {
				bad = fmt.Sprintf("%s holds the secret from outside /etc", p)
				return nil
			}
			if root != staged {
				return nil
			}
			var st unix.Stat_t
			if unix.Lstat(p, &st) != nil {
				return nil
			}
			_, capErr := unix.Lgetxattr(p, "security.capability", nil)
			priv := st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 || capErr == nil
			if !priv {
				return nil
			}
			rel, _ := filepath.Rel(staged, p)
			if bytes.Contains(b, []byte(a.suid)) || bytes.Contains(b, []byte(a.alone)) {
				bad = fmt.Sprintf("staged etc/%s: a planted privileged file (mode %o uid %d)", rel, st.Mode, st.Uid)
				return nil
			}
			if want != nil {
				if _, ok := want[rel]; !ok {
					bad = fmt.Sprintf("staged etc/%s: privileged (mode %o uid %d) where ostree's merge has nothing", rel, st.Mode, st.Uid)
				}
			}
			return nil
		})
		if bad != "" {
			return bad
		}
	}
	return ""
}

// rootonlySum is the root-only directory's names, modes, owners and
// contents.
func (a *attackEnv) rootonlySum(t *testing.T) [32]byte {
	t.Helper()
	var lines []string
	must(t, filepath.WalkDir(a.rootonly, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		var c []byte
		if d.Type().IsRegular() {
			if c, err = os.ReadFile(p); err != nil {
				return err
			}
		}
		lines = append(lines, fmt.Sprintf("%s %o %d %d %x", p, st.Mode, st.Uid, st.Gid, sha256.Sum256(c)))
		return nil
	}))
	sort.Strings(lines)
	return sha256.Sum256([]byte(strings.Join(lines, "\n")))
}

// watchRootonly reports every open, read, write or change of the root-only
// directory and its files (inotify, on the inode: whatever path led
// there). Only the symlink leads there during the attack, and the
// attacker cannot open anything in it (0700 root): an event means that
// our process followed the symlink, even if what it read or wrote was
// undone before a sample of the staged etc could see it.
func (a *attackEnv) watchRootonly() func() []string {
	t := a.t
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	must(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	_, err = unix.InotifyAddWatch(fd, a.rootonly, unix.IN_OPEN|unix.IN_ACCESS|unix.IN_MODIFY|unix.IN_ATTRIB|
		unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE)
	must(t, err)
	return func() []string {
		var evs []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if err == unix.EAGAIN || n <= 0 {
				return evs
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				evs = append(evs, fmt.Sprintf("%q mask %#x", name, ev.Mask))
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// finish checks the state after the attack, seals, lets the real ostree
// finalize and compares with ostree's merge of the same /etc on the fork.
// events is the root-only directory's watch (watchRootonly).
func (a *attackEnv) finish(before [32]byte, events func() []string) {
	t := a.t
	t.Helper()
	if bad := a.violation(a.want); bad != "" {
		t.Fatal("after the attack: " + bad)
	}
	out, stderr, err := a.b.Run(context.Background(), "ostree-prefinalize", "finalize", "--pre")
	if err != nil {
		t.Fatalf("finalize --pre: %v\n%s\n%s", err, out, stderr)
	}
	st := a.status()
	t.Logf("after the seal: %s (%s), takeover %v", st.Etc.State, st.Etc.Reason, st.Etc.Takeover)
	if st.Etc.State != "sealed" && st.Etc.State != "fallback" {
		t.Fatalf("after the seal: state %q (%s): neither sealed nor fallen back", st.Etc.State, st.Etc.Reason)
	}
	if bad := a.violation(a.want); bad != "" {
		t.Fatal("after the seal: " + bad)
	}
	if evs := events(); len(evs) > 0 {
		t.Fatalf("the root-only directory outside /etc was opened, read or written (%d events): %v", len(evs), evs[:min(len(evs), 10)])
	}
	res, err := a.b.FinalizeStaged(context.Background())
	if err != nil {
		t.Fatalf("finalize-staged: %v\n%s", err, res.Stderr)
	}
	if res.Merged == (st.Etc.State == "sealed" && st.Etc.Takeover) {
		t.Fatalf("ostree merged: %v, but our state is %s (takeover %v)", res.Merged, st.Etc.State, st.Etc.Takeover)
	}
	next := a.s.NextBoot(t, a.opts)
	if ok, why := converged(next.EtcDir(), a.want); !ok {
		t.Fatalf("the new /etc differs from ostree's own merge: %s", why)
	}
	if a.rootonlySum(t) != before {
		t.Fatal("the root-only directory outside /etc changed")
	}
}

// (a) The watcher runs while the attacker races it.
func TestAttackWatcher(t *testing.T) {
	a := newAttackEnv(t, true)
	before := a.rootonlySum(t)
	events := a.watchRootonly()
	p := a.startWatcher()
	mark := len(stderrOf(p))
	s := a.startSampler()
	at := a.startAttacker(attackDuration())
	at.wait(t)
	s.finish(t)
	batches := strings.Count(stderrOf(p)[mark:], "msg=applied") + strings.Count(stderrOf(p)[mark:], "applying changed paths")
	t.Logf("%d watcher batches during the attack", batches)
	if batches == 0 {
		t.Fatalf("the watcher ran no batch during the attack:\n%s", stderrOf(p)[mark:])
	}
	// The watcher catches up with /etc back in its initial state, then stops.
	must(t, p.Signal(syscall.SIGTERM))
	if _, stderr, err := p.Wait(); err != nil {
		t.Fatalf("watcher after SIGTERM: %v\n%s", err, stderr)
	}
	a.finish(before, events)
}

func stderrOf(p *harness.Proc) string {
	_, e := p.Output()
	return e
}

// (b) `stage` runs, again and again, while the attacker races it: the
// first run is the fresh merge, the later ones reconcile the whole etc.
func TestAttackStage(t *testing.T) {
	a := newAttackEnv(t, false)
	before := a.rootonlySum(t)
	events := a.watchRootonly()
	s := a.startSampler()
	at := a.startAttacker(attackDuration())
	a.runWhile(at, "stage")
	at.wait(t)
	s.finish(t)
	a.finish(before, events)
}

// (c) `finalize --pre` runs, again and again, while the attacker races it.
func TestAttackPre(t *testing.T) {
	a := newAttackEnv(t, true)
	before := a.rootonlySum(t)
	events := a.watchRootonly()
	s := a.startSampler()
	at := a.startAttacker(attackDuration())
	a.runWhile(at, "finalize", "--pre")
	at.wait(t)
	s.finish(t)
	a.finish(before, events)
}

// runWhile runs the command in the booted namespace over and over while
// the attacker runs, and requires at least one run to have started and
// ended within the attack.
func (a *attackEnv) runWhile(at *attackerProc, args ...string) {
	t := a.t
	t.Helper()
	within, states := 0, map[string]int{}
	for at.running() {
		_, stderr, err := a.b.Run(context.Background(), append([]string{"ostree-prefinalize"}, args...)...)
		if err != nil && !strings.Contains(stderr, "fell back") {
			t.Logf("%s during the attack: %v: %s", args[0], err, strings.TrimSpace(stderr))
		}
		if at.running() {
			within++
		}
		states[string(a.status().Etc.State)]++
	}
	t.Logf("%d runs of %v within the attack; states after them: %v", within, args, states)
	if within == 0 {
		t.Fatalf("no run of %v within the attack", args)
	}
}
