package prune

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

func planLabels(g *graph, p *Plan) []string {
	var out []string
	for _, e := range p.Entries() {
		out = append(out, g.label(e.Name()))
	}
	sort.Strings(out)
	return out
}

func TestComputePlan(t *testing.T) {
	g, c := depth0Repo()
	// Objects the plan must never touch: a payload link and a tombstone
	// (not plannable types), and detached metadata whose commit is absent.
	g.add("link", ostree.ObjPayloadLink)
	g.add("tomb", ostree.ObjTombstoneCommit)
	g.add("orphan", ostree.ObjCommitMeta)
	g.add("junk", ostree.ObjFile)

	p, err := ComputePlan(context.Background(), g, []ostree.ObjectName{c["c2"], c["c1"]}, "filez", g.children)
	if err != nil {
		t.Fatal(err)
	}
	got := planLabels(g, p)
	want := []string{
		"c0.commit", "c0.commitmeta", "junk.file", "o1.file", "old.dirtree", "r0.file", "root0.dirtree",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("plan:\n got %v\nwant %v", got, want)
	}
	if p.RootsHash != RootsHash([]ostree.ObjectName{c["c1"], c["c2"], c["c1"]}) {
		t.Error("plan roots hash differs from RootsHash of the same roots")
	}
	if len(p.Roots) != 2 {
		t.Errorf("roots %v", p.Roots)
	}
	var size uint64
	for _, e := range p.Entries() {
		size += uint64(g.present[e.Name()])
	}
	s := p.Stats
	if s.Objects != 7 || s.Bytes != size || s.Commit.Objects != 1 || s.CommitMeta.Objects != 1 ||
		s.DirTree.Objects != 2 || s.DirMeta.Objects != 0 || s.File.Objects != 3 || s.Listed != len(g.present) {
		t.Errorf("stats %+v (bytes want %d)", s, size)
	}

	// A commitmeta is planned only with its commit: keep c0 alive and its
	// detached metadata is kept too, even though nothing "reaches" it when
	// the children function does not report it.
	noMeta := func(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
		return g.children(ctx, o, func(k ostree.ObjectName) {
			if k.Type != ostree.ObjCommitMeta {
				emit(k)
			}
		})
	}
	p2, err := ComputePlan(context.Background(), g, []ostree.ObjectName{c["c0"], c["c2"]}, "file", noMeta)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range planLabels(g, p2) {
		if strings.HasSuffix(l, ".commitmeta") {
			t.Errorf("planned %s although its commit is kept", l)
		}
	}

	// Listing: sorted lines "<hex>.<suffix>" with the repo's content suffix.
	var buf bytes.Buffer
	if err := p.WriteList(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if !slices.IsSorted(lines) || len(lines) != 7 {
		t.Errorf("listing not sorted or wrong size:\n%s", buf.String())
	}
	var wantLines []string
	for _, w := range want {
		name, typ, _ := strings.Cut(w, ".")
		var o ostree.ObjectName
		switch typ {
		case "file":
			wantLines = append(wantLines, sum(name).String()+".filez")
			o = obj(name, ostree.ObjFile)
		default:
			wantLines = append(wantLines, sum(name).String()+"."+typ)
			o, _ = ParseObjectString(sum(name).String()+"."+typ, "filez")
		}
		back, err := ParseObjectString(wantLines[len(wantLines)-1], "filez")
		if err != nil || (o.Type != 0 && back != o) {
			t.Errorf("ParseObjectString(%s) = %v, %v", wantLines[len(wantLines)-1], back, err)
		}
	}
	sort.Strings(wantLines)
	if !reflect.DeepEqual(lines, wantLines) {
		t.Errorf("listing:\n got %v\nwant %v", lines, wantLines)
	}

	// JSON keys are part of the CLI contract.
	js, err := json.Marshal(p.Summary())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"objects":7`, `"bytes":`, `"roots_hash":"` + p.RootsHash + `"`, `"commit":{"objects":1`, `"file":{"objects":3`, `"dirtree":`, `"dirmeta":`, `"commitmeta":`} {
		if !strings.Contains(string(js), k) {
			t.Errorf("summary JSON lacks %s: %s", k, js)
		}
	}

	// An error while walking yields no plan.
	delete(g.present, obj("shared", ostree.ObjDirTree))
	if p, err := ComputePlan(context.Background(), g, []ostree.ObjectName{c["c2"]}, "file", g.children); p != nil || !errors.Is(err, ostree.ErrNotFound) {
		t.Errorf("missing reachable dirtree: plan %v, err %v", p != nil, err)
	}
	// Roots must be commits; the suffix must be ostree's.
	if _, err := ComputePlan(context.Background(), g, []ostree.ObjectName{obj("root2", ostree.ObjDirTree)}, "file", g.children); !errors.Is(err, ErrBadPlan) {
		t.Errorf("dirtree root: %v", err)
	}
	if _, err := ComputePlan(context.Background(), g, nil, "files", g.children); !errors.Is(err, ErrBadPlan) {
		t.Errorf("bad suffix: %v", err)
	}
}

// The plan is exactly "listed minus reachable" (restricted to plannable
// types and the commitmeta rule) on random repositories.
func TestComputePlanRandom(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 4))
	for i := 0; i < 100; i++ {
		g, roots := randomRepo(r)
		reach := g.seqReach(roots)
		p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
		if err != nil {
			t.Fatal(err)
		}
		want := map[ostree.ObjectName]bool{}
		for o := range g.present {
			if reach[o] {
				continue
			}
			if o.Type == ostree.ObjCommitMeta {
				if _, ok := g.present[ostree.ObjectName{Checksum: o.Checksum, Type: ostree.ObjCommit}]; !ok || reach[ostree.ObjectName{Checksum: o.Checksum, Type: ostree.ObjCommit}] {
					continue
				}
			}
			want[o] = true
		}
		got := map[ostree.ObjectName]bool{}
		for _, e := range p.Entries() {
			got[e.Name()] = true
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("repo %d: plan\n got %v\nwant %v", i, g.labels(got), g.labels(want))
		}
	}
}

func TestRootsHash(t *testing.T) {
	a, b, c := commit("a"), commit("b"), commit("c")
	h := RootsHash([]ostree.ObjectName{a, b})
	if len(h) != 64 {
		t.Fatalf("hash %q", h)
	}
	if RootsHash([]ostree.ObjectName{b, a, b}) != h {
		t.Error("hash depends on order or duplicates")
	}
	if RootsHash([]ostree.ObjectName{a, b, c}) == h || RootsHash([]ostree.ObjectName{a}) == h || RootsHash(nil) == h {
		t.Error("different root sets hash the same")
	}
	// Pinned value: the hash is persisted and compared across versions of
	// this program, so its definition must not drift silently.
	if got := RootsHash(nil); got != "a9f225ff24afc708e278dd3ca3aa10d52574c39e3c2b177ec4ed2ddf5877d2fd" {
		t.Errorf("RootsHash(nil) = %s", got)
	}
	if h != "2628016d1e807e4df7463533aca09b477a8b792f13e1e360a671e9c3f484a43c" {
		t.Errorf("RootsHash(a, b) = %s", h)
	}
}

func TestNewPlanValidation(t *testing.T) {
	good := []Entry{
		{Checksum: sum("x"), Type: ostree.ObjFile, Size: 3},
		{Checksum: sum("c"), Type: ostree.ObjCommit, Size: 1},
		{Checksum: sum("c"), Type: ostree.ObjCommitMeta, Size: 1},
		{Checksum: sum("t"), Type: ostree.ObjDirTree, Size: 1},
		{Checksum: sum("m"), Type: ostree.ObjDirMeta, Size: 1},
	}
	roots := []ostree.ObjectName{commit("r")}
	p, err := NewPlan(roots, "file", good)
	if err != nil {
		t.Fatal(err)
	}
	if p.Stats.Objects != 5 || p.Stats.Bytes != 7 || p.RootsHash != RootsHash(roots) {
		t.Errorf("stats %+v", p.Stats)
	}
	bad := map[string][]Entry{
		"type 0":        {{Checksum: sum("x")}},
		"tombstone":     {{Checksum: sum("x"), Type: ostree.ObjTombstoneCommit}},
		"payload link":  {{Checksum: sum("x"), Type: ostree.ObjPayloadLink}},
		"unknown type":  {{Checksum: sum("x"), Type: 200}},
		"zero checksum": {{Type: ostree.ObjFile}},
		"duplicate":     {{Checksum: sum("x"), Type: ostree.ObjFile}, {Checksum: sum("y"), Type: ostree.ObjFile}, {Checksum: sum("x"), Type: ostree.ObjFile}},
	}
	for name, es := range bad {
		if _, err := NewPlan(roots, "file", append(slices.Clone(good), es...)); !errors.Is(err, ErrBadPlan) {
			t.Errorf("%s: got %v, want ErrBadPlan", name, err)
		}
	}
	if _, err := NewPlan([]ostree.ObjectName{obj("r", ostree.ObjDirTree)}, "file", good); !errors.Is(err, ErrBadPlan) {
		t.Errorf("non-commit root: %v", err)
	}
	if _, err := NewPlan(roots, "../x", good); !errors.Is(err, ErrBadPlan) {
		t.Errorf("bad suffix: %v", err)
	}
}

func TestParseObjectString(t *testing.T) {
	h := sum("a").String()
	for _, s := range []string{h + ".file", h + ".commit", h + ".commitmeta", h + ".dirtree", h + ".dirmeta"} {
		o, err := ParseObjectString(s, "file")
		if err != nil || o.Checksum != sum("a") || (&Plan{FileSuffix: "file"}).ObjectString(Entry{Checksum: o.Checksum, Type: o.Type}) != s {
			t.Errorf("%s: %v %v", s, o, err)
		}
	}
	for _, s := range []string{"", h, h + ".", h + ".filez", h + ".commit-tombstone", strings.ToUpper(h) + ".file", h[:63] + "g.file", h + "x.file", "../" + h[3:] + ".file"} {
		if _, err := ParseObjectString(s, "file"); !errors.Is(err, ErrBadPlan) {
			t.Errorf("%q accepted (%v)", s, err)
		}
	}
}

// FuzzParseObjectString: the parser of plan listings read back from disk
// never panics and only accepts what it prints.
func FuzzParseObjectString(f *testing.F) {
	h := sum("a").String()
	for _, s := range []string{h + ".file", h + ".filez", h + ".commitmeta", h + ".dirtree", "x", h + ".\x00"} {
		f.Add(s, "file")
		f.Add(s, "filez")
	}
	f.Fuzz(func(t *testing.T, s, suffix string) {
		o, err := ParseObjectString(s, suffix)
		if err != nil {
			if !errors.Is(err, ErrBadPlan) {
				t.Fatalf("error %v does not wrap ErrBadPlan", err)
			}
			return
		}
		p := &Plan{FileSuffix: suffix}
		if back := p.ObjectString(Entry{Checksum: o.Checksum, Type: o.Type}); back != s {
			t.Fatalf("accepted %q but prints %q", s, back)
		}
	})
}

// sizedLater lists with unknown sizes (-1) and answers ObjectSize, like
// the repository lister; one planned object vanishes before it is sized.
type sizedLater struct {
	g     *graph
	gone  ostree.ObjectName
	asked map[ostree.ObjectName]bool
}

func (s *sizedLater) ListObjects(fn func(o ostree.ObjectName, size int64) error) error {
	return s.g.ListObjects(func(o ostree.ObjectName, _ int64) error { return fn(o, -1) })
}

func (s *sizedLater) ObjectSize(o ostree.ObjectName) (int64, error) {
	s.asked[o] = true
	if o == s.gone {
		return 0, fmt.Errorf("lstat: %w", ostree.ErrNotFound)
	}
	return s.g.present[o], nil
}

func TestComputePlanSizesOnlyPlanned(t *testing.T) {
	g, c := depth0Repo()
	want, err := ComputePlan(context.Background(), g, []ostree.ObjectName{c["c2"]}, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	gone := obj("o1", ostree.ObjFile)
	l := &sizedLater{g: g, gone: gone, asked: map[ostree.ObjectName]bool{}}
	p, err := ComputePlan(context.Background(), l, []ostree.ObjectName{c["c2"]}, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	if p.Len() != want.Len()-1 || p.Stats.Bytes != want.Stats.Bytes-uint64(g.present[gone]) {
		t.Errorf("plan %+v, want %+v minus %s", p.Stats, want.Stats, g.label(gone))
	}
	for o := range l.asked {
		if g.seqReach([]ostree.ObjectName{c["c2"]})[o] {
			t.Errorf("sized reachable object %s", g.label(o))
		}
	}
	// A lister without ObjectSizer that reports no size is an error.
	if _, err := ComputePlan(context.Background(), struct{ ObjectLister }{l}, []ostree.ObjectName{c["c2"]}, "file", g.children); !errors.Is(err, ostree.ErrCorrupt) {
		t.Errorf("unsized listing: %v", err)
	}
}
