// Package gvariant is a strict reader (and a small a{sv} writer) of GVariant
// serialized data, following GLib's gvariant-serialiser.c.
//
// GLib's own reader is tolerant: a child whose framing is wrong reads as a
// default value (empty string, empty array, the unit tuple). Bytes we read
// from disk decide what gets deleted or merged, so here every deviation from
// normal form is an error that says what is wrong and where, wrapping
// ErrCorrupt. ostree itself requires normal form for its metadata objects
// (validate_variant in ostree-core.c), and GLib's writer only produces normal
// form, so nothing ostree wrote is rejected.
//
// Everything is little-endian (ostree never writes byte-swapped variants).
// Variants are views: a Variant holds its type and a sub-slice of the input,
// so walking a container allocates nothing.
//
// ostree re-exports the names its callers use (ostree.VariantEntry,
// ostree.EncodeVardict, ...); ostree.ErrCorrupt is this package's ErrCorrupt.
package gvariant

// Longer than 500 lines on purpose: one codec: the reader of every GVariant
// type ostree writes and the a{sv} writer share the alignment and framing
// rules.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// MaxMetadataSize caps the size of any GVariant we decode: newer ostree's
// OSTREE_MAX_METADATA_SIZE (128 MiB; 2022.7 used 10 MiB). Anything larger was
// not written by ostree.
const MaxMetadataSize = 128 << 20

// ErrCorrupt is wrapped by every decoding error: the bytes are not a
// normal-form GVariant of the expected type. ostree.ErrCorrupt is the same
// value.
var ErrCorrupt = errors.New("corrupt")

// maxDepth is GLib's G_VARIANT_MAX_RECURSION_DEPTH: the deepest nesting of
// types and values GLib accepts.
const maxDepth = 128

// VariantError reports serialized data that is not a normal-form GVariant of
// the expected type. Path locates the bad value from the top ("[3]" is an
// array element or tuple member, "<v>" the content of a variant, "<m>" the
// content of a maybe). It unwraps to ErrCorrupt.
type VariantError struct {
	Type string // GVariant type string of the offending value
	Path string // where inside the top-level value; "" for the top level
	Msg  string // what is wrong
}

func (e *VariantError) Error() string {
	p := e.Path
	if p == "" {
		p = "top level"
	}
	return fmt.Sprintf("gvariant %s at %s: %s: %s", e.Type, p, e.Msg, ErrCorrupt)
}

// Unwrap makes errors.Is(err, ErrCorrupt) hold.
func (e *VariantError) Unwrap() error { return ErrCorrupt }

func verr(t *TypeInfo, format string, args ...any) error {
	ts := "?"
	if t != nil {
		ts = t.str
	}
	return &VariantError{Type: ts, Msg: fmt.Sprintf(format, args...)}
}

// InPath prefixes the location of a child error with seg, so that errors
// coming up from deep inside say where they happened.
func InPath(err error, seg string) error {
	var ve *VariantError
	if errors.As(err, &ve) {
		ve.Path = seg + ve.Path
	}
	return err
}

func idxSeg(i int) string { return fmt.Sprintf("[%d]", i) }

// TypeInfo is a parsed GVariant type.
type TypeInfo struct {
	str    string      // its type string
	kind   byte        // first character: b y n q i u x t h d s o g v m a ( {
	align  int         // alignment minus one (0, 1, 3 or 7), as GLib stores it
	fixed  int         // serialized size when fixed, 0 when variable
	depth  int         // GLib's type depth: 1 for basic types, 1+max(children) for containers
	elem   *TypeInfo   // element of m and a
	fields []*TypeInfo // members of ( and {
}

var basicTypes = map[byte]struct{ align, fixed int }{
	'b': {0, 1}, 'y': {0, 1}, 'n': {1, 2}, 'q': {1, 2}, 'i': {3, 4}, 'u': {3, 4},
	'h': {3, 4}, 'x': {7, 8}, 't': {7, 8}, 'd': {7, 8},
	's': {0, 0}, 'o': {0, 0}, 'g': {0, 0}, 'v': {7, 0},
}

