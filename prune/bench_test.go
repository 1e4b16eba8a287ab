package prune

import (
	"context"
	"encoding/binary"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// synth is a procedural repository of about 1M objects: its children are
// computed from the object names, so the benchmark measures the walk and
// the plan, not a big in-memory graph.
//
// Three commits, each a root tree of 40 directories of 35 leaf directories
// of 500 files (700k files per commit); from one commit to the next, 20% of
// the leaves (j%5 == k) change entirely. Listed: the three commits (the last
// with detached metadata) and all their trees and files, one shared dirmeta
// and 20k garbage files: 1,002,088 objects. Roots: commits 1 and 2, so the
// plan is commit 0's own objects plus the garbage (160,322 objects).
type synth struct{}

const (
	synCommits  = 3
	synMids     = 40
	synLeafsPer = 35
	synLeaves   = synMids * synLeafsPer
	synFiles    = 500
	synGarbage  = 20000
)

const (
	kCommit = iota + 1
	kRoot
	kMid
	kLeaf
	kFile
	kDirMeta
	kGarbage
)

func synID(kind, v, j, f uint64) ostree.Checksum {
	id := kind<<56 | v<<48 | j<<24 | f
	var c ostree.Checksum
	binary.LittleEndian.PutUint64(c[0:8], mix64(id))
	binary.LittleEndian.PutUint64(c[8:16], mix64(id^0x5555))
	binary.LittleEndian.PutUint64(c[16:24], id)
	return c
}

func synDecode(c ostree.Checksum) (kind, v, j, f uint64) {
	id := binary.LittleEndian.Uint64(c[16:24])
	return id >> 56, id >> 48 & 0xff, id >> 24 & 0xffffff, id & 0xffffff
}

// version of leaf j in commit k: the last commit that changed it.
func synVer(j, k uint64) uint64 {
	for kk := k; kk >= 1; kk-- {
		if j%5 == kk {
			return kk
		}
	}
	return 0
}

func (synth) children(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
	kind, v, j, _ := synDecode(o.Checksum)
	meta := ostree.ObjectName{Checksum: synID(kDirMeta, 0, 0, 0), Type: ostree.ObjDirMeta}
	switch {
	case o.Type == ostree.ObjCommit && kind == kCommit:
		emit(ostree.ObjectName{Checksum: synID(kRoot, v, 0, 0), Type: ostree.ObjDirTree})
		emit(meta)
		if v == synCommits-1 {
			emit(ostree.ObjectName{Checksum: o.Checksum, Type: ostree.ObjCommitMeta})
		}
	case o.Type == ostree.ObjDirTree && kind == kRoot:
		for m := uint64(0); m < synMids; m++ {
			emit(ostree.ObjectName{Checksum: synID(kMid, v, m, 0), Type: ostree.ObjDirTree})
			emit(meta)
		}
	case o.Type == ostree.ObjDirTree && kind == kMid:
		for jj := j * synLeafsPer; jj < (j+1)*synLeafsPer; jj++ {
			emit(ostree.ObjectName{Checksum: synID(kLeaf, synVer(jj, v), jj, 0), Type: ostree.ObjDirTree})
			emit(meta)
		}
	case o.Type == ostree.ObjDirTree && kind == kLeaf:
		for f := uint64(0); f < synFiles; f++ {
			emit(ostree.ObjectName{Checksum: synID(kFile, v, j, f), Type: ostree.ObjFile})
		}
	}
	return nil
}

func (synth) ListObjects(fn func(o ostree.ObjectName, size int64) error) error {
	emit := func(c ostree.Checksum, t ostree.ObjectType, size int64) error {
		return fn(ostree.ObjectName{Checksum: c, Type: t}, size)
	}
	if err := emit(synID(kDirMeta, 0, 0, 0), ostree.ObjDirMeta, 120); err != nil {
		return err
	}
	for k := uint64(0); k < synCommits; k++ {
		if err := emit(synID(kCommit, k, 0, 0), ostree.ObjCommit, 400); err != nil {
			return err
		}
		if k == synCommits-1 {
			if err := emit(synID(kCommit, k, 0, 0), ostree.ObjCommitMeta, 600); err != nil {
				return err
			}
		}
		if err := emit(synID(kRoot, k, 0, 0), ostree.ObjDirTree, 3000); err != nil {
			return err
		}
		for m := uint64(0); m < synMids; m++ {
			if err := emit(synID(kMid, k, m, 0), ostree.ObjDirTree, 2500); err != nil {
				return err
			}
		}
		for j := uint64(0); j < synLeaves; j++ {
			if synVer(j, k) != k {
				continue
			}
			if err := emit(synID(kLeaf, k, j, 0), ostree.ObjDirTree, 30000); err != nil {
				return err
			}
			for f := uint64(0); f < synFiles; f++ {
				if err := emit(synID(kFile, k, j, f), ostree.ObjFile, int64(1000+f)); err != nil {
					return err
				}
			}
		}
	}
	for i := uint64(0); i < synGarbage; i++ {
		if err := emit(synID(kGarbage, 0, 0, i), ostree.ObjFile, 4096); err != nil {
			return err
		}
	}
	return nil
}

// peakHeap samples HeapInuse until stopped and returns the peak.
func peakHeap() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	sample := func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > peak.Load() {
			peak.Store(ms.HeapInuse)
		}
	}
	go func() {
		defer wg.Done()
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				sample()
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		sample()
		return peak.Load()
	}
}

// BenchmarkPlan1M: Reachable + ComputePlan on the synthetic 1M-object
// repository. Goal: ≤ 5 s, tens of MB.
func BenchmarkPlan1M(b *testing.B) {
	var s synth
	roots := []ostree.ObjectName{
		{Checksum: synID(kCommit, 1, 0, 0), Type: ostree.ObjCommit},
		{Checksum: synID(kCommit, 2, 0, 0), Type: ostree.ObjCommit},
	}
	b.ReportAllocs()
	var peakMB float64
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var base runtime.MemStats
		runtime.ReadMemStats(&base)
		stop := peakHeap()
		p, err := ComputePlan(context.Background(), s, roots, "file", s.children)
		peak := stop()
		if err != nil {
			b.Fatal(err)
		}
		if p.Stats.Listed != 1002088 || p.Stats.Objects != 160322 {
			b.Fatalf("synthetic repo: listed %d, planned %d", p.Stats.Listed, p.Stats.Objects)
		}
		peakMB = float64(peak-base.HeapInuse) / (1 << 20)
		runtime.KeepAlive(p)
	}
	b.ReportMetric(peakMB, "peak-heap-MB")
}

// BenchmarkSet1M reports the memory cost of the reachability set per object.
func BenchmarkSet1M(b *testing.B) {
	const n = 1 << 20
	var perObj float64
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		s := NewSet()
		for k := uint64(0); k < n; k++ {
			s.Add(ostree.ObjectName{Checksum: synID(kFile, 0, k>>12, k&0xfff), Type: ostree.ObjFile})
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		perObj = float64(m1.HeapAlloc-m0.HeapAlloc) / n
		if s.Len() != n {
			b.Fatal(s.Len())
		}
		runtime.KeepAlive(s)
	}
	b.ReportMetric(perObj, "bytes/object")
}
