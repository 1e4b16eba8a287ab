package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// progressFile is w when it is a terminal, else nil: progress is drawn
// only for a person watching, never into logs, pipes or the journal.
func progressFile(w io.Writer) *os.File {
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		return f
	}
	return nil
}

// countProgress draws "<what> 1234/5678 objects (21%)" on f, rewritten in
// place at most ten times a second, for lifecycle.Config.Progress (which is
// called after every object, possibly from several goroutines). stop
// clears the line. With f nil both are no-ops and report is nil, so the
// lifecycle does not even call it.
func countProgress(f *os.File, what string) (report func(done, total int), stop func()) {
	if f == nil {
		return nil, func() {}
	}
	var mu sync.Mutex
	var last time.Time
	shown, stopped := false, false
	report = func(done, total int) {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		now := time.Now()
		if now.Sub(last) < 100*time.Millisecond && done != total {
			return
		}
		last = now
		pct := 0
		if total > 0 {
			pct = done * 100 / total
		}
		fmt.Fprintf(f, "\r\033[K%s %d/%d objects (%d%%)", what, done, total, pct)
		shown = true
	}
	stop = func() {
		mu.Lock()
		defer mu.Unlock()
		if shown && !stopped {
			fmt.Fprint(f, "\r\033[K")
		}
		stopped = true
	}
	return report, stop
}
