package lifecycle

// The lifecycle: stage (precompute, take over), pre (seal or fall back),
// post (verify, persist the plan), cleanup (next boot), and the state they
// share in the runtime store. Each step re-reads the sysroot and the store:
// they run as separate processes, possibly after a crash of the previous one.

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/etcmerge"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
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
	FS etcmerge.FS
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
		c.FS = etcmerge.RealFS()
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
