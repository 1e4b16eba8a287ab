package prune

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// diskDeleter deletes from the graph's present set and checks safety
// invariant 2 after every single deletion: no commit still on disk has lost
// anything it reaches (among what was on disk at the start), and no dirtree
// on disk has lost a file or dirmeta (planned dirtrees go in checksum
// order, so one may briefly outlive a planned subdirectory: both are
// unreachable, which fsck never looks at).
type diskDeleter struct {
	t       *testing.T
	g       *graph
	initial map[ostree.ObjectName]bool
	log     []string
	// failOn makes Delete of that object fail; onDelete runs before each
	// deletion (to cancel a context mid-way).
	failOn   ostree.ObjectName
	failErr  error
	onDelete func(n int)
	n        int
	check    bool
}

var errInjected = errors.New("injected EIO")

func newDiskDeleter(t *testing.T, g *graph) *diskDeleter {
	d := &diskDeleter{t: t, g: g, initial: map[ostree.ObjectName]bool{}, check: true}
	for o := range g.present {
		d.initial[o] = true
	}
	return d
}

func (d *diskDeleter) Delete(o ostree.ObjectName) error {
	d.n++
	if d.onDelete != nil {
		d.onDelete(d.n)
	}
	if o == d.failOn {
		return d.failErr
	}
	d.log = append(d.log, "delete "+d.g.label(o))
	delete(d.g.present, o) // already gone is fine
	if d.check {
		d.invariant()
	}
	return nil
}

func (d *diskDeleter) Tombstone(c ostree.Checksum) error {
	d.log = append(d.log, "tombstone "+d.g.label(ostree.ObjectName{Checksum: c, Type: ostree.ObjCommit}))
	return nil
}

func (d *diskDeleter) Sync() error {
	d.log = append(d.log, "sync")
	return nil
}

func (d *diskDeleter) invariant() {
	d.t.Helper()
	for o := range d.g.present {
		if o.Type != ostree.ObjCommit && o.Type != ostree.ObjDirTree {
			continue
		}
		var walk func(x ostree.ObjectName)
		seen := map[ostree.ObjectName]bool{}
		walk = func(x ostree.ObjectName) {
			for _, k := range d.g.kids[x] {
				if seen[k] {
					continue
				}
				seen[k] = true
				if o.Type == ostree.ObjDirTree && k.Type == ostree.ObjDirTree {
					continue
				}
				if _, ok := d.g.present[k]; d.initial[k] && !ok {
					d.t.Fatalf("after %q: %s is on disk but its descendant %s is gone", d.log[len(d.log)-1], d.g.label(o), d.g.label(k))
				}
				walk(k)
			}
		}
		walk(o)
	}
}

// live is a LiveRoots over the graph.
type live struct {
	g     *graph
	roots []ostree.ObjectName
}

