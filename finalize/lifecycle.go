package finalize

// The lifecycle: stage (precompute, take over), pre (seal or fall back),
// post (verify, persist the plan), cleanup (next boot), and the state they
// share in the runtime store. Each step re-reads the sysroot and the store:
// they run as separate processes, possibly after a crash of the previous one.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

// Config is what every lifecycle step needs. The zero value of each field
// is the default.
type Config struct {
	Sysroot string // ostree's --sysroot; "" means "/"
	RunDir  string // where ostree/staged-deployment lives; "" means "/run"
	// NoTakeover keeps ostree's own merge at finalization (stage only).
	NoTakeover bool
	// FS is how the staged etc is written; zero means RealFS().
	FS FS
	// Log receives what happened and why; nil means slog.Default().
	Log *slog.Logger
	// Ostree is the ostree command whose --version says how the SELinux
	// policy is refreshed after a merge; "" means "ostree" on PATH.
	Ostree string
	// Bwrap is the sandbox ostree runs semodule in; "" means
	// "/usr/bin/bwrap", ostree's own fixed path.
	Bwrap string
	// LockTimeout bounds waits for ostree's repository and sysroot locks;
	// 0 means 30s (libostree's own default lock-timeout-secs).
	LockTimeout time.Duration
	// ImageGC includes in the prune plan the container image-store refs
	// that ostree-ext's GC would remove after finalization (prune.PredictOptions.ImageGC).
	ImageGC bool
	// Progress, if set, is told how far a long plan or deletion is.
	Progress func(done, total int)
	// Choices are the installed ostree's version-dependent behaviours
	// (ostree.Rows); nil means: read `Ostree --version` once per command
	// (resolveChoices).
	Choices *ostree.Choices
	// BootedDevIno, for tests only, is taken as the device and inode of
	// "/" (ostree.LoadOptions.BootedDevIno): the lifecycle then runs on a
	// sysroot "booted" into that deployment from outside its namespace.
	// nil (always, in the service) means the real "/".
	BootedDevIno *[2]uint64
}

func (c *Config) defaults() {
	if c.Sysroot == "" {
		c.Sysroot = "/"
	}
	if c.RunDir == "" {
		c.RunDir = "/run"
	}
	if c.FS.WriteFileAtomic == nil {
		c.FS = RealFS()
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Ostree == "" {
		c.Ostree = "ostree"
	}
	if c.Bwrap == "" {
		c.Bwrap = "/usr/bin/bwrap"
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = 30 * time.Second
	}
}

// resolveChoices reads the installed ostree's version-dependent choices
// (once: Watch resolves them before its loop) and hands the merge its own
// (FS.SkipSpecialInDirs). An ostree whose version cannot be read gets the
// oldest behaviour of every row, which is doing less: a merge that fails
// where a newer ostree would skip an entry falls back to ostree's merge.
func (c *Config) resolveChoices(ctx context.Context) ostree.Choices {
	if c.Choices == nil {
		ch, err := ostree.InstalledChoices(ctx, c.Ostree)
		if err != nil {
			c.Log.Warn("assuming the oldest ostree behaviours", "err", err)
		}
		c.Choices = &ch
	}
	c.FS.SkipSpecialInDirs = c.Choices.EtcMergeSkipsSpecialInDirs
	return *c.Choices
}

// ErrNotBooted: the lifecycle needs a booted ostree system (the staged
// state only exists there).
var ErrNotBooted = errors.New("not booted into an ostree deployment")

// Store blobs of the lifecycle besides store.Blob*.
const (
	blobTakeover  = "takeover-staged" // the staged-state bytes we wrote
	blobPredicted = "predicted"       // deployment list predicted at staging
	blobImages    = "images"          // the plan's images report (JSON), for status
)

// stagedPath is ostree's staged state under a run dir.
func stagedPath(runDir string) string {
	return filepath.Join(runDir, "ostree", "staged-deployment")
}

// origBackupPath keeps a second copy of ostree's original staged state
// outside the bbolt file: if the store is ever unreadable while our rewrite
// is on disk, this copy still lets every fallback restore ostree's state.
func origBackupPath(runDir string) string {
	return filepath.Join(runDir, "ostree-prefinalize", "orig-staged-deployment")
}

func idOf(d *ostree.Deployment) *store.StagedID {
	return &store.StagedID{OSName: d.OSName, Checksum: d.Checksum.String(), Serial: d.Serial, BootCsum: d.BootCsum}
}

func sameID(a, b *store.StagedID) bool {
	return a != nil && b != nil && a.OSName == b.OSName && a.Checksum == b.Checksum && a.Serial == b.Serial
}

// snapshot is what a step reads at its start: the sysroot, and the
// runtime store's view of it.
type snapshot struct {
	sys      *ostree.Sysroot
	disk     []byte // the staged state on disk now (nil: nothing staged)
	state    store.State
	orig     []byte // ostree's original staged bytes, as recorded
	takeover []byte // our rewrite, as recorded
	baseline []byte
	plan     []byte
	pending  []string
	storeErr error // the store could not be read (corrupt, unsafe, busy)
	applying bool  // a write of the staged etc began and was never recorded as finished
}

func load(cfg *Config) (*snapshot, error) {
	return loadWith(cfg, ostree.LoadOptions{})
}

// loadWith is load with extra sysroot load options (RunDir and
// BootedDevIno come from cfg).
func loadWith(cfg *Config, opts ostree.LoadOptions) (*snapshot, error) {
	opts.RunDir, opts.BootedDevIno = cfg.RunDir, cfg.BootedDevIno
	sys, err := ostree.LoadSysroot(cfg.Sysroot, opts)
	if err != nil {
		return nil, err
	}
	s := &snapshot{sys: sys}
	if sys.StagedState != nil {
		s.disk = sys.StagedState.Raw
	}
	err = store.ViewRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		s.state = st
		s.orig = tx.Blob(store.BlobOrigStaged)
		s.takeover = tx.Blob(blobTakeover)
		s.baseline = tx.Blob(store.BlobBaseline)
		s.plan = tx.Blob(store.BlobPlan)
		s.applying = tx.Blob(blobApplying) != nil
		s.pending, _ = tx.Pending(0)
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrNotExist) {
		s.storeErr = err
	}
	return s, nil
}

