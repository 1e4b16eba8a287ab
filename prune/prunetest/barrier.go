// Package prunetest checks, in tests, the order in which a deleter's
// system calls reach the disk: the ordering barriers of safety invariant 2
// as a power loss sees them.
package prunetest

import (
	"fmt"
	"path"
	"strings"
	"sync"
)

// BarrierLog records a RepoDeleter's system calls (through its DeleterFS)
// in the order they were issued (unlinks) or completed (fsync, syncfs). It
// is safe for concurrent use.
type BarrierLog struct {
	mu    sync.Mutex
	Lines []string
}

func (l *BarrierLog) add(s string) {
	l.mu.Lock()
	l.Lines = append(l.Lines, s)
	l.mu.Unlock()
}

// Unlink records an unlink of dir/name; call it before issuing it.
func (l *BarrierLog) Unlink(dir, name string) { l.add("unlink " + dir + "/" + name) }

// Fsync records a directory fsync; call it once it returned err.
func (l *BarrierLog) Fsync(dir string, err error) { l.add(fmt.Sprintf("fsync %s %v", dir, err)) }

// Syncfs records a syncfs; call it once it returned err.
func (l *BarrierLog) Syncfs(err error) { l.add(fmt.Sprintf("syncfs %v", err)) }

// String is the log, one call a line.
func (l *BarrierLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.Lines, "\n")
}

// Group is the ordering class of an unlinked name: commits, their
// .commitmeta and .commitpartial (0), dirtrees (1), the rest (2).
func Group(name string) int {
	switch {
	case strings.HasSuffix(name, ".commit"), strings.HasSuffix(name, ".commitmeta"), strings.HasSuffix(name, ".commitpartial"):
		return 0
	case strings.HasSuffix(name, ".dirtree"):
		return 1
	}
	return 2
}

// Check replays the log as a power loss sees it: an unlink is durable once
// a successful fsync of its directory, or a syncfs, completed after it. It
// fails when an unlink of a later group was issued while one of an earlier
// group was not durable, and, with final, when anything is left not
// durable. It returns how many syncfs calls the log has.
func (l *BarrierLog) Check(final bool) (syncfs int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pending := map[string][]string{} // dir → unlinked names not yet durable
	for i, line := range l.Lines {
		f := strings.Fields(line)
		switch f[0] {
		case "unlink":
			dir, name := path.Split(f[1])
			dir = strings.TrimSuffix(dir, "/")
			for d, names := range pending {
				for _, n := range names {
					if Group(n) < Group(name) {
						return syncfs, fmt.Errorf("call %d: %s issued while the unlink of %s/%s is not durable (no completed fsync of %s since)\n%s",
							i, line, d, n, d, strings.Join(l.Lines[:i+1], "\n"))
					}
				}
			}
			pending[dir] = append(pending[dir], name)
		case "fsync":
			if f[2] == "<nil>" {
				delete(pending, f[1])
			}
		case "syncfs":
			syncfs++
			if f[1] == "<nil>" {
				clear(pending)
			}
		}
	}
	if final && len(pending) > 0 {
		return syncfs, fmt.Errorf("unlinks left not durable: %v\n%s", pending, strings.Join(l.Lines, "\n"))
	}
	return syncfs, nil
}
