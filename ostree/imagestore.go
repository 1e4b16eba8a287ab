package ostree

// The container image store that ostree-rs-ext keeps inside an ostree
// repository (bootc's crates/ostree-ext, read at bootc 534c76e):
//
//   - container/store.rs: IMAGE_PREFIX "ostree/container/image" (ref_for_image:
//     one ref per pulled image, prefix_escape_for_ref of the ImageReference's
//     Display form, pointing at the image's merge commit);
//     LAYER_PREFIX "ostree/container/blob" (ref_for_blob_digest: one ref per
//     layer commit, the escaped layer digest); BASE_IMAGE_PREFIX
//     "ostree/container/baseimage"; the merge commit's metadata keys
//     META_MANIFEST_DIGEST "ostree.manifest-digest" and META_MANIFEST
//     "ostree.manifest" (manifest_data_from_commitmeta: both strings, the
//     manifest as OCI image-manifest JSON).
//   - container/deploy.rs: ORIGIN_CONTAINER "container-image-reference", the
//     key of a deployment origin's [origin] group naming its image as an
//     OstreeImageReference (deployment_origin_container).
//   - refescape.rs: escape_for_ref / unescape_for_ref.
//   - container/mod.rs (before bootc 1c0b6ec moved it to
//     containers-image-proxy, unchanged): ImageReference and
//     OstreeImageReference parsing and Display.
//
// Every decoder here reads bytes an unprivileged pull or a corrupt disk may
// have shaped; each is strict, and anything it refuses makes the caller do
// less (keep the image), never more.

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Ref prefixes of the image store, with their trailing slash.
const (
	ImageRefPrefix     = "ostree/container/image/"
	BlobRefPrefix      = "ostree/container/blob/"
	BaseImageRefPrefix = "ostree/container/baseimage/"
	// ContainerRefPrefix covers every ref of the image store: nothing
	// outside it is ever removed by image GC.
	ContainerRefPrefix = "ostree/container/"
)

// Commit metadata keys and the origin key of the image store.
const (
	MetaManifestDigest = "ostree.manifest-digest"
	MetaManifest       = "ostree.manifest"
	OriginContainer    = "container-image-reference"
)

// ErrImageStore is wrapped by every refusal of an image-store decoder.
var ErrImageStore = errors.New("invalid container image store data")

// maxRefLen bounds what the escaping decoders accept (ostree refs are file
// paths: PATH_MAX).
const maxRefLen = 4096

// EscapeRef is refescape.rs escape_for_ref: ASCII alphanumerics and '-'
// pass; '/' passes when it follows an alphanumeric and is not last; '_'
// becomes "__"; anything else becomes "_<uppercase hex of the code point>_".
// The empty string and NUL are refused.
func EscapeRef(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("escape ref: empty string: %w", ErrImageStore)
	}
	if !utf8.ValidString(s) {
		return "", fmt.Errorf("escape ref: invalid UTF-8: %w", ErrImageStore)
	}
	var b strings.Builder
	prevAlnum := false
	for i, c := range s {
		if c == 0 {
			return "", fmt.Errorf("escape ref: embedded NUL: %w", ErrImageStore)
		}
		alnum := c < utf8.RuneSelf && isAlnum(byte(c))
		hasNext := i+utf8.RuneLen(c) < len(s)
		switch {
		case alnum, c == '-':
			b.WriteRune(c)
		case c == '/' && prevAlnum && hasNext:
			b.WriteByte('/')
		case c == '_':
			b.WriteString("__")
		default:
			fmt.Fprintf(&b, "_%02X_", c)
		}
		prevAlnum = alnum
	}
	return b.String(), nil
}

