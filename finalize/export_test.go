package finalize

// Exported for the external parity tests (package finalize_test), which
// import test/harness: kept outside package finalize so that the harness
// may one day import this package without an import cycle.
var (
	Snapshot      = snapshot
	DiffSnapshots = diffSnapshots
)

type SnapshotOpts = snapshotOpts
type Node = node

func NewSnapshotOpts(noMtime bool) SnapshotOpts { return snapshotOpts{noMtime: noMtime} }
