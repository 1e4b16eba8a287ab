package etcmerge

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// Rescan must equal Scan (the new baseline) plus Changed (against the old)
// over random edits: it is the seal's one-walk replacement for the two.
func TestRescanEqualsScanAndChanged(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewSource(seed))
	ctx := context.Background()
	etc := t.TempDir()
	for i := 0; i < 60; i++ {
		p := filepath.Join(etc, fmt.Sprintf("d%d/f%d", r.Intn(6), i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("x"), 0o644)
	}
	b, err := Scan(ctx, etc)
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 20; round++ {
		for i := 0; i < 5; i++ {
			p := filepath.Join(etc, fmt.Sprintf("d%d/f%d", r.Intn(8), r.Intn(80)))
			switch r.Intn(3) {
			case 0:
				os.MkdirAll(filepath.Dir(p), 0o755)
				os.WriteFile(p, []byte(fmt.Sprint(round, i)), 0o644)
			case 1:
				os.Remove(p)
			case 2:
				os.RemoveAll(filepath.Dir(p))
			}
		}
		want, err := b.Changed(ctx, etc)
		if err != nil {
			t.Fatal(err)
		}
		wantB, err := Scan(ctx, etc)
		if err != nil {
			t.Fatal(err)
		}
		nb, got, err := b.Rescan(ctx, etc)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: Rescan changed %q, Changed %q", round, got, want)
		}
		if !slices.Equal(nb.Entries, wantB.Entries) {
			t.Fatalf("round %d: Rescan baseline differs from Scan", round)
		}
		b = nb
	}
}