// tookOver reports whether the staged state on disk is our rewrite: as we
// wrote it, or as ostree rewrote it since (rewrittenTakeover).
func (s *snapshot) tookOver() bool {
	return s.disk != nil && s.takeover != nil && (bytes.Equal(s.disk, s.takeover) || rewrittenTakeover(s.disk, s.orig, s.takeover))
}

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

// StageResult says what stage did; it is what `stage --json` prints.
type StageResult struct {
	Staged   *store.StagedID `json:"staged"`
	Locked   bool            `json:"locked"`
	Etc      EtcResult       `json:"etc"`
	Prune    PruneResult     `json:"prune"`
	Duration float64         `json:"seconds"`
}

// EtcResult is the /etc side of a step.
type EtcResult struct {
	State    string `json:"state"`
	Takeover bool   `json:"takeover"`
	Reason   string `json:"reason,omitempty"`
	Modified int    `json:"modified"`
	Removed  int    `json:"removed"`
	Added    int    `json:"added"`
	Written  int    `json:"written"` // entries written or removed in the staged etc
	// Policy is what became of the SELinux policy refresh that ostree
	// skips when we take over (Policy*; "" when none is needed).
	Policy string `json:"selinux_policy,omitempty"`
}

// PruneResult is the plan side of a step.
type PruneResult struct {
	State     string   `json:"state"`
	Reason    string   `json:"reason,omitempty"`
	Objects   int64    `json:"objects"`
	Bytes     int64    `json:"bytes"`
	RootsHash string   `json:"roots_hash,omitempty"`
	Survivors []string `json:"deployments,omitempty"` // predicted list, "OS CSUM.SERIAL"
	// Images is what undeployed container images hold after finalization
	// (and whether the plan includes it: image GC).
	Images *prune.ImagesReport `json:"images,omitempty"`
}

