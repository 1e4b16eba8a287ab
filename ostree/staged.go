package ostree

// The staged-deployment state file, /run/ostree/staged-deployment: an a{sv}
// written by ostree_sysroot_stage_tree_with_options and read back by
// _ostree_sysroot_reload_staged (ostree-sysroot.c) and
// _ostree_sysroot_finalize_staged_inner (ostree-sysroot-deploy.c):
//
//	"target"            a{sv}  the staged deployment (serialize_deployment_to_variant)
//	"merge-deployment"  a{sv}  the deployment whose /etc is merged; absent: no merge
//	"kargs"             as     override kernel arguments; absent: the merge deployment's
//	"overlay-initrds"   as     overlay initrd checksums
//	"locked"            b      newer ostree: finalization is locked
//
// A deployment a{sv} holds "name" = "<checksum>.<serial>", "osname" and
// "bootcsum", all "s".
//
// GLib's dict lookup treats a key of the wrong type as absent and keeps the
// last of duplicate keys; here both are errors, so we never act on a file
// that ostree might read differently.

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrNoStagedTarget is wrapped (with ErrCorrupt) when the staged state has
// no "target" key. ostree then treats the system as having nothing staged.
var ErrNoStagedTarget = errors.New("staged state has no target")

// ErrNoMergeDeployment is returned by EncodeTakeover when the state has no
// "merge-deployment": ostree does no /etc merge, so there is nothing to take over.
var ErrNoMergeDeployment = errors.New("staged state has no merge-deployment")

// DeploymentID identifies a deployment as the staged state records it.
type DeploymentID struct {
	OSName   string
	Checksum Checksum
	Serial   int
	BootCsum string
}

// Name is the deployment's "<checksum>.<serial>" (its deploy directory name).
func (d DeploymentID) Name() string { return d.Checksum.String() + "." + strconv.Itoa(d.Serial) }

// StagedState is the decoded staged-deployment file.
type StagedState struct {
	Raw            []byte        // the file's bytes (a copy); Entries' values alias it
	Target         DeploymentID  // "target"
	Merge          *DeploymentID // "merge-deployment"; nil when absent
	Kargs          []string      // "kargs"
	HasKargs       bool          // whether "kargs" is present (it may be present and empty)
	OverlayInitrds []string      // "overlay-initrds"
	Locked         bool          // "locked" (newer ostree); false when absent
	Entries        []VariantEntry
}

// DecodeStagedState decodes the staged state file. Unknown keys are kept in
// Entries verbatim. Errors wrap ErrCorrupt and name the key.
func DecodeStagedState(b []byte) (*StagedState, error) {
	raw := bytes.Clone(b)
	entries, err := DecodeVardict(raw)
	if err != nil {
		return nil, fmt.Errorf("staged state: %w", err)
	}
	s := &StagedState{Raw: raw, Entries: entries}
	haveTarget := false
	for _, e := range entries {
		switch e.Key {
		case "target", "merge-deployment":
			if e.Type != "a{sv}" {
				return nil, stagedTypeErr(e, "a{sv}")
			}
			d, err := decodeDeploymentID(e.Value)
			if err != nil {
				return nil, fmt.Errorf("staged state: %s: %w", e.Key, err)
			}
			if e.Key == "target" {
				s.Target, haveTarget = d, true
			} else {
				s.Merge = &d
			}
		case "kargs", "overlay-initrds":
			if e.Type != "as" {
				return nil, stagedTypeErr(e, "as")
			}
			v, err := e.Variant()
			if err == nil {
				var ss []string
				if ss, err = v.Strings(); err == nil && e.Key == "kargs" {
					s.Kargs, s.HasKargs = ss, true
				} else if err == nil {
					s.OverlayInitrds = ss
				}
			}
			if err != nil {
				return nil, fmt.Errorf("staged state: %s: %w", e.Key, err)
			}
		case "locked":
			if e.Type != "b" {
				return nil, stagedTypeErr(e, "b")
			}
			v, err := e.Variant()
			if err == nil {
				s.Locked, err = v.Bool()
			}
			if err != nil {
				return nil, fmt.Errorf("staged state: locked: %w", err)
			}
		}
	}
	if !haveTarget {
		return nil, fmt.Errorf("staged state: %w: %w", ErrNoStagedTarget, ErrCorrupt)
	}
	return s, nil
}

