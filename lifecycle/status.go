package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

// Status is `status --json`: stable field names (add, never rename).
type Status struct {
	Staged  *StagedStatus `json:"staged"`
	Etc     EtcStatus     `json:"etc"`
	Prune   PruneStatus   `json:"prune"`
	Cleanup CleanupStatus `json:"cleanup"`
	Watcher WatcherStatus `json:"watcher"`
	Ostree  *OstreeStatus `json:"ostree,omitempty"`
	History []Transition  `json:"history,omitempty"`
}

// Prune figures have one vocabulary across plan --json, stage --json,
// status --json and cleanup --json: "planned" is what a plan will delete
// (objects, and the bytes they hold), "deleted" what a cleanup deleted
// (objects, and the bytes freed); always int64. The older names stay
// (add, never rename): objects and bytes are planned figures in plan
// --json, stage --json's prune, status --json's prune and cleanup, and
// finalize --post --json, and deleted figures in cleanup --json.

// PlannedFigures: what a plan will delete.
type PlannedFigures struct {
	PlannedObjects int64 `json:"planned_objects"`
	PlannedBytes   int64 `json:"planned_bytes"`
}

// DeletedFigures: what a cleanup deleted.
type DeletedFigures struct {
	DeletedObjects int64 `json:"deleted_objects"`
	DeletedBytes   int64 `json:"deleted_bytes"`
}

// Planned is a plan's figures.
func Planned(st prune.Stats) PlannedFigures {
	return PlannedFigures{PlannedObjects: int64(st.Objects), PlannedBytes: int64(st.Bytes)}
}

type StagedStatus struct {
	OSName   string `json:"osname"`
	Checksum string `json:"checksum"`
	Serial   int    `json:"serial"`
	Locked   bool   `json:"locked"`
}

type EtcStatus struct {
	State        EtcState `json:"state"`
	PendingPaths int      `json:"pending_paths"`
	Takeover     bool     `json:"takeover"`
	Reason       string   `json:"reason"`
	// SELinuxPolicy: with a takeover, what became of the policy refresh
	// ostree then skips (a PolicyState; absent when none was needed).
	SELinuxPolicy PolicyState `json:"selinux_policy,omitempty"`
}

type PruneStatus struct {
	State     string `json:"state"`
	Objects   int64  `json:"objects"`
	Bytes     int64  `json:"bytes"`
	RootsHash string `json:"roots_hash"`
	Reason    string `json:"reason,omitempty"`
	PlannedFigures
	// Images is the planned transition's images report (what undeployed
	// container images hold; absent before stage computed one).
	Images *prune.ImagesReport `json:"images,omitempty"`
}

type CleanupStatus struct {
	Pending bool   `json:"pending"`
	Objects int64  `json:"objects"`
	Bytes   int64  `json:"bytes"`
	Reason  string `json:"reason,omitempty"`
	PlannedFigures
}

// OstreeStatus is the installed ostree (`ostree --version`) and the
// choices made from it.
type OstreeStatus struct {
	Version string `json:"version,omitempty"`
	// SELinuxRefresh is the semodule option ostree passes when it refreshes
	// the SELinux policy after its merge, which a takeover runs instead
	// ("" when this ostree does not refresh); Choices.SELinuxRefresh.
	SELinuxRefresh string `json:"selinux_refresh"`
	// Choices are all the version-dependent choices made for this ostree
	// (the table ostree.Rows); the oldest behaviour of every row when the
	// version cannot be read.
	Choices ostree.Choices `json:"choices"`
	// Error says why the version could not be read.
	Error string `json:"error,omitempty"`
}

func ostreeStatus(ctx context.Context, cfg *Config) *OstreeStatus {
	ch, err := ostree.InstalledChoices(ctx, cfg.Ostree)
	st := &OstreeStatus{Version: ch.Version, SELinuxRefresh: ch.SELinuxRefresh, Choices: ch}
	if err != nil {
		st.Error = err.Error()
	}
	return st
}

type WatcherStatus struct {
	Running bool `json:"running"`
	// Mode is watch.ModeInotify or watch.ModeRescan (inotify watches ran
	// out: periodic full rescans); empty when not running.
	Mode string `json:"mode,omitempty"`
	// Reason says why the mode is rescan.
	Reason string `json:"reason,omitempty"`
}