func (l *live) LiveRoots(ctx context.Context) ([]ostree.ObjectName, error) { return l.roots, nil }
func (l *live) Children(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error {
	return l.g.children(ctx, o, emit)
}

func TestExecuteOrderAndTombstones(t *testing.T) {
	g, c := depth0Repo()
	roots := []ostree.ObjectName{c["c2"]}
	p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	d := newDiskDeleter(t, g)
	var prog []int
	res, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, func(done, total int) {
		if total != p.Len() {
			t.Errorf("progress total %d, want %d", total, p.Len())
		}
		prog = append(prog, done)
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Deleted != p.Len() || res.BytesFreed != p.Stats.Bytes || res.Remaining != 0 || res.RootsChanged {
		t.Errorf("result %+v, plan %+v", res, p.Stats)
	}
	if len(prog) != p.Len() || prog[len(prog)-1] != p.Len() {
		t.Errorf("progress %v", prog)
	}
	// commits (each followed by its tombstone), commitmeta, sync, trees,
	// sync, content, sync.
	log := strings.Join(d.log, "\n")
	want := strings.Join([]string{
		"delete c1.commit", "tombstone c1.commit", "delete c0.commit", "tombstone c0.commit", "delete c0.commitmeta", "sync",
		"delete root1.dirtree", "delete old.dirtree", "delete root0.dirtree", "sync",
		"delete o1.file", "delete r1.file", "delete r0.file", "sync",
	}, "\n")
	// Within a phase the order is by checksum; compare phase by phase.
	if phases(log) != phases(want) {
		t.Errorf("deletion log:\n%s\nwant (up to order within a phase):\n%s", log, want)
	}
	for i, l := range d.log {
		if strings.HasSuffix(l, ".commit") && strings.HasPrefix(l, "delete") {
			if i+1 >= len(d.log) || d.log[i+1] != "tombstone"+strings.TrimPrefix(l, "delete") {
				t.Errorf("%s not followed by its tombstone", l)
			}
		}
	}
	// Running it again is a no-op.
	d.log = nil
	res, err = p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil)
	if err != nil || res.Deleted != 0 || res.Remaining != 0 {
		t.Errorf("second run: %+v %v", res, err)
	}
	for o := range g.present {
		if !g.seqReach(roots)[o] {
			t.Errorf("%s survived", g.label(o))
		}
	}
}

// phases sorts the lines between syncs so that logs compare regardless of
// the order inside a phase (which is by checksum).
func phases(log string) string {
	var out []string
	for _, ph := range strings.Split(log, "sync") {
		lines := strings.Split(strings.Trim(ph, "\n"), "\n")
		// keep "delete X.commit" + "tombstone X.commit" pairs together
		var groups []string
		for i := 0; i < len(lines); i++ {
			if i+1 < len(lines) && strings.HasPrefix(lines[i+1], "tombstone") {
				groups = append(groups, lines[i]+"|"+lines[i+1])
				i++
				continue
			}
			groups = append(groups, lines[i])
		}
		sortStrings(groups)
		out = append(out, strings.Join(groups, ","))
	}
	return strings.Join(out, " / ")
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// Random repositories: execution never breaks invariant 2 and ends with
// exactly the reachable objects (plus kept types) on disk.
func TestExecuteRandomInvariant(t *testing.T) {
	randomPlans(t, 5, 60, 0, func(i int, _ *rand.Rand, g *graph, roots []ostree.ObjectName, p *Plan) {
		d := newDiskDeleter(t, g)
		if _, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil); err != nil {
			t.Fatalf("repo %d: %v", i, err)
		}
		reach := g.seqReach(roots)
		for o := range d.initial {
			_, on := g.present[o]
			if on != (reach[o] || (o.Type == ostree.ObjCommitMeta && reach[ostree.ObjectName{Checksum: o.Checksum, Type: ostree.ObjCommit}])) {
				// commitmeta without a commit on disk is also kept
				if o.Type == ostree.ObjCommitMeta && !d.initial[ostree.ObjectName{Checksum: o.Checksum, Type: ostree.ObjCommit}] && on {
					continue
				}
				t.Fatalf("repo %d: %s on disk = %v, reachable = %v", i, g.label(o), on, reach[o])
			}
		}
	})
}

func TestExecuteCancelAndResume(t *testing.T) {
	randomPlans(t, 6, 40, 2, func(i int, r *rand.Rand, g *graph, roots []ostree.ObjectName, p *Plan) {
		want := map[ostree.ObjectName]bool{}
		for _, e := range p.Entries() {
			want[e.Name()] = true
		}
		stopAt := 1 + r.IntN(p.Len()-1)
		ctx, cancel := context.WithCancel(context.Background())
		d := newDiskDeleter(t, g)
		// Cancel while Delete number stopAt runs: that deletion completes,
		// nothing after it starts.
		d.onDelete = func(n int) {
			if n == stopAt {
				cancel()
			}
		}
		res, err := p.Execute(ctx, d, &live{g: g, roots: roots}, nil)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("repo %d: err %v, want context.Canceled", i, err)
		}
		if res.Deleted != stopAt || res.Remaining != p.Len()-stopAt || len(p.Remaining()) != res.Remaining {
			t.Fatalf("repo %d: stopped at %d: result %+v, remaining %d", i, stopAt, res, len(p.Remaining()))
		}
		if got := p.Pending().Objects; got != res.Remaining {
			t.Fatalf("Pending %d, Remaining %d", got, res.Remaining)
		}
		d.onDelete = nil
		res2, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil)
		if err != nil || res2.Deleted+res.Deleted != p.Len() || res2.Remaining != 0 || res2.BytesFreed+res.BytesFreed != p.Stats.Bytes {
			t.Fatalf("repo %d: resume: %+v %v", i, res2, err)
		}
		for o := range want {
			if _, on := g.present[o]; on {
				t.Fatalf("repo %d: %s survived the resumed run", i, g.label(o))
			}
		}

		// A plan rebuilt from persisted Remaining() entries resumes too, and
		// objects already gone are not errors.
		g2, roots2 := randomRepo(rand.New(rand.NewPCG(r.Uint64(), uint64(100+i))))
		p2, err := ComputePlan(context.Background(), g2, roots2, "file", g2.children)
		if err != nil || p2.Len() < 2 {
			return
		}
		d2 := newDiskDeleter(t, g2)
		ctx2, cancel2 := context.WithCancel(context.Background())
		d2.onDelete = func(n int) {
			if n == 2 {
				cancel2()
			}
		}
		p2.Execute(ctx2, d2, &live{g: g2, roots: roots2}, nil)
		d2.onDelete = nil
		// Persisting lost the progress: the whole plan is re-run.
		again, err := NewPlan(p2.Roots, p2.FileSuffix, p2.Entries())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := again.Execute(context.Background(), d2, &live{g: g2, roots: roots2}, nil); err != nil {
			t.Fatalf("re-run of a reloaded plan: %v", err)
		}
	})
}