// isBasic reports whether c is a basic type, the only kind allowed as a dict key.
func isBasic(c byte) bool { return strings.IndexByte("bynqiuxthdsog", c) >= 0 }

// parseOne parses one complete definite type starting at s[pos] and returns
// it and the position after it.
func parseOne(s string, pos, depth int) (*TypeInfo, int, error) {
	if depth > maxDepth {
		return nil, 0, fmt.Errorf("type string %q nests deeper than %d", Truncate(s), maxDepth)
	}
	if pos >= len(s) {
		return nil, 0, fmt.Errorf("type string %q is incomplete", Truncate(s))
	}
	c := s[pos]
	if b, ok := basicTypes[c]; ok {
		return &TypeInfo{str: s[pos : pos+1], kind: c, align: b.align, fixed: b.fixed, depth: 1}, pos + 1, nil
	}
	switch c {
	case 'm', 'a':
		e, end, err := parseOne(s, pos+1, depth+1)
		if err != nil {
			return nil, 0, err
		}
		return &TypeInfo{str: s[pos:end], kind: c, align: e.align, elem: e, depth: e.depth + 1}, end, nil
	case '(', '{':
		closer := byte(')')
		if c == '{' {
			closer = '}'
		}
		t := &TypeInfo{kind: c, depth: 1}
		p := pos + 1
		for {
			if p >= len(s) {
				return nil, 0, fmt.Errorf("type string %q: unclosed %q", Truncate(s), c)
			}
			if s[p] == closer {
				p++
				break
			}
			if c == '{' && len(t.fields) == 0 && !isBasic(s[p]) {
				return nil, 0, fmt.Errorf("type string %q: dict entry key must be a basic type", Truncate(s))
			}
			if c == '{' && len(t.fields) == 2 {
				return nil, 0, fmt.Errorf("type string %q: dict entry with more than two members", Truncate(s))
			}
			m, end, err := parseOne(s, p, depth+1)
			if err != nil {
				return nil, 0, err
			}
			t.fields = append(t.fields, m)
			p = end
		}
		if c == '{' && len(t.fields) != 2 {
			return nil, 0, fmt.Errorf("type string %q: dict entry needs a key and a value", Truncate(s))
		}
		t.str = s[pos:p]
		fixed, off := true, 0
		for _, m := range t.fields {
			if m.align > t.align {
				t.align = m.align
			}
			if m.depth+1 > t.depth {
				t.depth = m.depth + 1
			}
			if m.fixed == 0 {
				fixed = false
			}
			off = alignUp(off, m.align) + m.fixed
		}
		if fixed {
			if len(t.fields) == 0 {
				t.fixed = 1 // the unit tuple "()" is one zero byte
			} else {
				t.fixed = alignUp(off, t.align)
			}
		}
		return t, p, nil
	}
	return nil, 0, fmt.Errorf("type string %q: %q at %d is not a definite type", Truncate(s), c, pos)
}

func alignUp(off, alignMask int) int { return (off + alignMask) &^ alignMask }

var typeCache struct {
	sync.RWMutex
	m map[string]*TypeInfo
}

// lookupType parses (and caches) a type string that must be exactly one
// complete definite type.
func lookupType(s string) (*TypeInfo, error) {
	typeCache.RLock()
	t := typeCache.m[s]
	typeCache.RUnlock()
	if t != nil {
		return t, nil
	}
	_, end, err := parseOne(s, 0, 1)
	if err != nil {
		return nil, err
	}
	if end != len(s) {
		return nil, fmt.Errorf("type string %q is more than one type", Truncate(s))
	}
	s = strings.Clone(s)
	t, _, _ = parseOne(s, 0, 1) // re-parse so every str aliases the clone, not a caller's buffer
	typeCache.Lock()
	if typeCache.m == nil {
		typeCache.m = map[string]*TypeInfo{}
	}
	if len(typeCache.m) < 4096 { // bounded: type strings can come from untrusted data
		typeCache.m[s] = t
	}
	typeCache.Unlock()
	return t, nil
}

// lookupTypeBytes is lookupType for a type string found inside data; the
// cache hit does not allocate.
func lookupTypeBytes(b []byte) (*TypeInfo, error) {
	typeCache.RLock()
	t := typeCache.m[string(b)]
	typeCache.RUnlock()
	if t != nil {
		return t, nil
	}
	return lookupType(string(b))
}

