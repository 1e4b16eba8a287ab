// Package prefinalize is the Go API of ostree-prefinalize, for update
// daemons written in Go (the equivalents of rpm-ostree, bootc or
// eos-updater) that stage ostree deployments themselves and want the
// finalization work done ahead of time without shelling out to the
// ostree-prefinalize command.
//
// # Basics
//
// After staging a deployment (libostree's deploy with the stage flag, or
// `ostree admin deploy --stage`), call Stage: it merges /etc into the
// staged deployment now and computes the prune plan, exactly as the
// `ostree-prefinalize stage` command (and the systemd path unit) does; it
// is idempotent, so running it alongside the unit is harmless. Status
// reports what is staged, precomputed and pending (the same data as
// `ostree-prefinalize status --json`); Plan previews the objects the
// staged update will leave unreachable; Cleanup deletes a plan persisted
// at the last shutdown (normally the cleanup timer does it).
//
// Everything here is a thin layer over the packages lifecycle (the
// lifecycle) and prune (the plan); the shutdown steps (`finalize --pre`,
// `finalize --post`) and the watcher belong to the systemd units.
//
// # Caveats
//
// Stage and Cleanup need root on a booted ostree system (they write the
// staged deployment, /run and the repository); Status and Plan only read.
// Nothing staged, or nothing pending, is not an error.
package prefinalize

import (
	"context"
	"log/slog"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
)

// Options say where the system is and how to behave. The zero value is
// the booted host with the defaults of the command line.
type Options struct {
	// Sysroot is the physical sysroot, as ostree's --sysroot; "" means "/".
	Sysroot string
	// RunDir holds ostree/staged-deployment and our runtime state; ""
	// means "/run".
	RunDir string
	// NoTakeover (Stage) keeps ostree's own /etc merge at finalization.
	NoTakeover bool
	// ImageGC (Stage, Plan) includes the container image-store refs that
	// no deployment uses after finalization, and what only they reach, in
	// the plan (see the README, "Container-native hosts: image GC").
	ImageGC bool
	// Logger receives what happened and why; nil means slog.Default().
	Logger *slog.Logger
	// LockTimeout bounds waits for ostree's repository and sysroot locks;
	// 0 means 30s (libostree's own default).
	LockTimeout time.Duration
	// Progress, if set, is told how far a long deletion is (Cleanup).
	Progress func(done, total int)
}

func (o Options) config() lifecycle.Config {
	return lifecycle.Config{
		Sysroot: o.Sysroot, RunDir: o.RunDir, NoTakeover: o.NoTakeover, ImageGC: o.ImageGC,
		Log: o.Logger, LockTimeout: o.LockTimeout, Progress: o.Progress,
	}
}

// The results are the lifecycle's own types; their JSON forms are what the
// command prints with --json.
type (
	// StageResult says what Stage did.
	StageResult = lifecycle.StageResult
	// StatusReport is `status --json`: stable field names.
	StatusReport = lifecycle.Status
	// CleanupResult says what Cleanup deleted.
	CleanupResult = lifecycle.CleanupResult
	// StagedID names the staged deployment in a StageResult.
	StagedID = lifecycle.StagedID
	// EtcState and PolicyState are the states of the /etc merge and of
	// the SELinux policy refresh (lifecycle.Etc*, lifecycle.Policy*).
	EtcState    = lifecycle.EtcState
	PolicyState = lifecycle.PolicyState
	// PlannedFigures and DeletedFigures are the prune figures' one
	// vocabulary (planned_*, deleted_*) in every result.
	PlannedFigures = lifecycle.PlannedFigures
	DeletedFigures = lifecycle.DeletedFigures
)

// ErrNotBooted: Stage found a staged deployment but the sysroot is not the
// booted one (the staged state only exists on a booted system).
var ErrNotBooted = lifecycle.ErrNotBooted

// Journal MESSAGE_IDs of the notable events, for daemons that watch the
// journal (`journalctl MESSAGE_ID=...`).
const (
	MessageIDStage         = msgid.Stage
	MessageIDTakeover      = msgid.Takeover
	MessageIDFallback      = msgid.Fallback
	MessageIDSeal          = msgid.Seal
	MessageIDPlanPersisted = msgid.PlanPersisted
	MessageIDCleanupDone   = msgid.CleanupDone
)

// Stage precomputes for the staged deployment: the /etc merge (and, unless
// NoTakeover, the takeover of ostree's merge) and the prune plan. With
// nothing staged it returns a result whose Staged is nil. A merge that
// fails is returned as an error after falling back to ostree's own state.
func Stage(ctx context.Context, o Options) (*StageResult, error) {
	return lifecycle.Stage(ctx, o.config())
}

// Status reads what is staged, precomputed and pending. It only reads.
func Status(ctx context.Context, o Options) (*StatusReport, error) {
	return lifecycle.GetStatus(ctx, o.config())
}

// Cleanup deletes the objects of the plan persisted at the last shutdown,
// under ostree's exclusive repository lock, keeping any that became live,
// and removes the plan. Cancelled, it stops promptly and keeps the rest for
// the next run. With nothing pending, Pending is false.
func Cleanup(ctx context.Context, o Options) (*CleanupResult, error) {
	return lifecycle.Cleanup(ctx, o.config())
}

// PlanResult is the mock prune for the staged transition.
type PlanResult struct {
	// Staged is whether a deployment is staged; Locked whether its
	// finalization is locked (the plan is then for the current list).
	Staged, Locked bool
	// Deployments are those that remain after finalization, and Dropped
	// those it removes, as "OSNAME CHECKSUM.SERIAL".
	Deployments, Dropped []string
	// Plan lists the objects that become unreachable (Entries, WriteList)
	// and their totals (Stats, Summary).
	Plan *prune.Plan
}

// Plan computes the objects the staged update leaves unreachable once
// finalized (with nothing staged: what `ostree admin cleanup` would delete
// now), under ostree's shared repository lock. It only reads.
func Plan(ctx context.Context, o Options) (*PlanResult, error) {
	p, err := lifecycle.ComputePlan(ctx, o.config())
	if err != nil {
		return nil, err
	}
	s := p.Sysroot
	return &PlanResult{
		Staged: s.Staged != nil, Locked: s.Staged != nil && s.StagedLocked, Plan: p.Prune,
		Deployments: lifecycle.DeploymentNames(p.Deployments), Dropped: lifecycle.DeploymentNames(p.Dropped),
	}, nil
}