func TestExecuteNewRoots(t *testing.T) {
	g, c := depth0Repo()
	roots := []ostree.ObjectName{c["c2"]}
	p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	// After planning, a ref appears on a new commit that reuses c0's "old"
	// subtree and c1's root tree.
	meta := obj("meta", ostree.ObjDirMeta)
	c3 := g.commit("c3", c["c2"], g.tree("root3", []string{"r3"}, obj("old", ostree.ObjDirTree), meta, obj("root1", ostree.ObjDirTree), meta), meta, false)
	d := newDiskDeleter(t, g)
	res, err := p.Execute(context.Background(), d, &live{g: g, roots: []ostree.ObjectName{c["c2"], c3}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kept := []string{"o1.file", "old.dirtree", "r1.file", "root1.dirtree"}
	if !res.RootsChanged || res.NewRoots != 1 || res.KeptLive != len(kept) || res.Deleted != p.Len()-len(kept) || res.Remaining != 0 {
		t.Errorf("result %+v", res)
	}
	for _, k := range kept {
		name, _, _ := strings.Cut(k, ".")
		typ := ostree.ObjFile
		if strings.HasSuffix(k, "dirtree") {
			typ = ostree.ObjDirTree
		}
		if _, on := g.present[obj(name, typ)]; !on {
			t.Errorf("%s was deleted although the new root reaches it", k)
		}
	}
	if _, on := g.present[c["c1"]]; on {
		t.Error("c1 (unreachable) survived")
	}

	// A root that disappeared (c2 gone, nothing new) deletes nothing extra.
	g, c = depth0Repo()
	p, err = ComputePlan(context.Background(), g, []ostree.ObjectName{c["c1"], c["c2"]}, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	d = newDiskDeleter(t, g)
	res, err = p.Execute(context.Background(), d, &live{g: g, roots: []ostree.ObjectName{c["c1"]}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.RootsChanged || res.NewRoots != 0 || res.Deleted != p.Len() {
		t.Errorf("removed root: %+v", res)
	}
	if _, on := g.present[c["c2"]]; !on {
		t.Error("c2 deleted although it was a root when planning")
	}

	// A new root that cannot be walked: nothing is deleted.
	g, c = depth0Repo()
	p, _ = ComputePlan(context.Background(), g, []ostree.ObjectName{c["c2"]}, "file", g.children)
	d = newDiskDeleter(t, g)
	res, err = p.Execute(context.Background(), d, &live{g: g, roots: []ostree.ObjectName{c["c2"], commit("ghost")}}, nil)
	if !errors.Is(err, ostree.ErrNotFound) || res.Deleted != 0 || len(d.log) != 0 {
		t.Errorf("unwalkable new root: %+v %v %v", res, err, d.log)
	}
}

func TestExecuteFaultInjection(t *testing.T) {
	g, c := depth0Repo()
	roots := []ostree.ObjectName{c["c2"]}
	p, err := ComputePlan(context.Background(), g, roots, "filez", g.children)
	if err != nil {
		t.Fatal(err)
	}
	victim := obj("old", ostree.ObjDirTree)
	d := newDiskDeleter(t, g)
	d.failOn, d.failErr = victim, fmt.Errorf("unlinkat: %w", errInjected)
	res, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil)
	if !errors.Is(err, errInjected) || !strings.Contains(err.Error(), victim.Checksum.String()+".dirtree") {
		t.Fatalf("err %v: want the injected error naming %s", err, victim)
	}
	// Content is untouched (its phase never started) and the victim is pending.
	for _, e := range p.Remaining() {
		if e.Name() == victim {
			goto found
		}
	}
	t.Fatalf("failed object not in Remaining()")
found:
	for _, l := range d.log {
		if strings.HasSuffix(l, ".file") {
			t.Errorf("content deleted before all trees: %s", l)
		}
	}
	if res.Remaining == 0 || res.Deleted+res.Remaining != p.Len() {
		t.Errorf("result %+v", res)
	}
	d.failOn = ostree.ObjectName{}
	res2, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil)
	if err != nil || res2.Remaining != 0 || res.Deleted+res2.Deleted != p.Len() {
		t.Fatalf("resume after fault: %+v %v", res2, err)
	}

	// A failing Sync stops before the next phase.
	g, _ = depth0Repo()
	p, _ = ComputePlan(context.Background(), g, roots, "file", g.children)
	sd := &syncFail{diskDeleter: newDiskDeleter(t, g)}
	if _, err := p.Execute(context.Background(), sd, &live{g: g, roots: roots}, nil); !errors.Is(err, errInjected) {
		t.Fatalf("sync failure: %v", err)
	}
	for _, l := range sd.log {
		if strings.Contains(l, "dirtree") || strings.HasSuffix(l, ".file") {
			t.Errorf("deleted %s after a failed sync", l)
		}
	}
}

type syncFail struct{ *diskDeleter }

func (s *syncFail) Sync() error { return errInjected }

func TestExecuteRejectsBadPlan(t *testing.T) {
	g, c := depth0Repo()
	roots := []ostree.ObjectName{c["c2"]}
	p, err := ComputePlan(context.Background(), g, roots, "file", g.children)
	if err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(p *Plan){
		"bad type":      func(p *Plan) { p.entries[len(p.entries)-1].Type = ostree.ObjTombstoneCommit },
		"zero checksum": func(p *Plan) { p.entries[len(p.entries)-1].Checksum = ostree.Checksum{} },
		"roots hash":    func(p *Plan) { p.RootsHash = strings.Repeat("0", 64) },
		"suffix":        func(p *Plan) { p.FileSuffix = "file/../x" },
		// Roots hash right, yet a live root (here the plan's own) or its
		// detached metadata planned.
		"live root commit": func(p *Plan) {
			p.entries = append(p.entries, Entry{Checksum: c["c2"].Checksum, Type: ostree.ObjCommit, Size: 1})
			p.sortEntries()
		},
		"live root commitmeta": func(p *Plan) {
			p.entries = append(p.entries, Entry{Checksum: c["c2"].Checksum, Type: ostree.ObjCommitMeta, Size: 1})
			p.sortEntries()
		},
	} {
		bad := &Plan{Roots: p.Roots, RootsHash: p.RootsHash, FileSuffix: p.FileSuffix, entries: p.Entries()}
		mutate(bad)
		d := newDiskDeleter(t, g)
		if _, err := bad.Execute(context.Background(), d, &live{g: g, roots: roots}, nil); !errors.Is(err, ErrBadPlan) || len(d.log) != 0 {
			t.Errorf("%s: err %v, log %v: want ErrBadPlan before any deletion", name, err, d.log)
		}
	}
	if !reflect.DeepEqual(p.Entries(), p.Remaining()) {
		t.Error("the good plan was touched")
	}
}