// MustType parses a constant type string once (a decoder's package-level
// type); it panics on an invalid one.
func MustType(s string) *TypeInfo {
	t, err := lookupType(s)
	if err != nil {
		panic(err)
	}
	return t
}

// ValidType reports whether s is exactly one complete definite GVariant type.
func ValidType(s string) error {
	_, err := lookupType(s)
	return err
}

// Variant is a view of serialized GVariant data of a known type. The zero
// value is not usable; make one with NewVariant. Methods check the framing
// they read and fail with a *VariantError; Normal checks everything.
type Variant struct {
	t     *TypeInfo
	b     []byte
	depth int
}

// NewVariant views data as a serialized value of the given type. It checks
// the type string, the size cap and, for fixed-size types, the size; the
// content is checked as it is read (or all at once by Normal).
func NewVariant(typeString string, data []byte) (Variant, error) {
	t, err := lookupType(typeString)
	if err != nil {
		return Variant{}, &VariantError{Type: typeString, Msg: err.Error()}
	}
	return NewTyped(t, data)
}

// NewTyped is NewVariant for a type parsed once with MustType.
func NewTyped(t *TypeInfo, data []byte) (Variant, error) {
	if len(data) > MaxMetadataSize {
		return Variant{}, verr(t, "%d bytes exceeds the %d-byte metadata limit", len(data), MaxMetadataSize)
	}
	if t.fixed != 0 && len(data) != t.fixed {
		return Variant{}, verr(t, "fixed-size value of %d bytes, want %d", len(data), t.fixed)
	}
	return Variant{t: t, b: data, depth: 0}, nil
}

// Type is the GVariant type string of v.
func (v Variant) Type() string { return v.t.str }

// Data is v's serialized bytes (a sub-slice of what NewVariant was given).
func (v Variant) Data() []byte { return v.b }

func (v Variant) child(t *TypeInfo, b []byte) Variant { return Variant{t: t, b: b, depth: v.depth + 1} }

// offsetSize is GLib's gvs_get_offset_size: framing offsets are as wide as
// needed to address every byte of the container.
func offsetSize(size int) int {
	switch {
	case size > 0xffffffff:
		return 8
	case size > 0xffff:
		return 4
	case size > 0xff:
		return 2
	case size > 0:
		return 1
	}
	return 0
}

// totalSize is GLib's gvs_calculate_total_size: the size the writer gives a
// container with this body and this many framing offsets. Normal form
// requires the container to have exactly this size (minimal offsets).
func totalSize(body, offsets int) int {
	switch {
	case body+offsets <= 0xff:
		return body + offsets
	case body+2*offsets <= 0xffff:
		return body + 2*offsets
	case body+4*offsets <= 0xffffffff:
		return body + 4*offsets
	}
	return body + 8*offsets
}

