package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

// PreResult says what `finalize --pre` did.
type PreResult struct {
	Staged  *StagedID `json:"staged"`
	Etc     EtcResult `json:"etc"`
	Seconds float64   `json:"seconds"`
}

// Pre seals the precomputed merge before ostree's finalization: what
// changed since the last refresh is applied and made durable. On any doubt
// it falls back: ostree's original staged state restored and the staged
// etc reset to the new defaults, so that ostree's own merge runs as if we
// had never been there. It returns an error only when even that was not
// possible (then finalization is locked).
func Pre(ctx context.Context, cfg Config) (res *PreResult, err error) {
	cfg.defaults()
	cfg.resolveChoices(ctx)
	werr := withWritableSysroot(cfg.Sysroot, func() error {
		res, err = pre(ctx, cfg)
		return nil
	})
	if werr == nil {
		return res, err
	}
	// The staged etc cannot be written (read-only and no remount): we can
	// neither seal nor reset it. Do less: put ostree's staged state back
	// (it lives in /run) and, if our merge is in the staged etc, lock
	// finalization rather than let ostree merge over a state we cannot
	// vouch for.
	snap, lerr := load(&cfg)
	if lerr != nil || snap.sys.Staged == nil {
		return nil, werr
	}
	res = &PreResult{Staged: (*StagedID)(idOf(snap.sys.Staged))}
	switch etcStateOf(snap.state.EtcState) {
	case EtcPrecomputed, EtcDirty, EtcSealed:
	default:
		if !snap.tookOver() {
			return res, werr
		}
	}
	res.Etc = fallback(ctx, &cfg, snap.sys, werr)
	return res, werr
}

func pre(ctx context.Context, cfg Config) (*PreResult, error) {
	start := time.Now()
	unlock, err := lifecycleLock(ctx, cfg.RunDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	snap, err := load(&cfg)
	if err != nil {
		return nil, err
	}
	sys := snap.sys
	res := &PreResult{Etc: EtcResult{State: EtcNone}}
	if sys.Staged == nil {
		cfg.Log.Info("finalize --pre: nothing staged")
		return res, nil
	}
	id := idOf(sys.Staged)
	res.Staged = (*StagedID)(id)
	done := func(r EtcResult) (*PreResult, error) {
		res.Etc, res.Seconds = r, time.Since(start).Seconds()
		// A fallback that failed too (*fallbackError) is the step's error.
		return res, r.err
	}

	if snap.storeErr != nil {
		// We cannot trust anything we recorded; if the disk holds our
		// rewrite, the backup copy restores ostree's state.
		return done(fallback(ctx, &cfg, sys, fmt.Errorf("runtime store unreadable: %w", snap.storeErr)))
	}
	if !sameID(snap.state.Staged, id) {
		if snap.state.Staged != nil {
			cfg.Log.Info("finalize --pre: the precomputed state is for another staged deployment; leaving ostree's state alone")
		}
		return done(EtcResult{State: EtcNone, Reason: "nothing precomputed for this staged deployment"})
	}
	switch etcStateOf(snap.state.EtcState) {
	case EtcPrecomputed, EtcDirty, EtcSealed:
	default:
		// Nothing of ours in the staged etc that ostree's merge would not
		// redo, unless a write of ours was interrupted (a stage killed
		// mid-merge leaves temporary files and half-copied directories
		// that ostree would keep) or our rewrite of the staged state is on
		// disk without its record (a stage killed between the two): then
		// reset, and make sure the staged state is ostree's own.
		switch {
		case snap.tookOver():
			return done(fallback(ctx, &cfg, sys, errors.New("takeover recorded without a precomputed merge")))
		case snap.orig != nil && isTakeoverOf(snap.disk, snap.orig):
			return done(fallback(ctx, &cfg, sys, errors.New("the staged state is our rewrite but no precomputed merge was recorded (stage interrupted)")))
		case snap.applying:
			return done(fallback(ctx, &cfg, sys, errors.New("an earlier write of the staged etc was interrupted")))
		}
		return done(EtcResult{State: etcStateOf(snap.state.EtcState), Reason: snap.state.EtcReason})
	}
	if _, err := refresh(ctx, &cfg, snap, nil, EtcSealed); errors.Is(err, errPolicyStale) {
		return done(fallback(ctx, &cfg, sys, fmt.Errorf("%w: ostree merges and refreshes", err)))
	} else if err != nil {
		return done(fallback(ctx, &cfg, sys, fmt.Errorf("sealing the /etc merge: %w", err)))
	}
	r := EtcResult{State: EtcSealed, Takeover: snap.tookOver(), Reason: "sealed"}
	if r.Takeover {
		r.Policy = PolicyState(snap.state.Policy)
	} else {
		// Say why ostree still merges, as stage did: status shows the
		// reason of the last step.
		r.Reason = "sealed; ostree merges on top (no takeover at staging)"
	}
	if err := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		st, err := tx.State()
		if err != nil {
			return err
		}
		st.EtcState, st.EtcReason, st.Takeover, st.Policy = string(r.State), r.Reason, r.Takeover, string(r.Policy)
		return tx.PutState(st)
	}); err != nil {
		return done(fallback(ctx, &cfg, sys, fmt.Errorf("recording the seal: %w", err)))
	}
	cfg.Log.Info("sealed the /etc merge", slog.String(msgid.Key, msgid.Seal), "takeover", r.Takeover, "seconds", time.Since(start).Seconds())
	return done(r)
}
