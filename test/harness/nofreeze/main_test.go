package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// shm is a tmpfs: FIFREEZE there fails with EOPNOTSUPP (tmpfs cannot be
// frozen), so the test never freezes anything, with or without the filter.
const shm = "/dev/shm"

// tryFreeze returns FIFREEZE's errno on shm as text.
func tryFreeze() string {
	fd, err := unix.Open(shm, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return "open: " + err.Error()
	}
	defer unix.Close(fd)
	if _, err := unix.IoctlGetInt(fd, fifreeze); err != nil {
		var e unix.Errno
		if errors.As(err, &e) {
			return unix.ErrnoName(e)
		}
		return err.Error()
	}
	unix.IoctlGetInt(fd, 0xC0045878) // FITHAW: never reached on tmpfs
	return "froze"
}

func TestMain(m *testing.M) {
	if os.Getenv("NOFREEZE_HELPER") == "1" {
		if err := install(); err != nil {
			os.Stdout.WriteString(err.Error())
			os.Exit(1)
		}
		os.Stdout.WriteString(tryFreeze())
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestFilter: FIFREEZE fails with EPERM under the filter and with
// tmpfs's own EOPNOTSUPP without it.
func TestFilter(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("OSTREE_PREFINALIZE_E2E") == "1" {
			t.Fatal("OSTREE_PREFINALIZE_E2E=1 but not running as root")
		}
		t.Skip("needs root (the filter is installed without no_new_privs, and FIFREEZE needs CAP_SYS_ADMIN)")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(shm, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Fatalf("%s is not a tmpfs (%v): refusing to try FIFREEZE on it", shm, err)
	}
	if got := tryFreeze(); got != unix.ErrnoName(unix.EOPNOTSUPP) {
		t.Fatalf("without the filter: %s, want %s", got, unix.ErrnoName(unix.EOPNOTSUPP))
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "NOFREEZE_HELPER=1")
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) != "EPERM" {
		t.Fatalf("with the filter: %q, %v; want EPERM", out, err)
	}
}