func stagedTypeErr(e VariantEntry, want string) error {
	return fmt.Errorf("staged state: key %q has type %q, want %q: %w", e.Key, e.Type, want, ErrCorrupt)
}

// decodeDeploymentID reads a deployment a{sv} (already normal: it came out
// of a checked dictionary). Keys other than name, osname and bootcsum are
// ignored, as ostree ignores them.
func decodeDeploymentID(b []byte) (DeploymentID, error) {
	var d DeploymentID
	entries, err := DecodeVardict(b)
	if err != nil {
		return d, err
	}
	get := func(key string) (string, error) {
		e, ok := LookupEntry(entries, key)
		if !ok {
			return "", fmt.Errorf("missing key %q: %w", key, ErrCorrupt)
		}
		if e.Type != "s" {
			return "", fmt.Errorf("key %q has type %q, want \"s\": %w", key, e.Type, ErrCorrupt)
		}
		v, err := e.Variant()
		if err != nil {
			return "", err
		}
		return v.Str()
	}
	name, err := get("name")
	if err != nil {
		return d, err
	}
	if d.Checksum, d.Serial, err = ParseDeployName(name); err != nil {
		return d, err
	}
	if d.OSName, err = get("osname"); err != nil {
		return d, err
	}
	if d.OSName == "" || d.OSName == "." || d.OSName == ".." || strings.ContainsRune(d.OSName, '/') {
		// it becomes a path component: ostree/deploy/OSNAME
		return d, fmt.Errorf("osname %q is not a single path component: %w", truncate(d.OSName), ErrCorrupt)
	}
	if d.BootCsum, err = get("bootcsum"); err != nil {
		return d, err
	}
	if _, err := ParseChecksum(d.BootCsum); err != nil {
		// ostree's boot checksum is a SHA-256 hex digest; it becomes a path component under /boot
		return d, fmt.Errorf("bootcsum: %w", err)
	}
	return d, nil
}

// ParseDeployName parses a deployment name "<checksum>.<serial>" as
// _ostree_sysroot_parse_deploy_path_name does (^([0-9a-f]+)\.([0-9]+)$),
// additionally requiring the 64-digit checksum ostree always writes and a
// serial that fits ostree's int (ostree would silently truncate a larger one).
func ParseDeployName(name string) (Checksum, int, error) {
	dot := strings.IndexByte(name, '.')
	if dot < 0 {
		return Checksum{}, 0, fmt.Errorf("deploy name %q: want CHECKSUM.SERIAL: %w", truncate(name), ErrCorrupt)
	}
	c, err := ParseChecksum(name[:dot])
	if err != nil {
		return Checksum{}, 0, fmt.Errorf("deploy name %q: %w", truncate(name), err)
	}
	serialStr := name[dot+1:]
	if serialStr == "" {
		return Checksum{}, 0, fmt.Errorf("deploy name %q: empty serial: %w", truncate(name), ErrCorrupt)
	}
	for i := 0; i < len(serialStr); i++ {
		if serialStr[i] < '0' || serialStr[i] > '9' {
			return Checksum{}, 0, fmt.Errorf("deploy name %q: serial is not decimal digits: %w", truncate(name), ErrCorrupt)
		}
	}
	serial, err := strconv.ParseInt(serialStr, 10, 32)
	if err != nil {
		return Checksum{}, 0, fmt.Errorf("deploy name %q: serial out of range: %w", truncate(name), ErrCorrupt)
	}
	return c, int(serial), nil
}