func readOffset(b []byte, w int) int {
	switch w {
	case 0: // a zero-size container has zero-width offsets, read as 0 (as GLib does)
		return 0
	case 1:
		return int(b[0])
	case 2:
		return int(binary.LittleEndian.Uint16(b))
	case 4:
		return int(binary.LittleEndian.Uint32(b))
	}
	u := binary.LittleEndian.Uint64(b)
	if u > uint64(MaxMetadataSize) { // far beyond any container we accept; keep int conversion safe
		return MaxMetadataSize + 1
	}
	return int(u)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ArrayFrame decodes the framing of an array of variable-size elements:
// the number of elements, where the offset table starts, and the offset width.
func (v Variant) ArrayFrame() (n, dataSize, w int, err error) {
	size := len(v.b)
	if size == 0 {
		return 0, 0, 0, nil
	}
	w = offsetSize(size)
	last := readOffset(v.b[size-w:], w)
	if last > size {
		return 0, 0, 0, verr(v.t, "last framing offset %d beyond the array's %d bytes", last, size)
	}
	table := size - last
	if table%w != 0 {
		return 0, 0, 0, verr(v.t, "framing offset table of %d bytes is not a multiple of the offset width %d", table, w)
	}
	n = table / w
	if n == 0 {
		return 0, 0, 0, verr(v.t, "array of %d bytes has no framing offsets", size)
	}
	if totalSize(last, n) != size {
		return 0, 0, 0, verr(v.t, "framing offsets are %d bytes wide, wider than needed for %d elements in %d bytes", w, n, last)
	}
	return n, last, w, nil
}

// Len is the number of children of an array, maybe, tuple, dict entry or
// variant (1).
func (v Variant) Len() (int, error) {
	switch v.t.kind {
	case 'a':
		if v.t.elem.fixed != 0 {
			if len(v.b)%v.t.elem.fixed != 0 {
				return 0, verr(v.t, "%d bytes is not a multiple of the element size %d", len(v.b), v.t.elem.fixed)
			}
			return len(v.b) / v.t.elem.fixed, nil
		}
		n, _, _, err := v.ArrayFrame()
		return n, err
	case 'm':
		_, ok, err := v.Maybe()
		if ok {
			return 1, err
		}
		return 0, err
	case '(', '{':
		return len(v.t.fields), nil
	case 'v':
		return 1, nil
	}
	return 0, verr(v.t, "not a container")
}

// Index is element i of an array. Out-of-range i is an error, not a panic.
func (v Variant) Index(i int) (Variant, error) {
	if v.t.kind != 'a' {
		return Variant{}, verr(v.t, "Index on a non-array")
	}
	if v.depth+1 >= maxDepth {
		return Variant{}, verr(v.t, "nested deeper than %d", maxDepth)
	}
	e := v.t.elem
	if e.fixed != 0 {
		n, err := v.Len()
		if err != nil {
			return Variant{}, err
		}
		if i < 0 || i >= n {
			return Variant{}, verr(v.t, "index %d out of range [0,%d)", i, n)
		}
		return v.child(e, v.b[i*e.fixed:(i+1)*e.fixed]), nil
	}
	n, dataSize, w, err := v.ArrayFrame()
	if err != nil {
		return Variant{}, err
	}
	if i < 0 || i >= n {
		return Variant{}, verr(v.t, "index %d out of range [0,%d)", i, n)
	}
	return v.VarElem(i, dataSize, w)
}

// VarElem is element i of an array of variable-size elements, given its frame.
func (v Variant) VarElem(i, dataSize, w int) (Variant, error) {
	start := 0
	if i > 0 {
		prev := readOffset(v.b[dataSize+(i-1)*w:], w)
		start = alignUp(prev, v.t.elem.align)
		if prev > dataSize || start > dataSize {
			return Variant{}, InPath(verr(v.t, "element starts at %d, beyond the data end %d", start, dataSize), idxSeg(i))
		}
		if !allZero(v.b[prev:start]) {
			return Variant{}, InPath(verr(v.t, "non-zero padding before element"), idxSeg(i))
		}
	}
	end := readOffset(v.b[dataSize+i*w:], w)
	if end < start || end > dataSize {
		return Variant{}, InPath(verr(v.t, "element spans [%d,%d), outside [%d,%d)", start, end, start, dataSize), idxSeg(i))
	}
	c := v.child(v.t.elem, v.b[start:end])
	return c, nil
}

// Fields appends the members of a tuple or dict entry to dst, checking the
// whole tuple's framing once (padding, ordered offsets, no gaps, minimal
// offset width). Pass a stack array's slice to avoid allocation.
func (v Variant) Fields(dst []Variant) ([]Variant, error) {
	t := v.t
	if t.kind != '(' && t.kind != '{' {
		return dst, verr(t, "Fields on a non-tuple")
	}
	if v.depth+1 >= maxDepth {
		return dst, verr(t, "nested deeper than %d", maxDepth)
	}
	b := v.b
	size := len(b)
	if t.fixed != 0 && size != t.fixed {
		return dst, verr(t, "fixed-size tuple of %d bytes, want %d", size, t.fixed)
	}
	w := offsetSize(size)
	optr, off, nOff := size, 0, 0
	last := len(t.fields) - 1
	for i, m := range t.fields {
		start := alignUp(off, m.align)
		if start > optr {
			return dst, InPath(verr(t, "member starts at %d, beyond the data end %d", start, optr), idxSeg(i))
		}
		if !allZero(b[off:start]) {
			return dst, InPath(verr(t, "non-zero padding before member"), idxSeg(i))
		}
		var end int
		switch {
		case m.fixed != 0:
			end = start + m.fixed
		case i == last:
			end = optr
		default:
			if optr-w < start {
				return dst, InPath(verr(t, "framing offset table overlaps member data"), idxSeg(i))
			}
			optr -= w
			nOff++
			end = readOffset(b[optr:], w)
		}
		if end < start || end > optr {
			return dst, InPath(verr(t, "member spans [%d,%d), outside [%d,%d)", start, end, start, optr), idxSeg(i))
		}
		dst = append(dst, v.child(m, b[start:end]))
		off = end
	}
	if t.fixed != 0 {
		if len(t.fields) == 0 {
			if b[0] != 0 {
				return dst, verr(t, "unit tuple byte is not zero")
			}
			off = 1
		}
		if !allZero(b[off:]) {
			return dst, verr(t, "non-zero trailing padding")
		}
		return dst, nil
	}
	if off != optr {
		return dst, verr(t, "%d unused bytes between the last member and the framing offsets", optr-off)
	}
	if nOff > 0 && totalSize(optr, nOff) != size {
		return dst, verr(t, "%d framing offsets of width %d do not fit a %d-byte tuple minimally", nOff, w, size)
	}
	return dst, nil
}

// Field is member i of a tuple or dict entry (checking the whole tuple).
func (v Variant) Field(i int) (Variant, error) {
	var buf [8]Variant
	f, err := v.Fields(buf[:0])
	if err != nil {
		return Variant{}, err
	}
	if i < 0 || i >= len(f) {
		return Variant{}, verr(v.t, "member %d out of range [0,%d)", i, len(f))
	}
	return f[i], nil
}

// Unbox is the content of a variant ("v"): the value, then a zero byte,
// then exactly one definite type string.
func (v Variant) Unbox() (Variant, error) {
	if v.t.kind != 'v' {
		return Variant{}, verr(v.t, "Unbox on a non-variant")
	}
	b := v.b
	if len(b) == 0 {
		return Variant{}, verr(v.t, "empty variant")
	}
	k := len(b) - 1
	for k > 0 && b[k] != 0 {
		k--
	}
	if b[k] != 0 {
		return Variant{}, verr(v.t, "no zero byte before the type string")
	}
	ct, err := lookupTypeBytes(b[k+1:])
	if err != nil {
		return Variant{}, verr(v.t, "bad content type: %v", err)
	}
	if v.depth+ct.depth >= maxDepth {
		return Variant{}, verr(v.t, "content nested deeper than %d", maxDepth)
	}
	if ct.fixed != 0 && k != ct.fixed {
		return Variant{}, InPath(verr(ct, "fixed-size value of %d bytes, want %d", k, ct.fixed), "<v>")
	}
	return v.child(ct, b[:k]), nil
}

// Maybe is the content of a maybe ("m") value and whether there is one.
func (v Variant) Maybe() (Variant, bool, error) {
	if v.t.kind != 'm' {
		return Variant{}, false, verr(v.t, "Maybe on a non-maybe")
	}
	if len(v.b) == 0 {
		return Variant{}, false, nil
	}
	if v.depth+1 >= maxDepth {
		return Variant{}, false, verr(v.t, "nested deeper than %d", maxDepth)
	}
	e := v.t.elem
	if e.fixed != 0 {
		if len(v.b) != e.fixed {
			return Variant{}, false, verr(v.t, "%d bytes: neither empty nor the element size %d", len(v.b), e.fixed)
		}
		return v.child(e, v.b), true, nil
	}
	if v.b[len(v.b)-1] != 0 {
		return Variant{}, false, verr(v.t, "missing the trailing zero byte")
	}
	return v.child(e, v.b[:len(v.b)-1]), true, nil
}

func (v Variant) want(kind byte) error {
	if v.t.kind != kind {
		return verr(v.t, "read as %q", kind)
	}
	return nil
}

// Bool reads a "b"; only 0 and 1 are normal.
func (v Variant) Bool() (bool, error) {
	if err := v.want('b'); err != nil {
		return false, err
	}
	if v.b[0] > 1 {
		return false, verr(v.t, "boolean byte %d", v.b[0])
	}
	return v.b[0] == 1, nil
}

// Byte reads a "y".
func (v Variant) Byte() (byte, error) {
	if err := v.want('y'); err != nil {
		return 0, err
	}
	return v.b[0], nil
}

// Uint32 reads a "u" (little-endian, as GVariant stores it).
func (v Variant) Uint32() (uint32, error) {
	if err := v.want('u'); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(v.b), nil
}

// Int32 reads an "i".
func (v Variant) Int32() (int32, error) {
	if err := v.want('i'); err != nil {
		return 0, err
	}
	return int32(binary.LittleEndian.Uint32(v.b)), nil
}

// Uint64 reads a "t".
func (v Variant) Uint64() (uint64, error) {
	if err := v.want('t'); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(v.b), nil
}

// Int64 reads an "x".
func (v Variant) Int64() (int64, error) {
	if err := v.want('x'); err != nil {
		return 0, err
	}
	return int64(binary.LittleEndian.Uint64(v.b)), nil
}

// StrBytes reads an "s", "o" or "g" without copying: the bytes before the
// terminating zero. They alias the input.
func (v Variant) StrBytes() ([]byte, error) {
	k := v.t.kind
	if k != 's' && k != 'o' && k != 'g' {
		return nil, verr(v.t, "read as a string")
	}
	b := v.b
	if len(b) == 0 {
		return nil, verr(v.t, "empty, missing the terminating zero byte")
	}
	if b[len(b)-1] != 0 {
		return nil, verr(v.t, "missing the terminating zero byte")
	}
	s := b[:len(b)-1]
	for i, c := range s {
		if c == 0 {
			return nil, verr(v.t, "zero byte inside the string at %d", i)
		}
	}
	if !utf8.Valid(s) {
		return nil, verr(v.t, "string is not valid UTF-8")
	}
	switch k {
	case 'o':
		if !validObjectPath(s) {
			return nil, verr(v.t, "not a valid object path")
		}
	case 'g':
		if !validSignature(string(s)) {
			return nil, verr(v.t, "not a valid signature")
		}
	}
	return s, nil
}

// Str reads an "s", "o" or "g" as a Go string.
func (v Variant) Str() (string, error) {
	b, err := v.StrBytes()
	return string(b), err
}

// ByteArray reads an "ay" without copying.
func (v Variant) ByteArray() ([]byte, error) {
	if v.t.kind != 'a' || v.t.elem.kind != 'y' {
		return nil, verr(v.t, "read as ay")
	}
	return v.b, nil
}

// Strings reads an "as".
func (v Variant) Strings() ([]string, error) {
	if v.t.str != "as" {
		return nil, verr(v.t, "read as as")
	}
	n, dataSize, w, err := v.ArrayFrame()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, n)
	for i := 0; i < n; i++ {
		e, err := v.VarElem(i, dataSize, w)
		if err != nil {
			return nil, err
		}
		s, err := e.Str()
		if err != nil {
			return nil, InPath(err, idxSeg(i))
		}
		out = append(out, s)
	}
	return out, nil
}