// GetStatus reads what is staged, precomputed and pending. It only reads
// (short read transactions, so it answers while the watcher works). A
// store that cannot be read is reported in the reasons, not as an error:
// status must always answer.
func GetStatus(ctx context.Context, cfg Config) (*Status, error) {
	cfg.defaults()
	// A staged state that cannot be read is reported, not an error:
	// status answers with what it knows.
	snap, err := loadWith(&cfg, ostree.LoadOptions{TolerateStaged: true})
	if err != nil {
		return nil, err
	}
	s := &Status{
		Etc:   EtcStatus{State: EtcNone},
		Prune: PruneStatus{State: store.PruneNone},
	}
	if d := snap.sys.Staged; d != nil {
		s.Staged = &StagedStatus{OSName: d.OSName, Checksum: d.Checksum.String(), Serial: d.Serial, Locked: snap.sys.StagedLocked}
	}
	history := false
	switch {
	case snap.sys.StagedErr != nil:
		s.Etc.Reason = "staged state unreadable (ostree's finalization will fail on it too): " + snap.sys.StagedErr.Error()
		s.Prune.Reason = s.Etc.Reason
	case snap.storeErr != nil:
		s.Etc.Reason = "runtime store unreadable: " + snap.storeErr.Error()
		s.Prune.Reason = s.Etc.Reason
	case s.Staged != nil && !sameID(snap.state.Staged, idOf(snap.sys.Staged)):
		s.Etc.Reason = "not precomputed for this staged deployment (stage has not run)"
	case s.Staged == nil && snap.state.Staged != nil && snap.sys.Booted != nil && sameID(snap.state.Staged, idOf(snap.sys.Booted)):
		// /run outlives a soft reboot (ostree 2025.3 prepare-soft-reboot):
		// the deployment the state was recorded for is now the booted
		// one, so the state is stale. Any other "no longer staged" (ostree
		// finalized or failed to, in this boot; --sysroot of a sysroot
		// that is not booted, whose staged state ostree does not read) is
		// reported as recorded: post's verdict is what people need then.
		old := snap.state.Staged
		s.Etc.Reason = fmt.Sprintf("stale runtime state: %s %s.%d is no longer staged but booted (a soft reboot keeps /run)", old.OSName, old.Checksum, old.Serial)
		s.Prune.Reason = s.Etc.Reason
		history = true
	default:
		history = true
		st := snap.state
		if st.EtcState != "" {
			s.Etc.State = EtcState(st.EtcState)
		}
		s.Etc.Reason, s.Etc.Takeover = st.EtcReason, snap.tookOver()
		if s.Etc.Takeover {
			s.Etc.SELinuxPolicy = PolicyState(st.Policy)
		}
		s.Etc.PendingPaths = len(snap.pending)
		if st.PruneState != "" {
			s.Prune.State = st.PruneState
		}
		s.Prune.Objects, s.Prune.Bytes, s.Prune.RootsHash, s.Prune.Reason = st.PruneObjects, st.PruneBytes, st.RootsHash, st.PruneReason
		s.Prune.PlannedFigures = PlannedFigures{PlannedObjects: st.PruneObjects, PlannedBytes: st.PruneBytes}
	}
	if history {
		// The history is an extra: status must answer without it (a
		// store unreadable is reported in the reasons above).
		_ = store.ViewRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
			h, _ := tx.History()
			for _, t := range h {
				s.History = append(s.History, Transition(t))
			}
			if b := tx.Blob(blobImages); len(b) > 0 {
				var im prune.ImagesReport
				if json.Unmarshal(b, &im) == nil {
					s.Prune.Images = &im
				}
			}
			return nil
		})
	}
	pp, err := store.ReadPlan(cfg.Sysroot)
	switch {
	case err == nil:
		s.Cleanup = CleanupStatus{Pending: true, Objects: pp.Objects, Bytes: pp.Bytes,
			PlannedFigures: PlannedFigures{PlannedObjects: pp.Objects, PlannedBytes: pp.Bytes}}
	case !errors.Is(err, store.ErrNotExist):
		s.Cleanup = CleanupStatus{Pending: true, Reason: "persisted plan unreadable: " + err.Error()}
	}
	s.Watcher.Running = watcherRunning(cfg.RunDir)
	if s.Watcher.Running {
		s.Watcher.Mode, s.Watcher.Reason = readWatcherMode(cfg.RunDir)
	}
	if why := bootcComposefsReason(cfg.RunDir); why != "" {
		s.Etc.Reason, s.Prune.Reason = why, why
	} else if why := transientEtcReason(cfg.RunDir); why != "" && s.Etc.State == EtcNone {
		s.Etc.Reason = why
	}
	s.Ostree = ostreeStatus(ctx, &cfg)
	return s, nil
}

// The watcher holds an exclusive flock on this file while it runs; the
// kernel drops it when the process dies, so a crashed watcher never looks
// alive.
func watchLockPath(runDir string) string {
	return filepath.Join(runDir, "ostree-prefinalize", "watch.lock")
}

// watcherRunning tries the watcher's lock without blocking.
func watcherRunning(runDir string) bool {
	f, err := os.Open(watchLockPath(runDir))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// The running watcher keeps its mode in its lock file (root-only, in the
// state directory), so it lives exactly as long as the watcher does.
type watcherMode struct {
	Mode   string `json:"mode"`
	Reason string `json:"reason,omitempty"`
}

func writeWatcherMode(lock *os.File, mode, reason string) error {
	b, err := json.Marshal(watcherMode{Mode: mode, Reason: reason})
	if err != nil {
		return err
	}
	if err := lock.Truncate(0); err != nil {
		return err
	}
	_, err = lock.WriteAt(b, 0)
	return err
}

// readWatcherMode reads what writeWatcherMode wrote; an unreadable or torn
// record (read mid-write) reports no mode rather than an error.
func readWatcherMode(runDir string) (mode, reason string) {
	f, err := os.OpenFile(watchLockPath(runDir), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", ""
	}
	var m watcherMode
	if json.Unmarshal(b, &m) != nil {
		return "", ""
	}
	return m.Mode, m.Reason
}

// holdWatchLock takes the watcher's lock; a second watcher is refused.
func holdWatchLock(runDir string) (*os.File, error) {
	dir := filepath.Dir(watchLockPath(runDir))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(watchLockPath(runDir), os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errors.New("another watcher is running")
		}
		return nil, err
	}
	return f, nil
}
