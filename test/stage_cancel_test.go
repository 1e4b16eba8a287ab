package test

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/finalize"
	"github.com/ostree-prefinalize/ostree-prefinalize/store"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// TestStageCancelledFallsBack: stage's context is cancelled in the middle
// of its merge, as SIGTERM does at a poweroff right after staging
// (TestNspawnBoot's stage-then-poweroff found it under systemd-nspawn).
// The fallback must still restore ostree's staged state and reset the
// staged etc, not lock finalization (which silently skipped the update),
// and the real finalize-staged then gives ostree's own /etc.
func TestStageCancelledFallsBack(t *testing.T) {
	shape := harness.Shape{Files: 40, Dirs: 6, Depth: 2, MinSize: 16, MaxSize: 400, Symlinks: 4}
	f := newFaultEtcEnv(t, shape, nil)
	want := f.oracle(t, nil)
	orig := stagedBytes(t, f.b)
	c := f.b.Copy(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fsys := finalize.RealFS()
	write, writes := fsys.WriteFileAtomic, 0
	fsys.WriteFileAtomic = func(dir *os.File, name string, src io.Reader, a finalize.Attr) error {
		if writes++; writes == 2 {
			cancel() // the SIGTERM arrives while the merge writes
		}
		return write(dir, name, src, a)
	}
	r, err := finalize.Stage(ctx, inProcess(t, c, fsys))
	t.Logf("stage: %+v, %v", r, err)
	if writes < 2 {
		t.Fatalf("the merge wrote %d files: cancelled nothing", writes)
	}
	st := statusOf(t, c)
	if st.Etc.State != store.EtcFallback || st.Etc.Takeover || strings.Contains(st.Etc.Reason, "fallback failed") {
		t.Fatalf("status after a cancelled stage: %+v", st.Etc)
	}
	if st.Staged == nil || st.Staged.Locked {
		t.Fatalf("finalization locked after a cancelled stage: %+v", st.Staged)
	}
	if got := stagedBytes(t, c); string(got) != string(orig) {
		t.Fatalf("ostree's staged state not restored byte for byte")
	}
	res, err := c.FinalizeStaged(context.Background())
	if err != nil || !res.Merged {
		t.Fatalf("finalize-staged after the fallback: merged %v, %v\n%s", res.Merged, err, res.Stderr)
	}
	if diff := newEtcOf(t, c, f.staged).Diff(want); diff != nil {
		t.Fatalf("/etc differs from ostree's own merge:\n%s", strings.Join(diff, "\n"))
	}
}
