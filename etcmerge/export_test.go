package etcmerge

// Exported for the external parity tests (package etcmerge_test), which
// import test/harness: kept outside package etcmerge so that the harness
// may one day import this package without an import cycle.
var (
	Snapshot      = snapTree
	DiffSnapshots = diffSnapshots
)

type SnapshotOpts = snapOpts
type Node = node

func NewSnapshotOpts(noMtime bool) SnapshotOpts { return snapOpts{noMtime: noMtime} }
