package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// 7. The kernel gives no more inotify watches (ENOSPC, simulated with the
// hidden --max-watches so the machine-wide limit stays as it is): the
// watcher does not exit, says so in status (watcher.mode "rescan" and
// why), keeps the staged etc current by periodic rescans, and the seal
// still gives ostree's exact merge.
func TestWatchRescanModeWhenWatchesRunOut(t *testing.T) {
	w := newWatchEnv(t, watchOptions{seed: 17})
	p := w.startWatcher("--max-watches", "2", "--rescan-every", "300ms")
	staged := w.staged.EtcDir()
	pollUntil(t, "watcher in rescan mode", 30*time.Second, func() (bool, string) {
		st := w.status()
		return st.Watcher.Running && st.Watcher.Mode == "rescan" && strings.Contains(st.Watcher.Reason, "no space"), fmt.Sprintf("%+v", st.Watcher)
	})
	gen := generatedDirs(w.tree)
	w.edit(func(t *testing.T, etc, _ string) {
		writeFile(t, filepath.Join(etc, "rescan-new.d/sub/f.conf"), "new\n")
		writeFile(t, filepath.Join(etc, gen[len(gen)-1], "deep.conf"), "deep\n")
	})
	pollUntil(t, "edits applied by periodic rescans", 30*time.Second, func() (bool, string) {
		for _, c := range []func() (bool, string){
			hasContent(filepath.Join(staged, "rescan-new.d/sub/f.conf"), "new\n"),
			hasContent(filepath.Join(staged, gen[len(gen)-1], "deep.conf"), "deep\n"),
		} {
			if ok, why := c(); !ok {
				return false, why
			}
		}
		return true, ""
	})
	w.edit(func(t *testing.T, etc, _ string) {
		must(t, os.Remove(filepath.Join(etc, "rescan-new.d/sub/f.conf")))
	})
	pollUntil(t, "a removal applied by a periodic rescan", 30*time.Second, isGone(filepath.Join(staged, "rescan-new.d/sub/f.conf")))
	want := w.expected("")
	w.stop(p)
	w.sealAndCompare(want)
}
