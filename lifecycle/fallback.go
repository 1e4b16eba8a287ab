package lifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/ostree-prefinalize/ostree-prefinalize/etcmerge"
	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

// fallback puts everything back to what ostree expects: the staged etc
// reset to the new defaults and ostree's original staged state on disk.
// If even that fails, finalization is locked, so ostree does not finalize
// a deployment whose etc we cannot vouch for: the update waits for the
// next attempt, the system keeps booting the current deployment.
func fallback(ctx context.Context, cfg *Config, sys *ostree.Sysroot, cause error) EtcResult {
	// Not cancelled with the caller: the usual reason to be here is that
	// the merge was (SIGTERM at a poweroff right after staging, seen under
	// systemd-nspawn in TestNspawnBoot), and a restore cut short by the
	// same cancellation locked finalization: the update was silently not
	// applied. The restore is bounded (lock waits time out; systemd's stop
	// timeout and the applying mark cover the rest).
	ctx = context.WithoutCancel(ctx)
	r := EtcResult{State: EtcFallback, Reason: cause.Error()}
	log := cfg.Log.With("staged", sys.Staged.String())
	var snapOrig []byte
	if err := store.ViewRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		snapOrig = tx.Blob(store.BlobOrigStaged)
		return nil
	}); err != nil {
		// The backup file beside the store is the other copy of ostree's
		// staged state: fall back on it.
		log.Warn("reading ostree's staged state from the store", "err", err)
	}
	if snapOrig == nil {
		snapOrig, _ = readBackup(cfg.RunDir)
	}
	var errs []error
	if snapOrig != nil {
		if err := restoreStaged(cfg, snapOrig); err != nil {
			errs = append(errs, err)
		}
	}
	// If the staged state on disk still has no merge deployment (our
	// rewrite, and no copy of ostree's that restores it), a reset would
	// leave a pristine etc that ostree would not merge into: the booted
	// /etc's changes would be lost. Lock instead (below), etc untouched.
	disk, _ := os.ReadFile(stagedPath(cfg.RunDir))
	if lost := lostTakeover(ctx, sys, disk); lost != nil {
		errs = append(errs, lost)
	} else if !stagedDirMissing(sys) {
		// (A missing deployment directory has no etc to reset, and
		// ostree's finalization fails on it with or without us.)
		p := pathsOf(sys)
		// The reset writes the staged etc: marked, so that a kill in the
		// middle of it makes the next step reset again (the mark is kept
		// when the reset fails). The mark is best effort: with an
		// unreadable store (one reason to fall back) the reset must still
		// happen.
		_, markErr := beginApplying(cfg.RunDir)
		if _, err := etcmerge.Reset(ctx, cfg.FS, p.newEtc, p.defaults); err != nil {
			errs = append(errs, fmt.Errorf("resetting the staged etc: %w", err))
		} else if markErr == nil {
			if err := endApplying(cfg.RunDir); err != nil {
				log.Warn("recording the reset of the staged etc", "err", err)
			}
		}
	}
	if len(errs) > 0 {
		fe := &fallbackError{cause: cause, failed: errs}
		if err := lockFinalization(cfg); err != nil {
			fe.lockErr = err
		} else {
			fe.Locked = true
		}
		r.Reason, r.err = fe.Error(), fe
	}
	log.Warn("fell back to ostree's own /etc merge", slog.String(msgid.Key, msgid.Fallback), "reason", r.Reason)
	recordEtc(cfg, r, nil, nil)
	return r
}

// lockFinalization writes ostree's staged-deployment-locked flag.
func lockFinalization(cfg *Config) error {
	return writeFileDurable(filepath.Join(cfg.RunDir, "ostree", "staged-deployment-locked"), nil, 0o644)
}

// fallbackError: the fallback itself failed (the staged state could not be
// restored, the staged etc not reset, or our takeover's original is lost).
// Locked says whether finalization was then locked (the update waits for
// the next attempt); the error wraps the cause of the fallback and every
// failure, so errors.Is and errors.As reach them. Its text is the reason
// that status shows.
type fallbackError struct {
	Locked  bool
	cause   error   // why we fell back
	failed  []error // what failed while falling back
	lockErr error   // why locking finalization failed (Locked false)
}

func (e *fallbackError) Error() string {
	msgs := make([]string, len(e.failed))
	for i, err := range e.failed {
		msgs[i] = err.Error()
	}
	s := e.cause.Error() + "; fallback failed too (" + strings.Join(msgs, "; ") + ")"
	if e.Locked {
		return s + "; finalization locked: the update is not applied at this shutdown"
	}
	return s + fmt.Sprintf("; locking finalization failed: %v", e.lockErr)
}

func (e *fallbackError) Unwrap() []error {
	out := append([]error{e.cause}, e.failed...)
	if e.lockErr != nil {
		out = append(out, e.lockErr)
	}
	return out
}
