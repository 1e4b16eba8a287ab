package ostree

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// lockHelperEnv makes the test binary a lock-holding child process: it
// takes the lock named by the variable ("shared:" or "exclusive:" + repo),
// prints "locked" and holds it until stdin closes.
const lockHelperEnv = "OSTREE_PREFINALIZE_LOCK_HELPER"

func TestMain(m *testing.M) {
	if v := os.Getenv(lockHelperEnv); v != "" {
		kind, repo, _ := strings.Cut(v, ":")
		r := &Repo{Path: repo}
		l, err := r.Lock(context.Background(), kind == "exclusive")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("locked")
		io.Copy(io.Discard, os.Stdin)
		l.Unlock()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// startLockHolder starts a child process holding the lock; closing the
// returned writer releases it.
func startLockHolder(t *testing.T, repo string, exclusive bool) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	kind := "shared"
	if exclusive {
		kind = "exclusive"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+kind+":"+repo)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line := make([]byte, 7)
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "locked\n" {
		t.Fatalf("lock helper: %q %v", line, err)
	}
	return cmd, stdin
}

// heldType probes repo/.lock with F_OFD_GETLK for a lock conflicting with
// an exclusive one, without taking anything: F_RDLCK, F_WRLCK or F_UNLCK.
func heldType(t *testing.T, repo string) int16 {
	t.Helper()
	fd, err := unix.Open(filepath.Join(repo, ".lock"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return unix.F_UNLCK
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		t.Fatal(err)
	}
	return lk.Type
}

func newLockRepo(t *testing.T) *Repo {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "objects"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Repo{Path: dir, Locking: true}
}

func TestLockSemantics(t *testing.T) {
	r := newLockRepo(t)
	ctx := context.Background()
	s1, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(r.Path, ".lock"))
	if err != nil || !st.Mode().IsRegular() {
		t.Fatalf(".lock: %v %v", st, err)
	}
	s2, err := r.Lock(ctx, false)
	if err != nil {
		t.Fatalf("second shared lock: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	_, err = r.Lock(short, true)
	cancel()
	if !errors.Is(err, ErrLockTimeout) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), r.Path+"/.lock") || !strings.Contains(err.Error(), "held shared") {
		t.Fatalf("exclusive while shared held: %v", err)
	}
	s1.Unlock()
	s2.Unlock()
	if err := s2.Unlock(); err != nil {
		t.Fatalf("second Unlock: %v", err)
	}
	x, err := r.Lock(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = r.Lock(short, false)
	cancel()
	if !errors.Is(err, ErrLockTimeout) || !strings.Contains(err.Error(), "held exclusive") {
		t.Fatalf("shared while exclusive held: %v", err)
	}
	// A waiter gets the lock promptly once it is released.
	got := make(chan error, 1)
	go func() {
		l, err := r.Lock(ctx, false)
		if err == nil {
			l.Unlock()
		}
		got <- err
	}()
	x.Unlock()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not granted within 10s of the release")
	}

	// A symlink at .lock is refused, not followed.
	os.Remove(filepath.Join(r.Path, ".lock"))
	os.Symlink("elsewhere", filepath.Join(r.Path, ".lock"))
	if _, err := r.Lock(ctx, true); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("symlinked .lock: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(r.Path, "elsewhere")); !os.IsNotExist(err) {
		t.Fatalf("followed the symlink: %v", err)
	}
}

// TestLockNamesHolder: the timeout error names the process holding the
// lock (found through /proc/PID/fdinfo, since OFD locks report pid -1).
func TestLockNamesHolder(t *testing.T) {
	r := newLockRepo(t)
	cmd, release := startLockHolder(t, r.Path, true)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := r.Lock(ctx, false)
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("want ErrLockTimeout, got %v", err)
	}
	if want := fmt.Sprintf("pid %d", cmd.Process.Pid); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not name %s", err, want)
	}
	release.Close()
	l, err := r.Lock(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()
}