// UnescapeRef is refescape.rs unescape_for_ref: it accepts exactly what
// that function accepts (including its leniencies: a '_' at the very end
// is dropped, a final escape may lack its closing '_', the hex may carry a
// '+' sign as Rust's from_str_radix allows) and refuses the rest: any
// character other than ASCII alphanumerics, '-', '/' and '_', bad hex, or a
// value that is no Unicode scalar.
func UnescapeRef(s string) (string, error) {
	if len(s) > maxRefLen {
		return "", fmt.Errorf("unescape ref: %d bytes: %w", len(s), ErrImageStore)
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isAlnum(c) || c == '-' || c == '/':
			b.WriteByte(c)
			i++
		case c == '_':
			i++
			if i == len(s) {
				continue // unescape_for_ref ignores a lone trailing '_'
			}
			if s[i] == '_' {
				b.WriteByte('_')
				i++
				continue
			}
			// Up to the next '_' (consumed) or the end.
			end := strings.IndexByte(s[i:], '_')
			var hex string
			if end < 0 {
				hex, i = s[i:], len(s)
			} else {
				hex, i = s[i:i+end], i+end+1
			}
			v, err := parseRustHexU32(hex)
			if err != nil {
				return "", fmt.Errorf("unescape ref %q: %w", truncate(s), err)
			}
			if (v >= 0xd800 && v <= 0xdfff) || v > utf8.MaxRune {
				return "", fmt.Errorf("unescape ref %q: U+%X is no character: %w", truncate(s), v, ErrImageStore)
			}
			b.WriteRune(rune(v))
		default:
			// Rust iterates chars: report the whole character.
			r, _ := utf8.DecodeRuneInString(s[i:])
			return "", fmt.Errorf("unescape ref %q: invalid character %q: %w", truncate(s), r, ErrImageStore)
		}
	}
	return b.String(), nil
}

// parseRustHexU32 is u32::from_str_radix(s, 16): an optional '+', then one
// or more hex digits (either case), no overflow. The characters reaching
// it are ASCII alphanumerics, '-' and '/' (the caller's filter), so a
// non-ASCII digit never occurs.
func parseRustHexU32(s string) (uint32, error) {
	d := strings.TrimPrefix(s, "+")
	if d == "" || d[0] == '+' || d[0] == '-' {
		return 0, fmt.Errorf("bad hex escape %q: %w", s, ErrImageStore)
	}
	v, err := strconv.ParseUint(d, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("bad hex escape %q: %w", s, ErrImageStore)
	}
	return uint32(v), nil
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// ImageReference is a container image reference with its transport, as
// ostree-ext's ImageReference: its String (Display) form is what the image
// ref escapes.
type ImageReference struct {
	Transport string // the serializable name: "registry", "oci", ...
	Name      string
}

// transportDisplay maps each transport's serializable name to its Display
// prefix (container/mod.rs: Display for Transport; a registry prints as
// "docker://").
var transportDisplay = map[string]string{
	"registry":           "docker://",
	"oci":                "oci:",
	"oci-archive":        "oci-archive:",
	"docker-archive":     "docker-archive:",
	"containers-storage": "containers-storage:",
	"dir":                "dir:",
	"docker-daemon":      "docker-daemon:",
}

// String is the Display form ("docker://quay.io/x:tag" for a registry).
func (r ImageReference) String() string { return transportDisplay[r.Transport] + r.Name }

// ParseImageReference is TryFrom<&str> for ImageReference: "transport:name"
// split at the first ':', transport one of the known names ("docker" is
// the registry, and then the name must start with "//", which is cut),
// name not empty.
func ParseImageReference(s string) (ImageReference, error) {
	t, name, ok := strings.Cut(s, ":")
	if !ok {
		return ImageReference{}, fmt.Errorf("image reference %q: missing ':': %w", truncate(s), ErrImageStore)
	}
	tr := t
	if t == "docker" {
		tr = "registry"
	}
	if _, known := transportDisplay[tr]; !known {
		return ImageReference{}, fmt.Errorf("image reference %q: unknown transport %q: %w", truncate(s), truncate(t), ErrImageStore)
	}
	if name == "" {
		return ImageReference{}, fmt.Errorf("image reference %q: empty name: %w", truncate(s), ErrImageStore)
	}
	if t == "docker" {
		rest, ok := strings.CutPrefix(name, "//")
		if !ok {
			return ImageReference{}, fmt.Errorf("image reference %q: missing // in docker://: %w", truncate(s), ErrImageStore)
		}
		name = rest
	}
	return ImageReference{Transport: tr, Name: name}, nil
}

// ParseOstreeImageReference is TryFrom<&str> for OstreeImageReference,
// returning only the image (the signature source does not name an image):
// "ostree-image-signed:IMG", "ostree-unverified-image:IMG",
// "ostree-unverified-registry:NAME" (= registry:NAME),
// "ostree-remote-registry:REMOTE:NAME" (= registry:NAME),
// "ostree-remote-image:REMOTE:IMG".
func ParseOstreeImageReference(s string) (ImageReference, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		return ImageReference{}, fmt.Errorf("ostree image reference %q: missing ':': %w", truncate(s), ErrImageStore)
	}
	switch scheme {
	case "ostree-image-signed", "ostree-unverified-image":
	case "ostree-unverified-registry":
		rest = "registry:" + rest
	case "ostree-remote-registry", "ostree-remote-image":
		_, r, ok := strings.Cut(rest, ":")
		if !ok {
			return ImageReference{}, fmt.Errorf("ostree image reference %q: missing second ':': %w", truncate(s), ErrImageStore)
		}
		rest = r
		if scheme == "ostree-remote-registry" {
			rest = "registry:" + r
		}
	default:
		return ImageReference{}, fmt.Errorf("ostree image reference %q: invalid scheme %q: %w", truncate(s), truncate(scheme), ErrImageStore)
	}
	return ParseImageReference(rest)
}