// Stage precomputes for the staged deployment: the /etc merge into its etc
// (with a baseline of the booted etc for the seal), the takeover of ostree's
// merge when it cannot change ostree's outcome, and the prune plan. It is
// idempotent: run again for the same staged deployment it brings the merge
// up to date and recomputes the plan; for a new one (re-stage) it starts
// over. A merge that fails (ostree would fail the same way at shutdown) is
// reported as an error after falling back to ostree's own state.
func Stage(ctx context.Context, cfg Config) (res *StageResult, err error) {
	cfg.defaults()
	cfg.resolveChoices(ctx)
	// Stage writes the staged etc and, on a fallback, resets it: on a host
	// whose /sysroot is mounted read-only it does so, as ostree does, from
	// a private mount namespace with a read-write remount.
	werr := withWritableSysroot(cfg.Sysroot, func() error {
		res, err = stage(ctx, cfg)
		return nil
	})
	if werr != nil {
		return nil, werr
	}
	return res, err
}

func stage(ctx context.Context, cfg Config) (*StageResult, error) {
	start := time.Now()
	unlock, err := lifecycleLock(ctx, cfg.RunDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	res := &StageResult{Etc: EtcResult{State: store.EtcNone}, Prune: PruneResult{State: store.PruneNone}}
	if why := bootcComposefsReason(cfg.RunDir); why != "" {
		cfg.Log.Info("stepping aside", "reason", why)
		res.Etc.Reason, res.Prune.Reason = why, why
		return res, nil
	}
	snap, err := load(&cfg)
	if err != nil {
		return nil, err
	}
	sys := snap.sys
	if sys.Staged == nil {
		if sys.Booted == nil {
			cfg.Log.Info("nothing staged (not booted into an ostree deployment)")
		} else {
			cfg.Log.Info("nothing staged")
		}
		if snap.state.Staged != nil {
			if err := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
				if err := tx.Clear(); err != nil {
					return err
				}
				return tx.PutState(store.State{EtcReason: "nothing staged any more", PruneReason: "nothing staged any more"})
			}); err != nil {
				return nil, err
			}
		}
		return res, nil
	}
	if sys.Booted == nil {
		return nil, fmt.Errorf("staged deployment %s: %w", sys.Staged, ErrNotBooted)
	}
	id := idOf(sys.Staged)
	res.Staged, res.Locked = id, sys.StagedLocked

	// Which bytes are ostree's? If the disk holds our own rewrite for this
	// deployment, the recorded original; otherwise what is on disk (a fresh
	// stage, a re-stage, or ostree's state restored).
	fresh := true
	orig := snap.disk
	// rewritten: the disk holds our takeover as ostree rewrote it (a lock
	// or unlock of finalization); it stays our takeover, recorded as such.
	rewritten := false
	if snap.storeErr != nil {
		backup, berr := readBackup(cfg.RunDir)
		if berr == nil && isTakeoverOf(snap.disk, backup) {
			orig = ostreeStateNow(&cfg, backup, snap.disk)
		} else if lostTakeover(ctx, sys, snap.disk) != "" {
			// Merging again would keep the takeover of a state we can no
			// longer restore; going on as if ostree had staged without a
			// merge would leave a stale merge in the new etc. fallback
			// finds the state lost and locks finalization.
			r := fallback(ctx, &cfg, sys, fmt.Sprintf("runtime store unreadable (%v) and no backup copy of ostree's staged state for this deployment", snap.storeErr))
			return nil, fmt.Errorf("/etc merge: %s; stage the update again to recover", r.Reason)
		}
		// We cannot tell whether a killed earlier run left the staged etc
		// half-written: reconcile it whole (MergePaths over everything)
		// rather than merging on top as if it were pristine.
		fresh = false
		cfg.Log.Warn("runtime store unreadable; starting over", "err", snap.storeErr)
		if err := store.Reset(store.RuntimePath(cfg.RunDir)); err != nil {
			return nil, err
		}
	} else if sameID(snap.state.Staged, id) {
		switch {
		case snap.tookOver():
			orig, fresh = ostreeStateNow(&cfg, snap.orig, snap.disk), false
			if rewritten = !bytes.Equal(snap.disk, snap.takeover); rewritten {
				cfg.Log.Info("ostree rewrote the staged state around our takeover (finalization locked or unlocked); keeping the takeover")
			}
		case snap.orig != nil && bytes.Equal(snap.disk, snap.orig):
			fresh = false
		}
	}
	origState, err := ostree.DecodeStagedState(orig)
	if err != nil {
		return nil, fmt.Errorf("staged state %s: %w", stagedPath(cfg.RunDir), err)
	}

	// Record identity and ostree's bytes before anything else is written,
	// so every later fallback can restore them.
	if err := writeBackup(cfg.RunDir, orig); err != nil {
		return nil, err
	}
	err = store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st := snap.state
		if fresh {
			if err := tx.Clear(); err != nil {
				return err
			}
			st = store.State{EtcState: store.EtcNone, PruneState: store.PruneNone}
		}
		st.Staged = id
		if err := tx.PutBlob(store.BlobOrigStaged, orig); err != nil {
			return err
		}
		if rewritten {
			if err := tx.PutBlob(blobTakeover, snap.disk); err != nil {
				return err
			}
			snap.orig, snap.takeover = orig, snap.disk
		}
		return tx.PutState(st)
	})
	if err != nil {
		return nil, err
	}

	if !fresh && !cfg.NoTakeover && snap.tookOver() && !snap.applying && precomputed(snap.state.EtcState) {
		// Run again with our takeover in place (ostree-prefinalize.path
		// starts stage again when the takeover rewrites the staged state):
		// bring the merge up to date as the watcher does, rather than
		// reconciling the whole etc, which would also undo and redo the
		// SELinux policy refresh.
		res.Etc = catchUp(ctx, &cfg, snap)
	} else {
		res.Etc = stageEtc(ctx, &cfg, sys, origState, snap.disk, fresh)
	}
	res.Prune = stagePlan(ctx, &cfg, sys, origState)
	res.Duration = time.Since(start).Seconds()
	if res.Etc.State == store.EtcFallback {
		return res, fmt.Errorf("/etc merge: %s", res.Etc.Reason)
	}
	return res, nil
}

