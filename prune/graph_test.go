package prune

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// Test graphs: objects are named by strings, their checksum is the SHA-256
// of the name, so tests read like the repositories they model.

func sum(name string) ostree.Checksum { return ostree.Checksum(sha256.Sum256([]byte(name))) }

func obj(name string, t ostree.ObjectType) ostree.ObjectName {
	return ostree.ObjectName{Checksum: sum(name), Type: t}
}

func commit(name string) ostree.ObjectName { return obj(name, ostree.ObjCommit) }

// graph is an in-memory repository: kids are an object's children at depth
// 0, present is what is on disk with its size, fail makes children of an
// object fail.
type graph struct {
	mu      sync.Mutex
	kids    map[ostree.ObjectName][]ostree.ObjectName
	parent  map[ostree.ObjectName]ostree.ObjectName // commit → parent commit (must NOT be followed)
	present map[ostree.ObjectName]int64
	fail    map[ostree.ObjectName]error
	names   map[ostree.ObjectName]string
}

func newGraph() *graph {
	return &graph{
		kids:    map[ostree.ObjectName][]ostree.ObjectName{},
		parent:  map[ostree.ObjectName]ostree.ObjectName{},
		present: map[ostree.ObjectName]int64{},
		fail:    map[ostree.ObjectName]error{},
		names:   map[ostree.ObjectName]string{},
	}
}

func (g *graph) add(name string, t ostree.ObjectType, kids ...ostree.ObjectName) ostree.ObjectName {
	o := obj(name, t)
	g.kids[o] = append(g.kids[o], kids...)
	g.present[o] = int64(len(name) * 10)
	g.names[o] = name
	return o
}

// tree adds a dirtree "name" with files and subdirectories (dirtree, dirmeta pairs).
func (g *graph) tree(name string, files []string, dirs ...ostree.ObjectName) ostree.ObjectName {
	var kids []ostree.ObjectName
	for _, f := range files {
		kids = append(kids, g.add(f, ostree.ObjFile))
	}
	kids = append(kids, dirs...)
	return g.add(name, ostree.ObjDirTree, kids...)
}

// commit adds a commit with its root tree and meta, a parent (recorded, not
// a child) and optionally detached metadata.
func (g *graph) commit(name string, parent ostree.ObjectName, root, meta ostree.ObjectName, withMeta bool) ostree.ObjectName {
	kids := []ostree.ObjectName{root, meta}
	if withMeta {
		g.add(name, ostree.ObjCommitMeta)
		kids = append(kids, obj(name, ostree.ObjCommitMeta))
	}
	c := g.add(name, ostree.ObjCommit, kids...)
	if parent != (ostree.ObjectName{}) {
		g.parent[c] = parent
	}
	return c
}

// children is the graph's ChildrenFunc: a present object's kids; an absent
// object that is reached is an error, as a missing dirtree is for ostree.
// A commitmeta kid is only emitted when present (detached metadata is
// optional), like the repository binding does.
func (g *graph) children(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
	g.mu.Lock()
	err := g.fail[o]
	_, ok := g.present[o]
	kids := g.kids[o]
	var gone []bool
	for _, k := range kids {
		_, p := g.present[k]
		gone = append(gone, !p)
	}
	g.mu.Unlock()
	if err != nil {
		return err
	}
	if !ok && (o.Type == ostree.ObjCommit || o.Type == ostree.ObjDirTree) {
		return fmt.Errorf("%s: %w", o, ostree.ErrNotFound)
	}
	for i, k := range kids {
		if k.Type == ostree.ObjCommitMeta && gone[i] {
			continue
		}
		emit(k)
	}
	return nil
}

// seqReach is the reference walk: plain recursive, one goroutine.
func (g *graph) seqReach(roots []ostree.ObjectName) map[ostree.ObjectName]bool {
	seen := map[ostree.ObjectName]bool{}
	var visit func(o ostree.ObjectName)
	visit = func(o ostree.ObjectName) {
		if seen[o] {
			return
		}
		seen[o] = true
		g.children(context.Background(), o, visit)
	}
	for _, r := range roots {
		visit(r)
	}
	return seen
}

