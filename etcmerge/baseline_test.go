package etcmerge

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"golang.org/x/sys/unix"
)

func TestBaselineChanged(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	etc := t.TempDir()
	baseTree(t, etc)
	mkfile(t, etc, "name\nnl", "x", 0644, 0, 0)
	mkfile(t, etc, "bad\xffutf8", "x", 0644, 0, 0)
	b, err := Scan(ctx, etc)
	if err != nil {
		t.Fatal(err)
	}
	if ch, err := b.Changed(ctx, etc); err != nil || len(ch) != 0 {
		t.Fatalf("unchanged etc: %q %v", ch, err)
	}
	mkfile(t, etc, "hosts", "other\n", 0644, 0, 0)                     // content (size, times)
	if err := os.Chmod(filepath.Join(etc, "motd"), 0600); err != nil { // ctime, mode
		t.Fatal(err)
	}
	setxattr(t, etc, "ssh/ssh_config", "user.a", "1") // ctime only
	if err := os.RemoveAll(filepath.Join(etc, "gone")); err != nil {
		t.Fatal(err)
	}
	mkfile(t, etc, "conf.d/new", "n", 0644, 0, 0)
	ch, err := b.Changed(ctx, etc)
	if err != nil {
		t.Fatal(err)
	}
	// The etc root is not recorded; conf.d is (its mtime changed).
	want := []string{"conf.d", "conf.d/new", "gone", "gone/sub", "gone/sub/y", "gone/x", "hosts", "motd", "ssh/ssh_config"}
	if !reflect.DeepEqual(ch, want) {
		t.Fatalf("changed:\n got %q\nwant %q", ch, want)
	}

	data, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var b2 Baseline
	if err := b2.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(b, &b2) {
		t.Fatal("round trip differs")
	}
	t.Logf("%d entries in %d bytes", len(b.Entries), len(data))
	for i := range data {
		if err := new(Baseline).UnmarshalBinary(data[:i]); !errors.Is(err, ostree.ErrCorrupt) {
			t.Fatalf("truncated at %d: %v", i, err)
		}
	}
}

func TestBaselineRejects(t *testing.T) {
	bad := []*Baseline{
		{Entries: []Entry{{Path: "b"}, {Path: "a"}}},
		{Entries: []Entry{{Path: "a"}, {Path: "a"}}},
		{Entries: []Entry{{Path: "../x"}}},
		{Entries: []Entry{{Path: ""}}},
		{Entries: []Entry{{Path: "a", Size: -1}}},
	}
	for _, b := range bad {
		if _, err := b.MarshalBinary(); err == nil {
			t.Errorf("%+v: marshalled", b)
		}
	}
}

// FuzzBaseline: UnmarshalBinary never panics, and whatever it accepts
// re-encodes to the same bytes.
func FuzzBaseline(f *testing.F) {
	for _, name := range []string{"baseline-small.bin", "baseline-names.bin"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(baselineMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var b Baseline
		if err := b.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ostree.ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			return
		}
		out, err := b.MarshalBinary()
		if err != nil {
			t.Fatalf("accepted baseline does not re-encode: %v", err)
		}
		if string(out) != string(data) {
			// Varints have one minimal encoding each; Uvarint accepts
			// non-minimal ones, which re-encode shorter. Decoding again
			// must give the same baseline.
			var b2 Baseline
			if err := b2.UnmarshalBinary(out); err != nil || !reflect.DeepEqual(b, b2) {
				t.Fatalf("re-encoding changed the baseline: %v", err)
			}
		}
	})
}

// TestWriteFuzzSeeds regenerates the seed files when FINALIZE_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("FINALIZE_WRITE_SEEDS") != "1" {
		t.Skip("set FINALIZE_WRITE_SEEDS=1 to regenerate testdata seeds")
	}
	small := &Baseline{Entries: []Entry{
		{Path: "hosts", Mode: unix.S_IFREG | 0644, Size: 20, Mtime: 1600000000123456789, Ctime: 1600000000123456789, Ino: 12},
		{Path: "ssh", Mode: unix.S_IFDIR | 0755, Mtime: -1, Ctime: 5, Ino: 13},
		{Path: "ssh/sshd_config", Mode: unix.S_IFREG | 0600, UID: 0, GID: 42, Size: 3000, Mtime: 7, Ctime: 8, Ino: 1 << 40},
	}}
	names := &Baseline{Entries: []Entry{
		{Path: "a\nb", Mode: unix.S_IFLNK | 0777, UID: 1000, GID: 1000, Size: 5},
		{Path: "bad\xff\xfe", Mode: unix.S_IFIFO | 0644},
	}}
	for name, b := range map[string]*Baseline{"baseline-small.bin": small, "baseline-names.bin": names} {
		data, err := b.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("testdata", name), data, 0644); err != nil {
			t.Fatal(err)
		}
	}
}