// precomputed reports whether an etc state holds our merge, complete as of
// its baseline.
func precomputed(state string) bool {
	return state == store.EtcPrecomputed || state == store.EtcDirty || state == store.EtcSealed
}

// catchUp is stage for a merge already precomputed and taken over: what
// changed since the baseline is applied (refresh), the takeover stays.
func catchUp(ctx context.Context, cfg *Config, snap *snapshot) EtcResult {
	n, err := refresh(ctx, cfg, snap, nil, store.EtcPrecomputed)
	switch {
	case errors.Is(err, ErrNoMerge):
		// refresh fell back already (the policy refresh failed).
		return EtcResult{State: store.EtcFallback, Reason: err.Error()}
	case err != nil:
		return fallback(ctx, cfg, snap.sys, fmt.Sprintf("bringing the /etc merge up to date: %v", err))
	}
	r := EtcResult{State: store.EtcPrecomputed, Takeover: true, Written: n, Reason: "taken over already; brought up to date"}
	if err := store.ViewRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		r.Policy = st.Policy
		return err
	}); err != nil {
		// The merge is current (refresh just wrote the store); only the
		// policy note of this result is missing.
		cfg.Log.Warn("reading the SELinux policy state", "err", err)
	}
	cfg.Log.Info("the /etc merge was taken over already; brought it up to date", "written", n)
	return r
}

// isTakeoverOf reports whether disk is what a takeover of orig looks like:
// the same staged deployment without the merge-deployment key.
func isTakeoverOf(disk, orig []byte) bool {
	d, err1 := ostree.DecodeStagedState(disk)
	o, err2 := ostree.DecodeStagedState(orig)
	return err1 == nil && err2 == nil && d.Merge == nil && o.Merge != nil && d.Target == o.Target
}

