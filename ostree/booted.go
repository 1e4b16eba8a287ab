package ostree

// <RunDir>/ostree-booted: ostree-prepare-root (2023.4 and later) writes
// there an a{sv} of what it did at boot (src/libotcore/otcore.h,
// OTCORE_RUN_BOOTED_KEY_*); older ostree, and dracut setups, leave the file
// empty. Only the keys we act on are read; the rest are ignored.

import (
	"fmt"
)

// BootedMeta is what ostree-prepare-root recorded about the running boot.
type BootedMeta struct {
	// TransientEtc is the overlay directory of a transient /etc
	// ("transient-etc", from prepare-root.conf [etc] transient=true,
	// otcore_mount_etc, 2024.x): /etc is an overlayfs of usr/etc with its
	// upper directory on /run, so edits of /etc never reach the
	// deployment's etc on disk and ostree's merge never sees them. ""
	// when /etc is the deployment's own etc.
	TransientEtc string
	// Composefs: the root is a composefs mount of the deployment's
	// .ostree.cfs ("composefs"). The deployment directory on disk still
	// holds the checkout ostree's merge reads, so nothing changes for us.
	Composefs bool
}

// DecodeBootedMeta decodes the file's bytes; an empty file is an empty
// BootedMeta. Errors wrap ErrCorrupt.
func DecodeBootedMeta(b []byte) (*BootedMeta, error) {
	m := &BootedMeta{}
	if len(b) == 0 {
		return m, nil
	}
	entries, err := DecodeVardict(b)
	if err != nil {
		return nil, fmt.Errorf("ostree-booted: %w", err)
	}
	for _, e := range entries {
		switch e.Key {
		case "transient-etc":
			if e.Type != "s" {
				return nil, fmt.Errorf("ostree-booted: transient-etc has type %q, want \"s\": %w", e.Type, ErrCorrupt)
			}
			v, err := e.Variant()
			if err == nil {
				m.TransientEtc, err = v.Str()
			}
			if err != nil {
				return nil, fmt.Errorf("ostree-booted: transient-etc: %w", err)
			}
			if m.TransientEtc == "" {
				// ostree writes the mkdtemp path; an empty one is
				// still a transient etc.
				m.TransientEtc = "(unnamed)"
			}
		case "composefs":
			m.Composefs = true
		}
	}
	return m, nil
}
