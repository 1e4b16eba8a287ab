package lockwait

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func open(t *testing.T, p string) int {
	t.Helper()
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

// TestPollFlock: a held flock makes Poll wait until ctx ends (ctx.Err()
// returned); released, the next Poll takes it; a shared lock does not
// exclude another shared one.
func TestPollFlock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	a, b := open(t, p), open(t, p)
	if ok, err := TryFlock(a, unix.LOCK_EX); !ok || err != nil {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := Poll(ctx, 10*time.Millisecond, func() (bool, error) { return TryFlock(b, unix.LOCK_EX) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held lock: %v, want the deadline", err)
	}
	unix.Flock(a, unix.LOCK_UN)
	if err := Poll(context.Background(), 10*time.Millisecond, func() (bool, error) { return TryFlock(b, unix.LOCK_SH) }); err != nil {
		t.Fatal(err)
	}
	if ok, err := TryFlock(a, unix.LOCK_SH); !ok || err != nil {
		t.Fatalf("second shared lock: %v %v", ok, err)
	}
	if ok, err := TryFlock(a, unix.LOCK_EX); ok || err != nil {
		// a holds shared and b holds shared: a's upgrade must not be granted.
		t.Fatalf("upgrade against another shared holder: %v %v", ok, err)
	}
}

// TestPollError: try's error ends the wait at once and is returned as is;
// a lock released by another goroutine is taken without waiting for ctx.
func TestPollError(t *testing.T) {
	bad := errors.New("bad")
	n := 0
	if err := Poll(context.Background(), time.Millisecond, func() (bool, error) { n++; return false, bad }); err != bad || n != 1 {
		t.Fatalf("error %v after %d tries", err, n)
	}
	n = 0
	if err := Poll(context.Background(), time.Millisecond, func() (bool, error) { n++; return n == 5, nil }); err != nil || n != 5 {
		t.Fatalf("error %v after %d tries", err, n)
	}
	if _, err := TryFlock(-1, unix.LOCK_EX); !errors.Is(err, unix.EBADF) {
		t.Fatalf("bad fd: %v", err)
	}
}