// stageEtc does the /etc part of Stage and records its outcome.
func stageEtc(ctx context.Context, cfg *Config, sys *ostree.Sysroot, orig *ostree.StagedState, disk []byte, fresh bool) EtcResult {
	r := EtcResult{State: store.EtcNone}
	log := cfg.Log.With("staged", sys.Staged.String())
	var merge *ostree.Deployment
	if orig.Merge != nil {
		merge = sys.Find(*orig.Merge)
	}
	transient := transientEtcReason(cfg.RunDir)
	switch {
	case transient != "":
		r.Reason = transient
	case stagedDirMissing(sys):
		// Nothing of ours can help: leave everything to ostree, which
		// fails (ostree.Choices.MissingDeploymentDirFailsLoad: from 2025.3
		// at sysroot load, before at finalization). No fallback: it
		// would find no etc to reset and lock finalization, which ostree
		// alone does not do.
		r.State, r.Reason = store.EtcFallback, fmt.Sprintf("the staged deployment's directory %s is missing: ostree's finalization will fail", sys.DeploymentDir(sys.Staged))
	case orig.Merge == nil:
		r.Reason = "ostree does no /etc merge for this deployment (no merge deployment)"
	case merge == nil:
		r.State, r.Reason = store.EtcFallback, fmt.Sprintf("merge deployment %s.%d is not deployed: ostree's finalization will fail", orig.Merge.Checksum, orig.Merge.Serial)
	case !merge.Same(sys.Booted):
		r.Reason = "the merge deployment is not the booted one: /etc left to ostree"
	}
	if r.Reason != "" {
		log.Info("no /etc precomputation", "reason", r.Reason)
		recordEtc(cfg, r, nil, nil)
		return r
	}

	p := pathsOf(sys)
	// The baseline is taken before the merge reads anything: a change made
	// while we merge then differs from it, and the seal applies it.
	bl, err := Scan(ctx, p.modified)
	if err == nil {
		// Mark the staged etc as being written until the outcome is
		// recorded: killed in between (SIGKILL, power loss), a temporary
		// file of an unfinished write or a half-copied directory may be
		// left that ostree's merge would keep; the next step sees the mark
		// and reconciles (stage, refresh) or resets (finalize --pre) the
		// whole staged etc.
		_, err = beginApplying(cfg.RunDir)
	}
	if err == nil {
		var n int
		if fresh {
			var rep Report
			rep, err = Merge(ctx, cfg.FS, p.orig, p.modified, p.newEtc)
			r.Modified, r.Removed, r.Added = rep.Modified, rep.Removed, rep.Added
			n = rep.Modified + rep.Removed + rep.Added
		} else {
			n, err = MergePaths(ctx, cfg.FS, p.orig, p.modified, p.newEtc, p.defaults, []string{""})
		}
		r.Written = n
	}
	if err != nil {
		return fallback(ctx, cfg, sys, fmt.Sprintf("precomputing the /etc merge: %v", err))
	}
	blBytes, err := bl.MarshalBinary()
	if err != nil {
		return fallback(ctx, cfg, sys, fmt.Sprintf("encoding the baseline: %v", err))
	}
	r.State = store.EtcPrecomputed

	// Take over only when it cannot change ostree's outcome: ostree's
	// refresh of the SELinux policy, skipped with its merge, is then ours.
	why := takeoverBlocker(cfg, sys, merge)
	if why == "" {
		pol, err := refreshPolicy(ctx, cfg, sys.DeploymentDir(sys.Staged))
		if err != nil {
			return fallback(ctx, cfg, sys, fmt.Sprintf("%v (ostree's finalization runs the same commands)", err))
		}
		r.Policy = pol
		kargs := orig.Kargs
		if !orig.HasKargs {
			// ostree would copy the merge deployment's options; its ostree=
			// argument is replaced in place when the entry is written, so
			// keeping it keeps the entry byte-identical.
			kargs = slices.Clone(merge.Kargs)
			if kargs == nil {
				kargs = []string{}
			}
		}
		enc, err := orig.EncodeTakeover(kargs)
		if err != nil {
			why = fmt.Sprintf("cannot encode the takeover: %v", err)
		} else if err := writeTakeover(ctx, cfg, enc, disk); err != nil {
			why = fmt.Sprintf("cannot rewrite the staged state: %v", err)
		} else {
			r.Takeover = true
			recordEtc(cfg, r, blBytes, enc)
			log.Info("took over the /etc merge", slog.String(msgid.Key, msgid.Takeover), "modified", r.Modified, "removed", r.Removed, "added", r.Added)
			return r
		}
	}
	r.Reason = why
	if r.Policy == PolicyRefreshed {
		// semodule wrote the staged etc for a takeover that did not
		// happen; ostree's merge and refresh on top of that would not be
		// its own outcome.
		return fallback(ctx, cfg, sys, why+" (after the SELinux policy refresh)")
	}
	if err := restoreStaged(cfg, orig.Raw); err != nil {
		return fallback(ctx, cfg, sys, err.Error())
	}
	recordEtc(cfg, r, blBytes, nil)
	log.Info("precomputed the /etc merge; ostree keeps its own", "reason", why)
	return r
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

type etcPaths struct{ orig, modified, newEtc, defaults string }

// pathsOf names the four trees of the merge, through the sysroot's
// deployment directories as ostree reads them.
func pathsOf(sys *ostree.Sysroot) etcPaths {
	booted := sys.DeploymentDir(sys.Booted)
	staged := sys.DeploymentDir(sys.Staged)
	return etcPaths{
		orig:     filepath.Join(booted, "usr/etc"),
		modified: filepath.Join(booted, "etc"),
		newEtc:   filepath.Join(staged, "etc"),
		defaults: filepath.Join(staged, "usr/etc"),
	}
}

// recordEtc stores the etc outcome (and, when given, the baseline and our
// takeover bytes). A store failure here is logged: the on-disk state is
// already consistent, and the next step treats a missing record as doubt.
func recordEtc(cfg *Config, r EtcResult, baseline, takeover []byte) {
	err := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		st.EtcState, st.EtcReason, st.Takeover, st.Policy = r.State, r.Reason, r.Takeover, r.Policy
		if r.State == store.EtcPrecomputed {
			// The merge is complete and recorded with its baseline: the
			// staged etc is no longer in the middle of a write.
			if err := tx.PutBlob(blobApplying, nil); err != nil {
				return err
			}
		}
		if baseline != nil {
			if err := tx.PutBlob(store.BlobBaseline, baseline); err != nil {
				return err
			}
		}
		if err := tx.PutBlob(blobTakeover, takeover); err != nil {
			return err
		}
		return tx.PutState(st)
	})
	if err != nil {
		cfg.Log.Error("recording the /etc state", "err", err)
	}
}

