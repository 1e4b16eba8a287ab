package prune

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// depth0Repo: c2 (parent c1, detached metadata) and c1 (parent c0, no
// detached metadata) share the subtree "shared"; c0 has its own.
func depth0Repo() (*graph, map[string]ostree.ObjectName) {
	g := newGraph()
	m := map[string]ostree.ObjectName{}
	meta := g.add("meta", ostree.ObjDirMeta)
	shared := g.tree("shared", []string{"s1", "s2"})
	old := g.tree("old", []string{"o1"})
	m["c0"] = g.commit("c0", ostree.ObjectName{}, g.tree("root0", []string{"r0"}, old, meta), meta, true)
	m["c1"] = g.commit("c1", m["c0"], g.tree("root1", []string{"r1"}, shared, meta), meta, false)
	m["c2"] = g.commit("c2", m["c1"], g.tree("root2", []string{"r2", "s1"}, shared, meta), meta, true)
	return g, m
}

func TestReachableDepthZero(t *testing.T) {
	g, c := depth0Repo()
	set, err := Reachable(context.Background(), []ostree.ObjectName{c["c2"]}, g.children)
	if err != nil {
		t.Fatal(err)
	}
	got := g.labels(setOf(set))
	want := []string{
		"c2.commit", "c2.commitmeta",
		"meta.dirmeta", "r2.file", "root2.dirtree",
		"s1.file", "s2.file", "shared.dirtree",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("reachable from c2 at depth 0:\n got %v\nwant %v (the parent c1 must not be followed)", got, want)
	}
	if set.Len() != len(want) {
		t.Errorf("Len %d, want %d", set.Len(), len(want))
	}

	// Two roots sharing a subtree; c1 has no detached metadata.
	set, err = Reachable(context.Background(), []ostree.ObjectName{c["c2"], c["c1"], c["c2"]}, g.children)
	if err != nil {
		t.Fatal(err)
	}
	got = g.labels(setOf(set))
	want = append(want, "c1.commit", "r1.file", "root1.dirtree")
	sort.Strings(want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("reachable from c1+c2:\n got %v\nwant %v", got, want)
	}

	// Detached metadata is optional: without it the commit is still fine.
	delete(g.present, obj("c2", ostree.ObjCommitMeta))
	set, err = Reachable(context.Background(), []ostree.ObjectName{c["c2"]}, g.children)
	if err != nil {
		t.Fatal(err)
	}
	if set.Has(obj("c2", ostree.ObjCommitMeta)) || !set.Has(c["c2"]) {
		t.Errorf("absent commitmeta: got %v", g.labels(setOf(set)))
	}

	// No roots: empty set, no error.
	set, err = Reachable(context.Background(), nil, g.children)
	if err != nil || set.Len() != 0 {
		t.Errorf("no roots: %v, %d objects", err, set.Len())
	}
}