// ListObjects lists the present objects (the ObjectLister contract).
func (g *graph) ListObjects(fn func(o ostree.ObjectName, size int64) error) error {
	g.mu.Lock()
	var all []ostree.ObjectName
	for o := range g.present {
		all = append(all, o)
	}
	g.mu.Unlock()
	// Map order is random; that is fine, but sort for reproducible tests.
	slices.SortFunc(all, compareNames)
	for _, o := range all {
		if err := fn(o, g.present[o]); err != nil {
			return err
		}
	}
	return nil
}

func setOf(s *Set) map[ostree.ObjectName]bool {
	m := map[ostree.ObjectName]bool{}
	s.Range(func(o ostree.ObjectName) bool { m[o] = true; return true })
	return m
}

func (g *graph) label(o ostree.ObjectName) string {
	if n, ok := g.names[o]; ok {
		return n + "." + o.Type.String()
	}
	return o.String()
}

func (g *graph) labels(m map[ostree.ObjectName]bool) []string {
	var out []string
	for o, ok := range m {
		if ok {
			out = append(out, g.label(o))
		}
	}
	sort.Strings(out)
	return out
}

// randomRepo builds a random repository: a pool of files and dirmetas,
// dirtrees over random subsets (a DAG: a tree only references earlier
// trees), commits over random root trees with random parents, some with
// detached metadata, and some garbage.
func randomRepo(r *rand.Rand) (*graph, []ostree.ObjectName) {
	g := newGraph()
	nFiles := 1 + r.IntN(300)
	nMetas := 1 + r.IntN(5)
	nTrees := 1 + r.IntN(80)
	nCommits := 1 + r.IntN(8)
	files := make([]ostree.ObjectName, nFiles)
	for i := range files {
		files[i] = g.add(fmt.Sprintf("f%d", i), ostree.ObjFile)
	}
	metas := make([]ostree.ObjectName, nMetas)
	for i := range metas {
		metas[i] = g.add(fmt.Sprintf("m%d", i), ostree.ObjDirMeta)
	}
	trees := make([]ostree.ObjectName, 0, nTrees)
	for i := 0; i < nTrees; i++ {
		var kids []ostree.ObjectName
		for j := r.IntN(6); j > 0; j-- {
			kids = append(kids, files[r.IntN(nFiles)])
		}
		for j := r.IntN(4); j > 0 && len(trees) > 0; j-- {
			kids = append(kids, trees[r.IntN(len(trees))], metas[r.IntN(nMetas)])
		}
		trees = append(trees, g.add(fmt.Sprintf("t%d", i), ostree.ObjDirTree, kids...))
	}
	var commits []ostree.ObjectName
	for i := 0; i < nCommits; i++ {
		var parent ostree.ObjectName
		if len(commits) > 0 && r.IntN(2) == 0 {
			parent = commits[r.IntN(len(commits))]
		}
		commits = append(commits, g.commit(fmt.Sprintf("c%d", i), parent, trees[r.IntN(nTrees)], metas[r.IntN(nMetas)], r.IntN(2) == 0))
	}
	for i := r.IntN(10); i > 0; i-- {
		g.add(fmt.Sprintf("garbage%d", i), ostree.ObjFile)
	}
	var roots []ostree.ObjectName
	for _, c := range commits {
		if r.IntN(2) == 0 {
			roots = append(roots, c)
		}
	}
	return g, roots
}

// randomPlans runs fn on the plans of n random repositories (from a logged
// seed; stream tells the tests' sequences apart), skipping plans of fewer
// than minLen entries.
func randomPlans(t *testing.T, stream uint64, n, minLen int, fn func(i int, r *rand.Rand, g *graph, roots []ostree.ObjectName, p *Plan)) {
	t.Helper()
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, stream))
	for i := 0; i < n; i++ {
		g, roots := randomRepo(r)
		p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
		if err != nil {
			t.Fatalf("repo %d: %v", i, err)
		}
		if p.Len() < minLen {
			continue
		}
		fn(i, r, g, roots, p)
	}
}