// TestLockBlocksOstreeCommit: while we hold the exclusive lock, a real
// `ostree commit` (which takes the shared lock in prepare_transaction) waits
// for it, and completes once we release it.
func TestLockBlocksOstreeCommit(t *testing.T) {
	harness.RequireOstree(t)
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	runOstree(t, "init", "--repo="+repo, "--mode=bare-user-only")
	tree := filepath.Join(base, "tree")
	os.MkdirAll(tree, 0o755)
	os.WriteFile(filepath.Join(tree, "f"), []byte("x"), 0o644)
	r, err := OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	l, err := r.Lock(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()

	// --verbose makes the CLI print libostree's debug messages.
	cmd := exec.Command("ostree", "--verbose", "--repo="+repo, "commit", "-b", "x", "--tree=dir="+tree, "-s", "blocked")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done, exitErr := watchProc(t, cmd)

	// libostree logs this once its non-blocking attempt found our lock and
	// it starts retrying (push: "Waiting N more seconds to acquire lock").
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "to acquire lock") {
		select {
		case <-done:
			t.Fatalf("ostree commit finished while we held the exclusive lock: %v\n%s", exitErr(), stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ostree commit never reported waiting for the lock:\n%s", stderr.String())
		}
	}
	// Still waiting, and nothing written.
	select {
	case <-done:
		t.Fatalf("ostree commit finished while we held the lock: %v", exitErr())
	default:
	}
	if _, err := os.Stat(filepath.Join(repo, "refs/heads/x")); !os.IsNotExist(err) {
		t.Fatalf("ref written while we held the lock: %v", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		if err := exitErr(); err != nil {
			t.Fatalf("ostree commit after release: %v\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("ostree commit did not complete within 20s of the release:\n%s", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(repo, "refs/heads/x")); err != nil {
		t.Fatal(err)
	}
}

// TestOstreeLockBlocksUs: `ostree commit --tree=tar=-` holds libostree's
// shared lock (taken in prepare_transaction) while it waits for the tar on
// stdin. Our exclusive Lock must not succeed until that process is done,
// must name it when it gives up, and must succeed afterwards; a shared
// Lock is compatible.
func TestOstreeLockBlocksUs(t *testing.T) {
	harness.RequireOstree(t)
	base := t.TempDir()
	repo := filepath.Join(base, "repo")
	runOstree(t, "init", "--repo="+repo, "--mode=archive")
	r, err := OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ostree", "--repo="+repo, "commit", "-b", "y", "--tree=tar=-", "--tar-autocreate-parents", "-s", "from tar")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close() })
	done, exitErr := watchProc(t, cmd)

	deadline := time.Now().Add(20 * time.Second)
	for heldType(t, repo) != unix.F_RDLCK {
		select {
		case <-done:
			t.Fatalf("ostree commit exited before taking the lock: %v\n%s", exitErr(), stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("ostree never took the shared lock:\n%s", stderr.String())
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = r.Lock(ctx, true)
	cancel()
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("exclusive Lock while ostree holds the shared lock: %v", err)
	}
	if want := fmt.Sprintf("pid %d (ostree)", cmd.Process.Pid); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
	sh, err := r.Lock(context.Background(), false)
	if err != nil {
		t.Fatalf("shared Lock alongside ostree's: %v", err)
	}
	sh.Unlock()

	got := make(chan error, 1)
	var held *RepoLock
	go func() {
		l, err := r.Lock(context.Background(), true)
		held = l
		got <- err
	}()
	// Give the waiter many polling rounds while ostree still holds the lock.
	for i := 0; i < 5; i++ {
		select {
		case err := <-got:
			t.Fatalf("exclusive Lock returned (%v) while ostree holds the shared lock", err)
		case <-time.After(100 * time.Millisecond):
		}
		if heldType(t, repo) != unix.F_RDLCK {
			t.Fatalf("ostree released the lock early")
		}
	}
	select {
	case <-done:
		t.Fatalf("ostree exited early: %v\n%s", exitErr(), stderr.String())
	default:
	}

	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tw.WriteHeader(&tar.Header{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "usr/hello", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	if _, err := stdin.Write(tarBuf.Bytes()); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	select {
	case <-done:
		if err := exitErr(); err != nil {
			t.Fatalf("ostree commit: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("ostree commit did not finish:\n%s", stderr.String())
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
		held.Unlock()
	case <-time.After(10 * time.Second):
		t.Fatal("exclusive Lock not granted within 10s after ostree exited")
	}
	if out := runOstree(t, "--repo="+repo, "cat", "y", "/usr/hello"); out != "hello" {
		t.Fatalf("committed content %q", out)
	}
}

// watchProc waits for cmd in the background: the returned channel is
// closed when it exits, and the function returns its exit error then. A
// cleanup kills it if the test ends first.
func watchProc(t *testing.T, cmd *exec.Cmd) (<-chan struct{}, func() error) {
	exited := make(chan struct{})
	var werr error
	go func() { werr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	return exited, func() error { <-exited; return werr }
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