// fallback puts everything back to what ostree expects: the staged etc
// reset to the new defaults and ostree's original staged state on disk.
// If even that fails, finalization is locked, so ostree does not finalize
// a deployment whose etc we cannot vouch for: the update waits for the
// next attempt, the system keeps booting the current deployment.
func fallback(ctx context.Context, cfg *Config, sys *ostree.Sysroot, reason string) EtcResult {
	// Not cancelled with the caller: the usual reason to be here is that
	// the merge was (SIGTERM at a poweroff right after staging, seen under
	// systemd-nspawn in TestNspawnBoot), and a restore cut short by the
	// same cancellation locked finalization: the update was silently not
	// applied. The restore is bounded (lock waits time out; systemd's stop
	// timeout and the applying mark cover the rest).
	ctx = context.WithoutCancel(ctx)
	r := EtcResult{State: store.EtcFallback, Reason: reason}
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
	var errs []string
	if snapOrig != nil {
		if err := restoreStaged(cfg, snapOrig); err != nil {
			errs = append(errs, err.Error())
		}
	}
	// If the staged state on disk still has no merge deployment (our
	// rewrite, and no copy of ostree's that restores it), a reset would
	// leave a pristine etc that ostree would not merge into: the booted
	// /etc's changes would be lost. Lock instead (below), etc untouched.
	disk, _ := os.ReadFile(stagedPath(cfg.RunDir))
	lost := lostTakeover(ctx, sys, disk)
	if lost != "" {
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
		if _, err := Reset(ctx, cfg.FS, p.newEtc, p.defaults); err != nil {
			errs = append(errs, fmt.Sprintf("resetting the staged etc: %v", err))
		} else if markErr == nil {
			if err := endApplying(cfg.RunDir); err != nil {
				log.Warn("recording the reset of the staged etc", "err", err)
			}
		}
	}
	if len(errs) > 0 {
		r.Reason += "; fallback failed too (" + strings.Join(errs, "; ") + ")"
		if err := lockFinalization(cfg); err != nil {
			r.Reason += fmt.Sprintf("; locking finalization failed: %v", err)
		} else {
			r.Reason += "; finalization locked: the update is not applied at this shutdown"
		}
	}
	log.Warn("fell back to ostree's own /etc merge", slog.String(msgid.Key, msgid.Fallback), "reason", r.Reason)
	recordEtc(cfg, r, nil, nil)
	return r
}

