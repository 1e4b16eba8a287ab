package ostree

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// makeSyntheticObjects creates n empty loose objects (dirtree names) spread
// over the 256 objects/XX directories, without the ostree command.
func makeSyntheticObjects(tb testing.TB, n int) *Repo {
	tb.Helper()
	dir := tb.TempDir()
	for i := 0; i < 256; i++ {
		if err := os.MkdirAll(filepath.Join(dir, "objects", fmt.Sprintf("%02x", i)), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		h := fmt.Sprintf("%064x", uint64(i)*0x9e3779b97f4a7c15)
		h = fmt.Sprintf("%02x", i%256) + h[2:]
		f, err := os.Create(filepath.Join(dir, "objects", h[:2], h[2:]+".dirtree"))
		if err != nil {
			tb.Fatal(err)
		}
		f.Close()
	}
	return &Repo{Path: dir, Mode: ModeArchive}
}

func TestScanObjectsSynthetic(t *testing.T) {
	const n = 5000
	r := makeSyntheticObjects(t, n)
	var prev ObjectName
	count := 0
	stats, err := r.ScanObjects(context.Background(), func(o ObjectName, size int64) error {
		if count > 0 && string(o.Checksum[:]) <= string(prev.Checksum[:]) {
			t.Fatalf("out of order: %s after %s", o, prev)
		}
		prev = o
		count++
		return nil
	})
	if err != nil || count != n || stats.Objects != n || stats.Skipped != 0 {
		t.Fatalf("count %d stats %+v err %v", count, stats, err)
	}
	// A cancelled context stops the scan.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.ScanObjects(ctx, func(ObjectName, int64) error { return nil }); err == nil {
		t.Fatal("cancelled scan succeeded")
	}
}

// BenchmarkScanObjects lists OSTREE_PREFINALIZE_BENCH_OBJECTS (default
// 200000) synthetic objects; 1M objects is 5x the reported time.
func BenchmarkScanObjects(b *testing.B) {
	n := 200000
	if v, err := strconv.Atoi(os.Getenv("OSTREE_PREFINALIZE_BENCH_OBJECTS")); err == nil && v > 0 {
		n = v
	}
	r := makeSyntheticObjects(b, n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := r.ListObjects(func(ObjectName, int64) error { return nil }); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(n), "ns/object")
	}
}
