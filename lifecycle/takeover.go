package lifecycle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/etcmerge"
	"github.com/ostree-prefinalize/ostree-prefinalize/internal/durable"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

// rewrittenTakeover reports whether disk is our takeover (ours, made from
// ostree's orig) as ostree rewrote it whole: `ostree admin
// lock-finalization [--unlock]` (ostree_sysroot_change_finalization, 2023.8
// and later; bootc's --download-only and --from-downloaded) reads the staged
// state, sets "locked" and writes every key back, so the bytes change but
// there is still no merge deployment: it is still our takeover, and ostree
// will not merge. The deployment and its boot configuration ("target",
// "kargs", "overlay-initrds") must be ours byte for byte: a rewrite keeps
// them, a new staging writes its own.
func rewrittenTakeover(disk, orig, ours []byte) bool {
	if disk == nil || orig == nil || ours == nil || !isTakeoverOf(disk, orig) {
		return false
	}
	d, err1 := ostree.DecodeStagedState(disk)
	o, err2 := ostree.DecodeStagedState(ours)
	if err1 != nil || err2 != nil || o.Merge != nil {
		return false
	}
	for _, key := range []string{"target", "kargs", "overlay-initrds"} {
		de, dok := ostree.LookupEntry(d.Entries, key)
		oe, ook := ostree.LookupEntry(o.Entries, key)
		if dok != ook || de.Type != oe.Type || !bytes.Equal(de.Value, oe.Value) {
			return false
		}
	}
	return true
}

// ostreeStateNow is ostree's staged state as ostree has it now: orig, the
// bytes recorded before our takeover, with whatever ostree changed when it
// rewrote our takeover on disk since (StagedState.Reapply: the "locked" of
// a lock or unlock, any key it added). It is orig when disk is not a
// takeover of orig, and when the change cannot be reapplied (then it says
// so in the log).
func ostreeStateNow(cfg *Config, orig, disk []byte) []byte {
	if disk == nil || bytes.Equal(disk, orig) || !isTakeoverOf(disk, orig) {
		return orig
	}
	o, err := ostree.DecodeStagedState(orig)
	if err != nil {
		return orig
	}
	d, err := ostree.DecodeStagedState(disk)
	if err != nil {
		return orig
	}
	b, err := o.Reapply(d)
	if err != nil {
		cfg.Log.Warn("cannot carry ostree's rewrite of the staged state over to its original", "err", err)
		return orig
	}
	return b
}

// isTakeoverOf reports whether disk is what a takeover of orig looks like:
// the same staged deployment without the merge-deployment key.
func isTakeoverOf(disk, orig []byte) bool {
	d, err1 := ostree.DecodeStagedState(disk)
	o, err2 := ostree.DecodeStagedState(orig)
	return err1 == nil && err2 == nil && d.Merge == nil && o.Merge != nil && d.Target == o.Target
}

// takeoverBlocker says why we must not take over, or "" when we may.
func takeoverBlocker(cfg *Config, sys *ostree.Sysroot, merge *ostree.Deployment) string {
	if cfg.NoTakeover {
		return "--no-takeover"
	}
	if !merge.Same(sys.Booted) {
		return "the merge deployment is not the booted one"
	}
	return ""
}

// writeTakeover replaces the staged state (expect: what we read at the
// start, ostree's bytes or our earlier rewrite) with enc, under ostree's
// sysroot lock and only if the file still holds expect (ostree may have
// re-staged since we read it).
func writeTakeover(ctx context.Context, cfg *Config, enc, expect []byte) error {
	if bytes.Equal(enc, expect) {
		return nil
	}
	return replaceStaged(ctx, cfg, enc, expect)
}