// Checksum reads an "ay" that must hold a 32-byte binary SHA-256.
func (v Variant) Checksum() ([32]byte, error) {
	var c [32]byte
	b, err := v.ByteArray()
	if err != nil {
		return c, err
	}
	if len(b) != len(c) {
		return c, verr(v.t, "checksum of %d bytes, want 32", len(b))
	}
	copy(c[:], b)
	return c, nil
}

func validObjectPath(s []byte) bool {
	if len(s) == 0 || s[0] != '/' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		case c == '/':
			if s[i-1] == '/' {
				return false
			}
		default:
			return false
		}
	}
	return len(s) == 1 || s[len(s)-1] != '/'
}

func validSignature(s string) bool {
	for i := 0; i < len(s); {
		_, end, err := parseOne(s, i, 1)
		if err != nil || strings.ContainsAny(s[i:end], "m") {
			// D-Bus signatures have no maybe type
			return false
		}
		i = end
	}
	return true
}

// Normal checks that v is entirely in GVariant normal form: every framing
// offset, every padding byte, every string, boolean and nested variant.
func (v Variant) Normal() error {
	if v.depth >= maxDepth {
		return verr(v.t, "nested deeper than %d", maxDepth)
	}
	switch v.t.kind {
	case 'b':
		_, err := v.Bool()
		return err
	case 's', 'o', 'g':
		_, err := v.StrBytes()
		return err
	case 'v':
		c, err := v.Unbox()
		if err != nil {
			return err
		}
		return InPath(c.Normal(), "<v>")
	case 'm':
		c, ok, err := v.Maybe()
		if err != nil || !ok {
			return err
		}
		return InPath(c.Normal(), "<m>")
	case 'a':
		e := v.t.elem
		if e.fixed != 0 {
			n, err := v.Len()
			if err != nil {
				return err
			}
			if e.kind != '(' && e.kind != '{' && e.kind != 'b' {
				return nil // plain numbers: every bit pattern is normal
			}
			for i := 0; i < n; i++ {
				if err := v.child(e, v.b[i*e.fixed:(i+1)*e.fixed]).Normal(); err != nil {
					return InPath(err, idxSeg(i))
				}
			}
			return nil
		}
		n, dataSize, w, err := v.ArrayFrame()
		if err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			c, err := v.VarElem(i, dataSize, w)
			if err != nil {
				return err
			}
			if err := c.Normal(); err != nil {
				return InPath(err, idxSeg(i))
			}
		}
		return nil
	case '(', '{':
		var buf [8]Variant
		f, err := v.Fields(buf[:0])
		if err != nil {
			return err
		}
		for i, c := range f {
			if err := c.Normal(); err != nil {
				return InPath(err, idxSeg(i))
			}
		}
		return nil
	}
	return nil // fixed-size numbers: any bit pattern
}

