package prune

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// encTestPlan is the plan of the fuzz seed testdata/plan/valid.bin
// (written by go generate: internal/genseeds).
func encTestPlan(t testing.TB) *Plan {
	sum := func(s string) ostree.Checksum { return ostree.Checksum(sha256.Sum256([]byte(s))) }
	roots := []ostree.ObjectName{{Checksum: sum("root-b"), Type: ostree.ObjCommit}, {Checksum: sum("root-a"), Type: ostree.ObjCommit}}
	entries := []Entry{
		{Checksum: sum("c"), Type: ostree.ObjCommit, Size: 300},
		{Checksum: sum("c"), Type: ostree.ObjCommitMeta, Size: 30},
		{Checksum: sum("t"), Type: ostree.ObjDirTree, Size: 100},
		{Checksum: sum("m"), Type: ostree.ObjDirMeta, Size: 40},
		{Checksum: sum("f"), Type: ostree.ObjFile, Size: 1 << 40},
	}
	p, err := NewPlan(roots, "file", entries)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPlanEncodingRoundTrip(t *testing.T) {
	p := encTestPlan(t)
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	q, err := UnmarshalPlan(b)
	if err != nil {
		t.Fatal(err)
	}
	var lp, lq bytes.Buffer
	p.WriteList(&lp)
	q.WriteList(&lq)
	if lp.String() != lq.String() || q.RootsHash != p.RootsHash || q.Stats.Bytes != p.Stats.Bytes {
		t.Fatalf("round trip differs:\n%s\n%s", lp.String(), lq.String())
	}
	// Every truncation and every extension is refused.
	for i := 0; i < len(b); i++ {
		if _, err := UnmarshalPlan(b[:i]); !errors.Is(err, ErrBadPlan) {
			t.Fatalf("truncated to %d: %v", i, err)
		}
	}
	if _, err := UnmarshalPlan(append(b, 0)); !errors.Is(err, ErrBadPlan) {
		t.Fatalf("extended: %v", err)
	}
	// An unknown type byte in an entry is refused.
	bad := bytes.Clone(b)
	bad[len(bad)-9] = byte(ostree.ObjTombstoneCommit)
	if _, err := UnmarshalPlan(bad); !errors.Is(err, ErrBadPlan) {
		t.Fatalf("tombstone entry: %v", err)
	}
}

func FuzzUnmarshalPlan(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/plan/*.bin")
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(planMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := UnmarshalPlan(b)
		if err != nil {
			if !errors.Is(err, ErrBadPlan) {
				t.Fatalf("error without ErrBadPlan: %v", err)
			}
			return
		}
		// A decoded plan re-encodes to the same bytes (one encoding per plan).
		again, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("decoded plan re-encodes differently")
		}
	})
}