// ImageRefName is ref_for_image: the image store's ref for an image.
func ImageRefName(img ImageReference) (string, error) {
	e, err := EscapeRef(img.String())
	if err != nil {
		return "", err
	}
	return ImageRefPrefix + e, nil
}

// BlobRefName is ref_for_blob_digest: the image store's ref for a layer.
func BlobRefName(digest string) (string, error) {
	e, err := EscapeRef(digest)
	if err != nil {
		return "", err
	}
	return BlobRefPrefix + e, nil
}

// ImageOfRef decodes an image ref name (under ImageRefPrefix) as
// list_images and remove_undeployed_images do: unescape, then parse as an
// ImageReference.
func ImageOfRef(name string) (ImageReference, error) {
	rest, ok := strings.CutPrefix(name, ImageRefPrefix)
	if !ok {
		return ImageReference{}, fmt.Errorf("ref %q: not under %s: %w", truncate(name), ImageRefPrefix, ErrImageStore)
	}
	s, err := UnescapeRef(rest)
	if err != nil {
		return ImageReference{}, err
	}
	return ParseImageReference(s)
}

// DigestOfBlobRef decodes a layer ref name (under BlobRefPrefix) into the
// layer digest it names (gc_image_layers_impl: unprefix_unescape_ref).
func DigestOfBlobRef(name string) (string, error) {
	rest, ok := strings.CutPrefix(name, BlobRefPrefix)
	if !ok {
		return "", fmt.Errorf("ref %q: not under %s: %w", truncate(name), BlobRefPrefix, ErrImageStore)
	}
	return UnescapeRef(rest)
}

// ContainerImage returns the image a deployment's origin names
// (deployment_origin_container: [origin] container-image-reference parsed
// as an OstreeImageReference), and false when the origin names none. An
// origin value that does not parse is an error: ostree-ext's
// remove_undeployed_images then removes nothing, and neither may we. A
// value with a GKeyFile escape ('\') is refused rather than unescaped.
func (d *Deployment) ContainerImage() (ImageReference, bool, error) {
	v, ok := d.OriginFile.Value("origin", OriginContainer)
	if !ok {
		return ImageReference{}, false, nil
	}
	if strings.ContainsRune(v, '\\') {
		return ImageReference{}, false, fmt.Errorf("deployment %s: origin %s=%q: escapes not supported: %w", d, OriginContainer, truncate(v), ErrImageStore)
	}
	img, err := ParseOstreeImageReference(v)
	if err != nil {
		return ImageReference{}, false, fmt.Errorf("deployment %s: origin %s: %w", d, OriginContainer, err)
	}
	return img, true, nil
}

// ImageManifest is the part of an OCI image manifest the image GC reads:
// the layer digests, in order.
type ImageManifest struct {
	Layers []string
}

// maxManifestSize bounds a manifest; ostree bounds commit metadata far
// below this (OSTREE_MAX_METADATA_SIZE, 128 MiB) and real ones are a few
// kilobytes.
const maxManifestSize = 16 << 20