// EncodeTakeover returns the state that makes ostree skip its /etc merge:
// the same dictionary without "merge-deployment". When the state has no
// "kargs", a "kargs" entry holding kargs takes the place of
// "merge-deployment" (as ostree itself would have written it had it been
// given those kargs and no merge deployment); kargs must then be non-nil
// (an empty, non-nil slice writes an empty list). When "kargs" is present,
// kargs is ignored. Every other entry keeps its position and bytes.
// It fails with ErrNoMergeDeployment when there is no merge deployment.
func (s *StagedState) EncodeTakeover(kargs []string) ([]byte, error) {
	if s.Merge == nil {
		return nil, ErrNoMergeDeployment
	}
	if !s.HasKargs && kargs == nil {
		return nil, errors.New("staged state takeover: no kargs given to replace the merge deployment's")
	}
	out := make([]VariantEntry, 0, len(s.Entries))
	for _, e := range s.Entries {
		if e.Key != "merge-deployment" {
			out = append(out, e)
			continue
		}
		if !s.HasKargs {
			for _, k := range kargs {
				if strings.IndexByte(k, 0) >= 0 {
					return nil, fmt.Errorf("staged state takeover: karg %q contains NUL", k)
				}
			}
			out = append(out, VariantEntry{Key: "kargs", Type: "as", Value: EncodeStrings(kargs)})
		}
	}
	b, err := EncodeVardict(out)
	if err != nil {
		return nil, fmt.Errorf("staged state takeover: %w", err)
	}
	// Read our own output back: it must be a valid state with the same
	// target and no merge deployment, or we do nothing.
	chk, err := DecodeStagedState(b)
	if err != nil {
		return nil, fmt.Errorf("staged state takeover: re-reading the result: %w", err)
	}
	if chk.Target != s.Target || chk.Merge != nil || !chk.HasKargs {
		return nil, errors.New("staged state takeover: re-read result differs from the intended change")
	}
	return b, nil
}

// Reapply returns ostree's state s as ostree would have it had it made to
// s the change it made when it rewrote our takeover of s: disk is what is
// on disk now, a takeover of s (the same target, no "merge-deployment")
// that ostree rewrote whole, as ostree_sysroot_change_finalization does
// for `ostree admin lock-finalization [--unlock]` (it reads the file, sets
// "locked" and writes every key back, possibly in another order). Every
// key of s keeps its position, with disk's value when disk has it, and is
// dropped when disk no longer has it; "merge-deployment" stays s's; keys
// only disk has follow, except the "kargs" EncodeTakeover put in place of
// the merge deployment when s had none. When nothing changed the result is
// s's bytes. Unknown keys (newer ostree's "bootconfig-extra", say) survive
// either way.
func (s *StagedState) Reapply(disk *StagedState) ([]byte, error) {
	if s.Merge == nil || disk.Merge != nil || disk.Target != s.Target {
		return nil, errors.New("staged state: not a takeover of this state")
	}
	onDisk := map[string]VariantEntry{}
	for _, e := range disk.Entries {
		onDisk[e.Key] = e
	}
	out := make([]VariantEntry, 0, len(disk.Entries)+1)
	seen := map[string]bool{}
	changed := false
	for _, e := range s.Entries {
		seen[e.Key] = true
		if e.Key == "merge-deployment" {
			out = append(out, e)
			continue
		}
		d, ok := onDisk[e.Key]
		if !ok {
			changed = true
			continue
		}
		if d.Type != e.Type || !bytes.Equal(d.Value, e.Value) {
			changed = true
		}
		out = append(out, d)
	}
	for _, d := range disk.Entries {
		if seen[d.Key] || d.Key == "kargs" && !s.HasKargs {
			continue
		}
		out = append(out, d)
		changed = true
	}
	if !changed {
		return bytes.Clone(s.Raw), nil
	}
	b, err := EncodeVardict(out)
	if err != nil {
		return nil, fmt.Errorf("staged state: reapplying ostree's change: %w", err)
	}
	chk, err := DecodeStagedState(b)
	if err != nil {
		return nil, fmt.Errorf("staged state: reapplying ostree's change: re-reading the result: %w", err)
	}
	if chk.Target != s.Target || chk.Merge == nil || *chk.Merge != *s.Merge {
		return nil, errors.New("staged state: reapplying ostree's change: re-read result differs from the intended change")
	}
	return b, nil
}
