package lifecycle

// Hosts where the /etc merge is not ours to precompute, whatever the staged
// state says. We step aside: no merge, no takeover, and status says why;
// what happens at shutdown is ostree's (or bootc's) own behaviour.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// bootcComposefsStaged is where bootc's composefs-native backend (not
// ostree) records its staged deployment (bootc crates/lib/src/
// composefs_consts.rs: COMPOSEFS_TRANSIENT_STATE_DIR "/run/composefs",
// COMPOSEFS_STAGED_DEPLOYMENT_FNAME "staged-deployment"); its own finalize
// unit (bootc_composefs/finalize.rs) merges /etc with crates/etc-merge.
func bootcComposefsStaged(runDir string) string {
	return filepath.Join(runDir, "composefs", "staged-deployment")
}

// bootcComposefsReason is why we step aside on a host whose update is
// staged by bootc's composefs backend; "" when none is.
func bootcComposefsReason(runDir string) string {
	p := bootcComposefsStaged(runDir)
	if _, err := os.Lstat(p); err != nil {
		return ""
	}
	return fmt.Sprintf("not taken over: bootc's composefs backend staged this update (%s); its own finalization merges /etc, not ostree's", p)
}

// transientEtcReason is why there is no /etc merge to take over on a host
// booted with a transient /etc (prepare-root.conf [etc] transient=true: an
// overlay of usr/etc whose upper directory is on /run, so edits never reach
// the deployment's etc on disk that ostree's merge reads); "" when /etc is
// the deployment's own. ostree-booted that cannot be read means doing less.
func transientEtcReason(runDir string) string {
	p := filepath.Join(runDir, "ostree-booted")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		return fmt.Sprintf("not taken over: cannot tell whether /etc is transient: %v", err)
	}
	m, err := ostree.DecodeBootedMeta(b)
	if err != nil {
		return fmt.Sprintf("not taken over: cannot tell whether /etc is transient: %s: %v", p, err)
	}
	if m.TransientEtc != "" {
		return fmt.Sprintf("not taken over: /etc is transient (etc.transient, overlay %s): its edits are never merged, ostree merges the deployment's etc on disk as it is", m.TransientEtc)
	}
	return ""
}

// stagedDirMissing: the staged deployment's directory does not exist
// (removed after staging). ostree's finalization fails on it; we do
// nothing that could change how.
func stagedDirMissing(sys *ostree.Sysroot) bool {
	if sys.Staged == nil {
		return false
	}
	_, err := os.Lstat(sys.DeploymentDir(sys.Staged))
	return errors.Is(err, os.ErrNotExist)
}
