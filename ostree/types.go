package ostree

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree/gvariant"
)

// ErrCorrupt is wrapped by every error that reports bytes read from disk
// that do not decode as ostree wrote them (truncated, oversized, garbage).
var ErrCorrupt = gvariant.ErrCorrupt

// ErrNotFound is wrapped when a file or object that must exist is absent.
var ErrNotFound = errors.New("not found")

// ObjectType is libostree's OstreeObjectType; the numeric values are ostree's.
type ObjectType uint8

const (
	ObjFile            ObjectType = 1 // .file (bare) or .filez (archive)
	ObjDirTree         ObjectType = 2 // .dirtree
	ObjDirMeta         ObjectType = 3 // .dirmeta
	ObjCommit          ObjectType = 4 // .commit
	ObjTombstoneCommit ObjectType = 5 // .tombstone-commit (ostree-core.h says .commit-tombstone; the code writes this)
	ObjCommitMeta      ObjectType = 6 // .commitmeta
	ObjPayloadLink     ObjectType = 7 // .payload-link
	ObjFileXattrs      ObjectType = 8 // .file-xattrs
	ObjFileXattrsLink  ObjectType = 9 // .file-xattrs-link
)

// String is ostree's name of the type as the loose-object suffix uses it,
// except that content objects are "file" whatever the repo mode.
func (t ObjectType) String() string {
	switch t {
	case ObjFile:
		return "file"
	case ObjDirTree:
		return "dirtree"
	case ObjDirMeta:
		return "dirmeta"
	case ObjCommit:
		return "commit"
	case ObjTombstoneCommit:
		return "tombstone-commit"
	case ObjCommitMeta:
		return "commitmeta"
	case ObjPayloadLink:
		return "payload-link"
	case ObjFileXattrs:
		return "file-xattrs"
	case ObjFileXattrsLink:
		return "file-xattrs-link"
	}
	return fmt.Sprintf("objtype(%d)", uint8(t))
}

// IsMeta reports whether objects of this type are metadata (GVariant) objects.
func (t ObjectType) IsMeta() bool { return t >= ObjDirTree && t <= ObjCommitMeta }

// Checksum is a SHA-256 object name. The zero value is not a valid object.
type Checksum [32]byte

// String is the 64-hex-digit lower-case form ostree uses in paths and refs.
func (c Checksum) String() string { return hex.EncodeToString(c[:]) }

// IsZero reports whether c is the zero value.
func (c Checksum) IsZero() bool { return c == Checksum{} }

// ParseChecksum accepts exactly 64 lower-case hex digits, as ostree's
// ostree_validate_checksum_string does.
func ParseChecksum(s string) (Checksum, error) {
	var c Checksum
	if len(s) != 64 {
		return c, fmt.Errorf("checksum %q: want 64 hex digits, have %d characters: %w", truncate(s), len(s), ErrCorrupt)
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= '0' && b <= '9' || b >= 'a' && b <= 'f') {
			return c, fmt.Errorf("checksum %q: not lower-case hex: %w", truncate(s), ErrCorrupt)
		}
	}
	if _, err := hex.Decode(c[:], []byte(s)); err != nil {
		return c, fmt.Errorf("checksum %q: %v: %w", truncate(s), err, ErrCorrupt)
	}
	return c, nil
}

// ChecksumFromBytes converts the 32 raw bytes ostree stores inside
// GVariant objects ("ay" of length 32).
func ChecksumFromBytes(b []byte) (Checksum, error) {
	var c Checksum
	if len(b) != 32 {
		return c, fmt.Errorf("binary checksum of %d bytes, want 32: %w", len(b), ErrCorrupt)
	}
	copy(c[:], b)
	return c, nil
}

// ObjectName names one object: what it is and its checksum.
type ObjectName struct {
	Checksum Checksum
	Type     ObjectType
}

func (o ObjectName) String() string { return o.Checksum.String() + "." + o.Type.String() }

// truncate shortens an untrusted string quoted in an error message.
var truncate = gvariant.Truncate