// VariantEntry is one entry of an a{sv} dictionary, kept opaque: the key,
// the type string of the value and the value's serialized bytes (without
// the variant framing). Re-encoding an entry reproduces its bytes exactly.
type VariantEntry struct {
	Key   string
	Type  string
	Value []byte
}

var typeVardict = MustType("a{sv}")

// DecodeVardict decodes an a{sv} dictionary in normal form, in file order.
// Keys must be unique (GLib's lookup would silently pick one). Values alias b.
func DecodeVardict(b []byte) ([]VariantEntry, error) {
	v, err := NewTyped(typeVardict, b)
	if err != nil {
		return nil, err
	}
	if err := v.Normal(); err != nil {
		return nil, err
	}
	return VardictEntries(v)
}

// VardictEntries lists the entries of an a{sv} view already checked by Normal.
func VardictEntries(v Variant) ([]VariantEntry, error) {
	n, err := v.Len()
	if err != nil {
		return nil, err
	}
	out := make([]VariantEntry, 0, n)
	seen := make(map[string]bool, n)
	for i := 0; i < n; i++ {
		e, err := v.Index(i)
		if err != nil {
			return nil, err
		}
		var buf [2]Variant
		f, err := e.Fields(buf[:0])
		if err != nil {
			return nil, InPath(err, idxSeg(i))
		}
		key, err := f[0].Str()
		if err != nil {
			return nil, InPath(InPath(err, "[0]"), idxSeg(i))
		}
		if seen[key] {
			return nil, InPath(verr(v.t, "duplicate key %q", Truncate(key)), idxSeg(i))
		}
		seen[key] = true
		val, err := f[1].Unbox()
		if err != nil {
			return nil, InPath(InPath(err, "[1]"), idxSeg(i))
		}
		out = append(out, VariantEntry{Key: key, Type: val.t.str, Value: val.b})
	}
	return out, nil
}

