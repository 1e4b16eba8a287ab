// Package msgid holds the journal MESSAGE_IDs of ostree-prefinalize's
// notable events. They are fixed, random 128-bit ids (as systemd's catalog
// wants: `journalctl MESSAGE_ID=...` finds every such event on every
// machine, whatever the message text says); never change one, only add.
//
// A log call marks its record with slog.String(msgid.Key, msgid.X); the
// command's journal handler turns that attribute into the MESSAGE_ID field.
// The ids are listed in README.md ("Monitoring").
package msgid

// Key is the slog attribute that carries a MESSAGE_ID.
const Key = "message_id"

const (
	// Stage: stage precomputed for a staged deployment.
	Stage = "ea77ddca0531a9bb4551c15e54dfd76c"
	// Takeover: ostree's /etc merge was taken over (staged state rewritten).
	Takeover = "c523af121acf1f8bf9882db5aa4f2c30"
	// Fallback: ostree's own staged state restored; ostree merges /etc itself.
	Fallback = "bd1d02da2569eb320906f1ffcf53da02"
	// Seal: finalize --pre sealed the /etc merge before ostree's finalization.
	Seal = "13e8dbc93ef748d2f466213a74116998"
	// PlanPersisted: finalize --post persisted the prune plan for next boot.
	PlanPersisted = "9368e6839801dd693c6cb2ab2533f96f"
	// CleanupDone: the persisted plan's objects were deleted.
	CleanupDone = "2c79743dce4e27b7ff64670fb981f442"
)

// All lists the ids with a short name, in lifecycle order (for docs and
// tests).
var All = []struct{ Name, ID string }{
	{"stage", Stage},
	{"takeover", Takeover},
	{"fallback", Fallback},
	{"seal", Seal},
	{"plan persisted", PlanPersisted},
	{"cleanup done", CleanupDone},
}
