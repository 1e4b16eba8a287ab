package lifecycle

import (
	"fmt"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/store"
)

// The store's pending set is bounded: past MaxPendingPaths it is dropped
// and the mark that makes the next refresh (and the seal) reconcile the
// whole etc is set instead, so nothing dropped is lost.
func TestMarkPendingOverflow(t *testing.T) {
	cfg := Config{Sysroot: t.TempDir(), RunDir: t.TempDir()}
	if err := store.UpdateRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
		return tx.PutState(store.State{EtcState: store.EtcPrecomputed})
	}); err != nil {
		t.Fatal(err)
	}
	batch := func(from, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("svc/f%d", from+i))
		}
		return out
	}
	count := func() (int, bool, string) {
		var n int
		var applying bool
		var reason string
		if err := store.ViewRuntime(cfg.RunDir, func(tx *store.RuntimeTx) error {
			_, n = tx.Pending(1)
			applying = tx.Blob(blobApplying) != nil
			st, err := tx.State()
			reason = st.EtcReason
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n, applying, reason
	}
	// Batches of a watcher whose every apply fails: the set grows to the
	// bound, never past it.
	for i := 0; i < 3*MaxPendingPaths; i += 1000 {
		if err := MarkPending(cfg, batch(i, 1000)); err != nil {
			t.Fatal(err)
		}
		if n, _, _ := count(); n > MaxPendingPaths {
			t.Fatalf("after %d paths: %d pending, bound %d", i+1000, n, MaxPendingPaths)
		}
	}
	n, applying, reason := count()
	if !applying {
		t.Fatalf("pending set overflowed (%d left) without the whole-etc mark", n)
	}
	t.Logf("%d pending, reason %q", n, reason)
}
