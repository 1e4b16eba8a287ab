package ostree

import "github.com/ostree-prefinalize/ostree-prefinalize/ostree/gvariant"

// The GVariant codec lives in ostree/gvariant; these names keep the API of
// this package (used by finalize/, prune/ and test/) unchanged.
type (
	Variant      = gvariant.Variant
	VariantEntry = gvariant.VariantEntry
	VariantError = gvariant.VariantError
)

// MaxMetadataSize is gvariant.MaxMetadataSize.
const MaxMetadataSize = gvariant.MaxMetadataSize

var (
	NewVariant    = gvariant.NewVariant
	ValidType     = gvariant.ValidType
	DecodeVardict = gvariant.DecodeVardict
	EncodeVardict = gvariant.EncodeVardict
	LookupEntry   = gvariant.LookupEntry
	EncodeString  = gvariant.EncodeString
	EncodeStrings = gvariant.EncodeStrings
	EncodeBool    = gvariant.EncodeBool
)

// checksumOf reads an "ay" that must hold a 32-byte binary SHA-256.
func checksumOf(v Variant) (Checksum, error) {
	c, err := v.Checksum()
	return Checksum(c), err
}
