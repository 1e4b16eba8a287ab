package lifecycle

import "github.com/ostree-prefinalize/ostree-prefinalize/store"

// The states of a step, owned here: the store records them as strings
// (store.State, its on-disk form) and status --json and stage --json
// print the same strings (stable values: add, never rename).

// EtcState is where the /etc merge of the staged deployment stands.
type EtcState string

const (
	// EtcNone: nothing precomputed (ostree merges at shutdown).
	EtcNone EtcState = store.EtcNone
	// EtcPrecomputed: the staged etc holds the merge as of the last
	// refresh.
	EtcPrecomputed EtcState = store.EtcPrecomputed
	// EtcDirty: paths of the booted etc changed and wait to be applied.
	EtcDirty EtcState = store.EtcDirty
	// EtcSealed: finalize --pre applied the last changes and flushed.
	EtcSealed EtcState = store.EtcSealed
	// EtcFallback: the staged etc was reset and ostree's staged state
	// restored, so that ostree's own merge runs.
	EtcFallback EtcState = store.EtcFallback
)

// etcStateOf reads a recorded state ("" reads as EtcNone, as in the store).
func etcStateOf(s string) EtcState {
	if s == "" {
		return EtcNone
	}
	return EtcState(s)
}

// PolicyState is what became of the SELinux policy refresh that ostree
// skips when we take over its merge: recorded in the store (State.Policy)
// and shown by status and stage --json.
type PolicyState string

const (
	// PolicyNone: no refresh is needed (the merged etc has no
	// selinux/config) or nothing ran yet.
	PolicyNone PolicyState = ""
	// PolicyRefreshed: semodule rebuilt (or found current) the policy of
	// the staged deployment after our merge.
	PolicyRefreshed PolicyState = "refreshed"
	// PolicyUnsupported: ostree would not refresh either (this ostree
	// predates the refresh or was built without SELinux, or the
	// deployment's semodule lacks the option): the merged etc alone is
	// ostree's outcome, whatever changes later.
	PolicyUnsupported PolicyState = "not-refreshed-by-ostree"
)

// StagedID names the staged deployment in the results of stage and
// finalize --pre (the fields the runtime store records for it).
type StagedID store.StagedID

// Transition is one change of state in status --json's history: what
// ("etc" or "prune") went from which state to which, when and why (as the
// runtime store records it).
type Transition store.Transition