// restoreStaged puts ostree's original staged state back when the disk
// holds anything else for the same deployment (our rewrite). It never
// overwrites a state for another deployment (a re-stage).
func restoreStaged(cfg *Config, orig []byte) error {
	disk, err := os.ReadFile(stagedPath(cfg.RunDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil // finalized or unstaged meanwhile: nothing to restore
	}
	if err != nil {
		return fmt.Errorf("restoring ostree's staged state: %w", err)
	}
	if bytes.Equal(disk, orig) {
		return nil
	}
	if !isTakeoverOf(disk, orig) {
		return nil // not our rewrite: leave ostree's file alone
	}
	// ostree may have rewritten our takeover since (a lock or unlock of
	// finalization): what it changed must survive the restore.
	orig = ostreeStateNow(cfg, orig, disk)
	if err := replaceStaged(context.Background(), cfg, orig, disk); err != nil {
		return fmt.Errorf("restoring ostree's staged state: %w", err)
	}
	cfg.Log.Info("restored ostree's original staged state")
	return nil
}

func replaceStaged(ctx context.Context, cfg *Config, data, expect []byte) error {
	lctx, cancel := context.WithTimeout(ctx, cfg.LockTimeout)
	defer cancel()
	lock, err := ostree.LockSysroot(lctx, cfg.Sysroot)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	path := stagedPath(cfg.RunDir)
	cur, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Equal(cur, expect) {
		return fmt.Errorf("%s changed while we worked (re-staged?): %w", path, ErrStagedChanged)
	}
	return writeFileDurable(path, data, 0o644)
}

// ErrStagedChanged: ostree rewrote the staged state under us.
var ErrStagedChanged = errors.New("staged state changed")

func writeBackup(runDir string, orig []byte) error {
	// Created and checked as the store's own directory, before anything
	// is written into it (a symlink or a writable-by-others directory is
	// store.ErrUnsafe).
	if _, err := store.RuntimeDir(runDir); err != nil {
		return err
	}
	return writeFileDurable(origBackupPath(runDir), orig, 0o600)
}

// readBackup reads the backup of ostree's staged state, only from a
// checked directory and never through a symlink.
func readBackup(runDir string) ([]byte, error) {
	if _, err := store.RuntimeDir(runDir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(origBackupPath(runDir), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// stateFS is the writer of the staged state, its backup copy and the
// finalization lock (writeFileDurable); tests make one step fail.
var stateFS = durable.Real()

// writeFileDurable writes path whole: a temporary file beside it, fsync,
// rename, fsync of the directory (so the rename itself is durable).
func writeFileDurable(path string, data []byte, mode os.FileMode) error {
	return stateFS.WriteFile(path, uint32(mode.Perm()), durable.Full, durable.Bytes(data))
}

// lostTakeover says why the staged state on disk may be a takeover of ours
// whose original is lost (ErrTakeoverLost), or nil when it cannot be: it has a merge
// deployment (ostree's own), or none and the staged etc is still the
// pristine copy of its usr/etc that ostree's deploy made (a staging
// without merge, --no-merge: nothing of ours in it). Any doubt (the state
// or the etc cannot be read) counts as lost.
func lostTakeover(ctx context.Context, sys *ostree.Sysroot, disk []byte) error {
	st, err := ostree.DecodeStagedState(disk)
	if err != nil || st.Merge != nil || sys.Staged == nil {
		return nil
	}
	dir := sys.DeploymentDir(sys.Staged)
	c, err := etcmerge.Diff(ctx, filepath.Join(dir, "usr/etc"), filepath.Join(dir, "etc"))
	if err != nil {
		return fmt.Errorf("%w: the staged state has no merge deployment and the staged etc cannot be compared with its defaults (%w)", ErrTakeoverLost, err)
	}
	if n := len(c.Modified) + len(c.Removed) + len(c.Added); n > 0 {
		return fmt.Errorf("%w: the staged state has no merge deployment but the staged etc holds a merge (%d entries differ from its defaults): it looks like our takeover, and ostree's original staged state is lost", ErrTakeoverLost, n)
	}
	return nil
}

// ErrTakeoverLost: the staged state on disk may be our takeover and
// ostree's original is lost (lostTakeover).
var ErrTakeoverLost = errors.New("takeover without its original")