// lockFinalization writes ostree's staged-deployment-locked flag.
func lockFinalization(cfg *Config) error {
	return writeFileDurable(filepath.Join(cfg.RunDir, "ostree", "staged-deployment-locked"), nil, 0o644)
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

// writeFileDurable writes path whole: a temporary file beside it, fsync,
// rename, fsync of the directory (so the rename itself is durable).
func writeFileDurable(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// stagePlan computes and records the mock prune for the staged transition.
func stagePlan(ctx context.Context, cfg *Config, sys *ostree.Sysroot, orig *ostree.StagedState) PruneResult {
	r := PruneResult{State: store.PruneInvalid}
	plan, deps, err := planFor(ctx, cfg, sys, orig)
	if err != nil {
		r.Reason = err.Error()
		cfg.Log.Warn("no prune plan", "err", err)
	} else {
		r = summarize(plan, deps)
	}
	var planBytes, predicted []byte
	if err == nil {
		if planBytes, err = plan.MarshalBinary(); err != nil {
			// Never "planned" without a plan stored.
			r = PruneResult{State: store.PruneInvalid, Reason: "encoding the prune plan: " + err.Error()}
			cfg.Log.Warn("no prune plan", "err", err)
		} else {
			predicted = []byte(strings.Join(r.Survivors, "\n"))
		}
	}
	uerr := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		st.PruneState, st.PruneReason = r.State, r.Reason
		st.PruneObjects, st.PruneBytes, st.RootsHash = r.Objects, r.Bytes, r.RootsHash
		if err := tx.PutBlob(store.BlobPlan, planBytes); err != nil {
			return err
		}
		if err := tx.PutBlob(blobPredicted, predicted); err != nil {
			return err
		}
		var images []byte
		if r.Images != nil {
			images, _ = json.Marshal(r.Images) // a struct of plain fields: cannot fail
		}
		if err := tx.PutBlob(blobImages, images); err != nil {
			return err
		}
		return tx.PutState(st)
	})
	if uerr != nil {
		cfg.Log.Error("recording the prune plan", "err", uerr)
		r.State, r.Reason = store.PruneInvalid, uerr.Error()
	}
	return r
}

// planFor predicts the deployments after finalization (from ostree's
// original staged state: a takeover changes the file, not the outcome) and
// plans the prune from their roots.
func planFor(ctx context.Context, cfg *Config, sys *ostree.Sysroot, orig *ostree.StagedState) (*prune.Plan, []*ostree.Deployment, error) {
	opts := prune.PredictOptions{ImageGC: cfg.ImageGC}
	if orig != nil && sys.Staged != nil {
		opts.State = orig
	}
	return prune.PlanSysroot(ctx, sys, opts, cfg.LockTimeout)
}

func summarize(p *prune.Plan, deps []*ostree.Deployment) PruneResult {
	r := PruneResult{State: store.PrunePlanned, Objects: int64(p.Stats.Objects), Bytes: int64(p.Stats.Bytes), RootsHash: p.RootsHash}
	for _, d := range deps {
		r.Survivors = append(r.Survivors, d.OSName+" "+d.DeployName())
	}
	if sum := p.Summary(); p.Images != nil {
		r.Images = &sum.Images
	}
	return r
}

// lostTakeover says why the staged state on disk may be a takeover of ours
// whose original is lost, or "" when it cannot be: it has a merge
// deployment (ostree's own), or none and the staged etc is still the
// pristine copy of its usr/etc that ostree's deploy made (a staging
// without merge, --no-merge: nothing of ours in it). Any doubt (the state
// or the etc cannot be read) counts as lost.
func lostTakeover(ctx context.Context, sys *ostree.Sysroot, disk []byte) string {
	st, err := ostree.DecodeStagedState(disk)
	if err != nil || st.Merge != nil || sys.Staged == nil {
		return ""
	}
	dir := sys.DeploymentDir(sys.Staged)
	c, err := Diff(ctx, filepath.Join(dir, "usr/etc"), filepath.Join(dir, "etc"))
	if err != nil {
		return fmt.Sprintf("the staged state has no merge deployment and the staged etc cannot be compared with its defaults (%v)", err)
	}
	if n := len(c.Modified) + len(c.Removed) + len(c.Added); n > 0 {
		return fmt.Sprintf("the staged state has no merge deployment but the staged etc holds a merge (%d entries differ from its defaults): it looks like our takeover, and ostree's original staged state is lost", n)
	}
	return ""
}