// LookupEntry finds the entry with the given key.
func LookupEntry(entries []VariantEntry, key string) (VariantEntry, bool) {
	for _, e := range entries {
		if e.Key == key {
			return e, true
		}
	}
	return VariantEntry{}, false
}

// Variant views the entry's value.
func (e VariantEntry) Variant() (Variant, error) { return NewVariant(e.Type, e.Value) }

// EncodeVardict serializes entries as an a{sv} in the given order, exactly as
// GLib's g_variant_builder would for the same entries: each value keeps its
// bytes, so unchanged entries stay byte-identical. Each value must be in
// normal form for its type and keys must be unique, valid UTF-8 without NUL.
func EncodeVardict(entries []VariantEntry) ([]byte, error) {
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		if seen[e.Key] {
			return nil, fmt.Errorf("encode a{sv}: duplicate key %q", e.Key)
		}
		seen[e.Key] = true
		if strings.IndexByte(e.Key, 0) >= 0 || !utf8.ValidString(e.Key) {
			return nil, fmt.Errorf("encode a{sv}: key %q is not a valid GVariant string", e.Key)
		}
		v, err := e.Variant()
		if err != nil {
			return nil, fmt.Errorf("encode a{sv}: key %q: %w", e.Key, err)
		}
		if err := v.Normal(); err != nil {
			return nil, fmt.Errorf("encode a{sv}: key %q: %w", e.Key, err)
		}
	}
	var out []byte
	ends := make([]int, 0, len(entries))
	for _, e := range entries {
		for len(out)&7 != 0 { // dict entries {sv} are 8-aligned (the v member)
			out = append(out, 0)
		}
		out = appendEntry(out, e)
		ends = append(ends, len(out))
	}
	return appendOffsets(out, ends), nil
}