// DecodeImageManifest decodes the JSON of an OCI image manifest as
// oci-spec's ImageManifest deserializes it, strictly: schemaVersion (a
// number), config and layers must be present, every descriptor needs a
// mediaType, a size and a valid digest. Stricter than serde is safe
// (a manifest we refuse keeps every layer), laxer never.
func DecodeImageManifest(b []byte) (*ImageManifest, error) {
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("image manifest: %d bytes: %w", len(b), ErrImageStore)
	}
	type descriptor struct {
		MediaType *string `json:"mediaType"`
		Digest    *string `json:"digest"`
		Size      *int64  `json:"size"`
	}
	var m struct {
		SchemaVersion *uint32      `json:"schemaVersion"`
		Config        *descriptor  `json:"config"`
		Layers        []descriptor `json:"layers"`
	}
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("image manifest: invalid UTF-8: %w", ErrImageStore)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("image manifest: %v: %w", err, ErrImageStore)
	}
	if m.SchemaVersion == nil || m.Config == nil || m.Layers == nil {
		return nil, fmt.Errorf("image manifest: schemaVersion, config or layers missing: %w", ErrImageStore)
	}
	check := func(what string, d descriptor) error {
		if d.MediaType == nil || d.Digest == nil || d.Size == nil || *d.Size < 0 {
			return fmt.Errorf("image manifest: %s: mediaType, digest or size missing: %w", what, ErrImageStore)
		}
		return ValidDigest(*d.Digest)
	}
	if err := check("config", *m.Config); err != nil {
		return nil, err
	}
	out := &ImageManifest{Layers: make([]string, 0, len(m.Layers))}
	for i, l := range m.Layers {
		if err := check(fmt.Sprintf("layer %d", i), l); err != nil {
			return nil, err
		}
		out.Layers = append(out.Layers, *l.Digest)
	}
	return out, nil
}

// ValidDigest checks an OCI digest ("algorithm:encoded", image-spec
// descriptor.md grammar; sha256 and sha512 with their exact lengths of
// lowercase hex).
func ValidDigest(d string) error {
	alg, enc, ok := strings.Cut(d, ":")
	bad := func(why string) error {
		return fmt.Errorf("digest %q: %s: %w", truncate(d), why, ErrImageStore)
	}
	if !ok || alg == "" || enc == "" || len(d) > 1024 {
		return bad("want algorithm:encoded")
	}
	for i := 0; i < len(alg); i++ {
		c := alg[i]
		sep := c == '+' || c == '.' || c == '_' || c == '-'
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || sep) || (sep && (i == 0 || i == len(alg)-1 || isDigestSep(alg[i-1]))) {
			return bad("bad algorithm")
		}
	}
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if !(isAlnum(c) || c == '=' || c == '_' || c == '-') {
			return bad("bad encoded part")
		}
	}
	want := map[string]int{"sha256": 64, "sha512": 128}[alg]
	if want > 0 {
		if len(enc) != want {
			return bad("wrong length")
		}
		for i := 0; i < len(enc); i++ {
			if c := enc[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return bad("not lowercase hex")
			}
		}
	}
	return nil
}

func isDigestSep(c byte) bool { return c == '+' || c == '.' || c == '_' || c == '-' }

// ImageOfCommit reads an image merge commit's metadata as
// manifest_data_from_commitmeta does: isImage is whether the commit carries
// ostree.manifest-digest (list_container_deployment_manifests's test);
// when it does, both keys must be strings, the digest valid and the
// manifest decode, or the error says why.
func ImageOfCommit(c *Commit) (digest string, m *ImageManifest, isImage bool, err error) {
	e, ok := LookupEntry(c.Metadata, MetaManifestDigest)
	if !ok {
		return "", nil, false, nil
	}
	if e.Type != "s" {
		return "", nil, true, fmt.Errorf("commit metadata %s: type %q, want \"s\": %w", MetaManifestDigest, truncate(e.Type), ErrImageStore)
	}
	digest, ok = c.MetadataString(MetaManifestDigest)
	if !ok {
		return "", nil, true, fmt.Errorf("commit metadata %s: not a string: %w", MetaManifestDigest, ErrImageStore)
	}
	if err := ValidDigest(digest); err != nil {
		return "", nil, true, fmt.Errorf("commit metadata %s: %w", MetaManifestDigest, err)
	}
	js, ok := c.MetadataString(MetaManifest)
	if !ok {
		return "", nil, true, fmt.Errorf("commit metadata %s: missing or not a string: %w", MetaManifest, ErrImageStore)
	}
	m, err = DecodeImageManifest([]byte(js))
	if err != nil {
		return "", nil, true, err
	}
	return digest, m, true, nil
}
