package lifecycle

import (
	"os"
	"testing"
)

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/sysroot`:         "/sysroot",
		`/a\040b`:          "/a b",
		`/tab\011nl\012`:   "/tab\tnl\n",
		`/back\134slash`:   `/back\slash`,
		`/short\04`:        `/short\04`,
		`/not\9octal`:      `/not\9octal`,
		`/trailing\`:       `/trailing\`,
		`/x\040\040y\0401`: "/x  y 1",
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

// The deepest mount point holding a path: "/" holds everything, and /proc
// is a mount of its own on any Linux this runs on.
func TestMountPointOf(t *testing.T) {
	if _, err := os.Stat("/proc/thread-self/mountinfo"); err != nil {
		t.Skip("no /proc/thread-self/mountinfo")
	}
	for path, want := range map[string]string{"/proc/self": "/proc", "/proc": "/proc"} {
		if got, err := mountPointOf(path); err != nil || got != want {
			t.Errorf("mountPointOf(%q) = %q, %v; want %q", path, got, err, want)
		}
	}
	if got, err := mountPointOf("/"); err != nil || got != "/" {
		t.Errorf("mountPointOf(/) = %q, %v", got, err)
	}
}

// A writable sysroot runs fn as it is, on the caller's goroutine terms.
func TestWithWritableSysrootWritable(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(dir+"/ostree", 0o755); err != nil {
		t.Fatal(err)
	}
	ran := false
	if err := withWritableSysroot(dir, func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("ran %v, err %v", ran, err)
	}
}