// appendEntry appends one {sv}: key, NUL, padding to 8, value, NUL, type,
// then the framing offset of the key's end.
func appendEntry(out []byte, e VariantEntry) []byte {
	start := len(out)
	out = append(out, e.Key...)
	out = append(out, 0)
	keyEnd := len(out) - start
	for (len(out)-start)&7 != 0 {
		out = append(out, 0)
	}
	out = append(out, e.Value...)
	out = append(out, 0)
	out = append(out, e.Type...)
	w := offsetSize(totalSize(len(out)-start, 1))
	return appendLE(out, keyEnd, w)
}

// appendOffsets appends the framing offsets of an array whose body is out.
func appendOffsets(out []byte, ends []int) []byte {
	if len(ends) == 0 {
		return out
	}
	w := offsetSize(totalSize(len(out), len(ends)))
	for _, e := range ends {
		out = appendLE(out, e, w)
	}
	return out
}

func appendLE(out []byte, x, w int) []byte {
	for i := 0; i < w; i++ {
		out = append(out, byte(uint64(x)>>(8*i)))
	}
	return out
}

// EncodeString serializes a GVariant "s".
func EncodeString(s string) []byte { return append([]byte(s), 0) }

// EncodeStrings serializes a GVariant "as" (g_variant_new_strv).
func EncodeStrings(ss []string) []byte {
	var out []byte
	ends := make([]int, 0, len(ss))
	for _, s := range ss {
		out = append(out, s...)
		out = append(out, 0)
		ends = append(ends, len(out))
	}
	return appendOffsets(out, ends)
}

// EncodeBool serializes a GVariant "b".
func EncodeBool(b bool) []byte {
	if b {
		return []byte{1}
	}
	return []byte{0}
}

// EncodeArray serializes an array of variable-size, 1-aligned elements
// (each already serialized), e.g. "as" or "a(say)".
func EncodeArray(elems [][]byte) []byte {
	var out []byte
	ends := make([]int, 0, len(elems))
	for _, e := range elems {
		out = append(out, e...)
		ends = append(ends, len(out))
	}
	return appendOffsets(out, ends)
}

// EncodeTuple serializes a tuple of variable-size, 1-aligned members (each
// already serialized), e.g. "(say)": the end of every member but the last
// is framed, in reverse order, after the body.
func EncodeTuple(parts ...[]byte) []byte {
	var body []byte
	var offs []int
	for i, p := range parts {
		body = append(body, p...)
		if i < len(parts)-1 {
			offs = append(offs, len(body))
		}
	}
	w := offsetSize(totalSize(len(body), len(offs)))
	for i := len(offs) - 1; i >= 0; i-- {
		body = appendLE(body, offs[i], w)
	}
	return body
}

// Truncate shortens an untrusted string quoted in an error message to 80
// bytes (ostree's messages use it too).
func Truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