func TestReachableErrorsAbort(t *testing.T) {
	g, c := depth0Repo()
	missing := obj("shared", ostree.ObjDirTree)
	delete(g.present, missing)
	for _, workers := range []int{1, 2, 8} {
		set, err := Reachable(context.Background(), []ostree.ObjectName{c["c2"]}, g.children, WithWorkers(workers))
		if set != nil {
			t.Errorf("workers=%d: partial result returned with error %v", workers, err)
		}
		if !errors.Is(err, ostree.ErrNotFound) || !strings.Contains(err.Error(), missing.String()) {
			t.Errorf("workers=%d: error %v: want ErrNotFound naming %s", workers, err, missing)
		}
	}

	// A corrupt object (the children function fails) in a large random
	// graph: the walk stops with that error wherever the workers are.
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := 0; i < 50; i++ {
		g, roots := randomRepo(r)
		if len(roots) == 0 {
			continue
		}
		ref := g.seqReach(roots)
		var victim ostree.ObjectName
		for o := range ref {
			if o.Type == ostree.ObjDirTree {
				victim = o
				break
			}
		}
		if victim.Type == 0 {
			continue
		}
		sentinel := fmt.Errorf("bad gvariant: %w", ostree.ErrCorrupt)
		g.fail[victim] = sentinel
		set, err := Reachable(context.Background(), roots, g.children, WithWorkers(1+r.IntN(8)))
		if set != nil || !errors.Is(err, ostree.ErrCorrupt) || !strings.Contains(err.Error(), victim.String()) {
			t.Fatalf("graph %d: got set=%v err=%v, want ErrCorrupt naming %s", i, set != nil, err, victim)
		}
	}

	// Invalid names emitted by a children function are errors too.
	bad := func(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
		emit(ostree.ObjectName{Checksum: o.Checksum})
		return nil
	}
	if _, err := Reachable(context.Background(), []ostree.ObjectName{c["c0"]}, bad); !errors.Is(err, ErrInvalidObject) {
		t.Errorf("type-0 child: %v", err)
	}
	if _, err := Reachable(context.Background(), []ostree.ObjectName{{}}, g.children); !errors.Is(err, ErrInvalidObject) {
		t.Errorf("type-0 root: %v", err)
	}
}

func TestReachableCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	// An endless chain: only cancellation ends it.
	endless := func(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
		calls++
		if calls == 1000 {
			cancel()
		}
		next := o
		next.Checksum[0]++
		if next.Checksum[0] == 0 {
			next.Checksum[1]++
		}
		emit(next)
		return nil
	}
	done := make(chan struct{})
	var set *Set
	var err error
	go func() {
		set, err = Reachable(ctx, []ostree.ObjectName{commit("x")}, endless, WithWorkers(1))
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("walk did not stop after cancellation")
	}
	if set != nil || !errors.Is(err, context.Canceled) {
		t.Errorf("got set=%v err=%v, want nil and context.Canceled", set != nil, err)
	}
}

// The parallel walk must equal a plain sequential walk on random DAGs.
func TestReachableMatchesSequential(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 2))
	n := 300
	if testing.Short() {
		n = 50
	}
	for i := 0; i < n; i++ {
		g, roots := randomRepo(r)
		want := g.seqReach(roots)
		workers := 1 + r.IntN(8)
		set, err := Reachable(context.Background(), roots, g.children, WithWorkers(workers))
		if err != nil {
			t.Fatalf("graph %d: %v", i, err)
		}
		got := setOf(set)
		if !reflect.DeepEqual(got, want) || set.Len() != len(want) {
			t.Fatalf("graph %d (workers %d): parallel walk differs:\n got %v\nwant %v", i, workers, g.labels(got), g.labels(want))
		}
	}
}

func TestSet(t *testing.T) {
	s := NewSet()
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 3))
	ref := map[ostree.ObjectName]bool{}
	for i := 0; i < 20000; i++ {
		var o ostree.ObjectName
		// Few distinct checksums so duplicates and commit/commitmeta pairs occur.
		o.Checksum = sum(fmt.Sprint(r.IntN(8000)))
		o.Type = ostree.ObjectType(1 + r.IntN(6))
		added := s.Add(o)
		if added == ref[o] {
			t.Fatalf("Add(%s) = %v with ref %v", o, added, ref[o])
		}
		ref[o] = true
	}
	if s.Len() != len(ref) {
		t.Fatalf("Len %d, want %d", s.Len(), len(ref))
	}
	for o := range ref {
		if !s.Has(o) {
			t.Fatalf("lost %s", o)
		}
		other := o
		other.Type = 9
		if s.Has(other) {
			t.Fatalf("Has(%s) for an absent type", other)
		}
	}
	if !reflect.DeepEqual(setOf(s), ref) {
		t.Fatal("Range differs from the inserted objects")
	}
	if s.Add(ostree.ObjectName{}) || s.Has(ostree.ObjectName{}) {
		t.Error("type 0 must never be a member")
	}
}
