package prune

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// concDeleter lets Execute run its unlinks on several goroutines, with the
// invariant of diskDeleter still checked after every single deletion.
type concDeleter struct {
	mu sync.Mutex
	d  *diskDeleter
}

func (c *concDeleter) Delete(o ostree.ObjectName) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.d.Delete(o)
}

func (c *concDeleter) Tombstone(x ostree.Checksum) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.d.Tombstone(x)
}

func (c *concDeleter) Sync() error      { return c.d.Sync() }
func (c *concDeleter) Concurrent() bool { return true }

func TestExecuteConcurrentInvariantAndCancel(t *testing.T) {
	big := 0
	defer func() {
		if big == 0 {
			t.Errorf("no plan large enough to run unlinks concurrently")
		}
	}()
	randomPlans(t, 9, 60, 2, func(i int, r *rand.Rand, g *graph, roots []ostree.ObjectName, p *Plan) {
		if p.Stats.File.Objects >= 2*deleteWorkers {
			big++
		}
		ctx, cancel := context.WithCancel(context.Background())
		d := &concDeleter{d: newDiskDeleter(t, g)}
		stopAt := 1 + r.IntN(p.Len())
		d.d.onDelete = func(n int) {
			if n == stopAt {
				cancel()
			}
		}
		res, err := p.Execute(ctx, d, &live{g: g, roots: roots}, nil)
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("repo %d: %v", i, err)
		}
		// Whatever was in flight when the context ended finished and is
		// reported: every entry marked deleted is gone, every pending one
		// is still there.
		for _, e := range p.entries {
			_, on := g.present[e.Name()]
			if (e.state == stateDeleted) == on {
				t.Fatalf("repo %d: %s state %d, on disk %v", i, g.label(e.Name()), e.state, on)
			}
		}
		if res.Deleted+res.Remaining != p.Len() {
			t.Fatalf("repo %d: %+v for %d entries", i, res, p.Len())
		}
		d.d.onDelete = nil
		if _, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil); err != nil {
			t.Fatalf("repo %d: resume: %v", i, err)
		}
		if len(p.Remaining()) != 0 {
			t.Fatalf("repo %d: %d left after resume", i, len(p.Remaining()))
		}
	})
}

func TestExecuteConcurrentFault(t *testing.T) {
	randomPlans(t, 10, 40, 2, func(i int, r *rand.Rand, g *graph, roots []ostree.ObjectName, p *Plan) {
		es := p.Entries()
		victim := es[r.IntN(len(es))].Name()
		d := &concDeleter{d: newDiskDeleter(t, g)}
		d.d.failOn, d.d.failErr = victim, errInjected
		_, err := p.Execute(context.Background(), d, &live{g: g, roots: roots}, nil)
		if !errors.Is(err, errInjected) {
			t.Fatalf("repo %d: err %v", i, err)
		}
		for _, e := range p.entries {
			if e.Name() == victim && e.state != statePending {
				t.Fatalf("repo %d: failed object marked %d", i, e.state)
			}
		}
	})
}
