package test

// Parity tests for the rows of the table of ostree-version-dependent
// choices (ostree/features.go): each runs against every oracle and expects
// what that oracle's version chooses, so that the wrong choice fails.

import (
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// oracleChoices are the choices of the ostree the booted host runs.
func oracleChoices(t *testing.T, h *harness.BootedHost) ostree.Choices {
	t.Helper()
	v, err := ostree.ParseVersion([]byte(h.MustShell("ostree --version")))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("oracle: ostree %s", v.Raw)
	return ostree.ChoicesFor(v)
}

// A fifo inside an added directory and a device inside a directory that
// replaced a file, made before or after staging, through the whole
// lifecycle (stage, seal, finalize-staged): from 2024.2 ostree skips them
// and our takeover must give its etc; 2022.7 fails the finalization, and
// we fall back (at stage, or at the seal for edits made after staging) so
// ostree fails the same way.
func TestEtcParitySpecialInCopiedDir(t *testing.T) {
	harness.ForEachOracle(t, testEtcParitySpecialInCopiedDir)
}

func testEtcParitySpecialInCopiedDir(t *testing.T) {
	e := newEtcEnv(t, nil, nil)
	skip := oracleChoices(t, e.base).EtcMergeSkipsSpecialInDirs
	const script = `mkdir -p /etc/fdir/sub && echo f > /etc/fdir/f && mkfifo /etc/fdir/sub/p && rm /etc/todir && mkdir /etc/todir && mknod /etc/todir/null c 1 3 && echo in > /etc/todir/inside`
	const ostreeFails = "Cannot copy non-regular/non-symlink file"
	t.Run("before", func(t *testing.T) {
		r := etcRun{before: script, wantTakeover: true}
		if !skip {
			r = etcRun{before: script, stageFails: "cannot copy non-regular/non-symlink file", finalizeFails: ostreeFails}
		}
		res := e.withT(t).run(t, r)
		if skip && res.stage.Etc.State != "precomputed" {
			t.Fatalf("stage: %+v", res.stage.Etc)
		}
	})
	t.Run("after", func(t *testing.T) {
		r := etcRun{after: script, wantTakeover: true}
		if !skip {
			r.preFallback, r.finalizeFails = true, ostreeFails
		}
		e.withT(t).run(t, r)
	})
}
