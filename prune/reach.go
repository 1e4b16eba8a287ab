package prune

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// ErrInvalidObject is wrapped when a children function emits, or a caller
// passes, an object name that cannot be an ostree object (type 0).
var ErrInvalidObject = errors.New("invalid object name")

// ChildrenFunc reports the objects that o keeps alive, by calling emit once
// per child (duplicates are fine). It is the only place that knows how
// objects are stored: the repository binding reads and decodes metadata, unit
// tests use small in-memory graphs.
//
// For ostree at depth 0 the children are: commit → its .commitmeta when that
// loose file exists, its root dirtree and root dirmeta (never the parent
// commit); dirtree → its files (type file), each subdirectory's dirtree and
// dirmeta; every other type → none.
//
// An error (a reachable object missing or corrupt) aborts the whole walk.
// emit must only be called from within the call, from the calling goroutine;
// the walk calls ChildrenFunc from several goroutines at once.
type ChildrenFunc func(ctx context.Context, o ostree.ObjectName, emit func(ostree.ObjectName)) error

// Option tunes Reachable.
type Option func(*walkConfig)

type walkConfig struct {
	workers int
}

// WithWorkers sets the number of goroutines that call the children function
// (n < 1 means the default: twice GOMAXPROCS, at least 4, because the real
// children function mostly waits for the disk when the page cache is cold).
func WithWorkers(n int) Option { return func(c *walkConfig) { c.workers = n } }

// Reachable returns every object reachable from roots through children,
// roots included. It walks in parallel with a bounded number of workers. Any
// error from children, or ctx being cancelled, aborts the walk: the result
// is then nil, never a partial set (a partial set would make reachable
// objects look deletable).
func Reachable(ctx context.Context, roots []ostree.ObjectName, children ChildrenFunc, opts ...Option) (*Set, error) {
	cfg := walkConfig{}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.workers < 1 {
		cfg.workers = 2 * runtime.GOMAXPROCS(0)
		if cfg.workers < 4 {
			cfg.workers = 4
		}
	}

	set := NewSet()
	w := &walker{children: children, set: set, n: cfg.workers}
	w.cond = sync.NewCond(&w.mu)
	for _, r := range roots {
		if r.Type == 0 {
			return nil, fmt.Errorf("root %s: %w", r, ErrInvalidObject)
		}
		if set.Add(r) {
			w.queue = append(w.queue, r)
		}
	}
	if len(w.queue) == 0 {
		return set, ctx.Err()
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w.cancel = cancel

	var wg sync.WaitGroup
	for i := 0; i < w.n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.work(ctx)
		}()
	}
	wg.Wait()
	if w.err != nil {
		return nil, w.err
	}
	return set, nil
}

// walker shares work between goroutines: each one walks depth-first from
// its own stack and, when others are idle, hands half of its stack to the
// shared queue. The walk ends when every worker is idle and the queue is
// empty (nothing left anywhere) or on the first error.
type walker struct {
	children ChildrenFunc
	set      *Set
	n        int
	cancel   context.CancelFunc

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []ostree.ObjectName
	idle    int
	stop    bool
	err     error
	waiting atomic.Int32
	failed  atomic.Bool
}

// objectErr names o in err, unless err already starts by naming it (the
// repository binding's errors do), so that the message stays one readable
// line.
func objectErr(o ostree.ObjectName, err error) error {
	if strings.HasPrefix(err.Error(), "object "+o.String()) {
		return err
	}
	return fmt.Errorf("object %s: %w", o, err)
}

func (w *walker) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.stop = true
	w.failed.Store(true)
	w.cond.Broadcast()
	w.mu.Unlock()
	w.cancel()
}

func (w *walker) work(ctx context.Context) {
	var local []ostree.ObjectName
	var emitErr error
	emit := func(c ostree.ObjectName) {
		if c.Type == 0 {
			if emitErr == nil {
				emitErr = fmt.Errorf("child %s: %w", c, ErrInvalidObject)
			}
			return
		}
		if w.set.Add(c) {
			local = append(local, c)
		}
	}
	for {
		if len(local) == 0 {
			if !w.take(&local) {
				return
			}
		}
		if w.failed.Load() {
			return
		}
		if err := ctx.Err(); err != nil {
			w.fail(err)
			return
		}
		o := local[len(local)-1]
		local = local[:len(local)-1]
		if err := w.children(ctx, o, emit); err != nil {
			w.fail(objectErr(o, err))
			return
		}
		if emitErr != nil {
			w.fail(fmt.Errorf("object %s: %w", o, emitErr))
			return
		}
		if len(local) > 1 && w.waiting.Load() > 0 {
			w.share(&local)
		}
	}
}

// take blocks until there is shared work (moving a chunk of it to *local)
// or the walk is over; it reports whether there is work.
func (w *walker) take(local *[]ostree.ObjectName) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.queue) == 0 && !w.stop {
		w.idle++
		if w.idle == w.n {
			// Everyone is idle and nothing is queued: no stack holds work.
			w.stop = true
			w.cond.Broadcast()
			return false
		}
		w.waiting.Add(1)
		w.cond.Wait()
		w.waiting.Add(-1)
		w.idle--
	}
	if w.stop {
		return false
	}
	k := len(w.queue) / w.n
	if k < 1 {
		k = 1
	}
	if k > 1024 {
		k = 1024
	}
	start := len(w.queue) - k
	*local = append(*local, w.queue[start:]...)
	w.queue = w.queue[:start]
	return true
}

func (w *walker) share(local *[]ostree.ObjectName) {
	l := *local
	half := len(l) / 2
	w.mu.Lock()
	// Hand out the bottom of the stack: those are the objects nearest the
	// roots, i.e. the biggest untouched subtrees.
	w.queue = append(w.queue, l[:half]...)
	w.cond.Broadcast()
	w.mu.Unlock()
	n := copy(l, l[half:])
	*local = l[:n]
}
