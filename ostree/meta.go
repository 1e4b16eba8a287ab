package ostree

// Decoders of ostree's metadata objects (ostree-core.h):
//
//	commit  (a{sv}aya(say)sstayay)  metadata, parent, related, subject, body, timestamp, root tree, root meta
//	dirtree (a(say)a(sayay))        files (name, content checksum), dirs (name, dirtree, dirmeta)
//	dirmeta (uuua(ayay))            uid, gid, mode, xattrs
//
// Besides normal form they apply ostree's structural checks
// (ostree_validate_structureof_commit/dirtree/dirmeta): checksums are 32
// bytes, names are single path components, dirmeta modes are directories.
// ostree stores the integers uid, gid, mode and the commit timestamp
// big-endian (GUINT32_TO_BE / GUINT64_TO_BE) inside the little-endian
// GVariant; the decoded fields are host values.

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree/gvariant"
)

var (
	typeCommit  = gvariant.MustType("(a{sv}aya(say)sstayay)")
	typeDirTree = gvariant.MustType("(a(say)a(sayay))")
	typeDirMeta = gvariant.MustType("(uuua(ayay))")
)

// Commit is a decoded .commit object.
type Commit struct {
	Metadata  []VariantEntry // the a{sv}, in object order, values copied
	Parent    Checksum       // zero if none
	Subject   string
	Body      string
	Timestamp uint64 // seconds since the epoch
	RootTree  Checksum
	RootMeta  Checksum
}

// MetadataString returns the metadata value for key when it is an "s".
func (c *Commit) MetadataString(key string) (string, bool) {
	e, ok := LookupEntry(c.Metadata, key)
	if !ok || e.Type != "s" {
		return "", false
	}
	v, err := e.Variant()
	if err != nil {
		return "", false
	}
	s, err := v.Str()
	return s, err == nil
}

func fieldErr(obj, field string, err error) error {
	return fmt.Errorf("%s: %s: %w", obj, field, err)
}

// DecodeCommit decodes a commit object. Errors wrap ErrCorrupt and name the
// field.
func DecodeCommit(b []byte) (*Commit, error) {
	v, err := gvariant.NewTyped(typeCommit, b)
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	if err := v.Normal(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	var buf [8]Variant
	f, err := v.Fields(buf[:0])
	if err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	c := &Commit{}
	md, err := gvariant.VardictEntries(f[0])
	if err != nil {
		return nil, fieldErr("commit", "metadata", err)
	}
	for i := range md {
		if md[i].Key == "" {
			return nil, fieldErr("commit", "metadata", fmt.Errorf("empty key: %w", ErrCorrupt))
		}
		md[i].Value = bytes.Clone(md[i].Value)
	}
	c.Metadata = md
	if p := f[1].Data(); len(p) != 0 {
		if c.Parent, err = checksumOf(f[1]); err != nil {
			return nil, fieldErr("commit", "parent", err)
		}
	}
	if c.Subject, err = f[3].Str(); err != nil {
		return nil, fieldErr("commit", "subject", err)
	}
	if c.Body, err = f[4].Str(); err != nil {
		return nil, fieldErr("commit", "body", err)
	}
	c.Timestamp = binary.BigEndian.Uint64(f[5].Data())
	if c.RootTree, err = checksumOf(f[6]); err != nil {
		return nil, fieldErr("commit", "root dirtree", err)
	}
	if c.RootMeta, err = checksumOf(f[7]); err != nil {
		return nil, fieldErr("commit", "root dirmeta", err)
	}
	return c, nil
}

// TreeFile is a dirtree's file entry: name and content object checksum.
type TreeFile struct {
	Name     string
	Checksum Checksum
}

// TreeDir is a dirtree's subdirectory entry.
type TreeDir struct {
	Name string
	Tree Checksum // its .dirtree
	Meta Checksum // its .dirmeta
}

// DirTree is a decoded .dirtree object, entries in object order (ostree
// writes them sorted by name).
type DirTree struct {
	Files []TreeFile
	Dirs  []TreeDir
}

// DecodeDirTree decodes a dirtree object.
func DecodeDirTree(b []byte) (*DirTree, error) {
	t := &DirTree{}
	err := WalkDirTree(b,
		func(name []byte, c Checksum) error {
			t.Files = append(t.Files, TreeFile{Name: string(name), Checksum: c})
			return nil
		},
		func(name []byte, tree, meta Checksum) error {
			t.Dirs = append(t.Dirs, TreeDir{Name: string(name), Tree: tree, Meta: meta})
			return nil
		})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// WalkDirTree decodes a dirtree object and calls file for each file entry,
// then dir for each subdirectory entry, in object order. name aliases b and
// is valid only during the call. It checks the whole object (normal form,
// names, checksum lengths) as it goes and allocates nothing on success, so
// a million-object walk costs only the callbacks. A callback's error stops
// the walk and is returned unwrapped. Callbacks may have run for earlier
// entries before a later entry is found corrupt.
func WalkDirTree(b []byte, file func(name []byte, c Checksum) error, dir func(name []byte, tree, meta Checksum) error) error {
	v, err := gvariant.NewTyped(typeDirTree, b)
	if err != nil {
		return fmt.Errorf("dirtree: %w", err)
	}
	var top [2]Variant
	f, err := v.Fields(top[:0])
	if err != nil {
		return fmt.Errorf("dirtree: %w", err)
	}
	files, dirs := f[0], f[1]

	n, dataSize, w, err := files.ArrayFrame()
	if err != nil {
		return fmt.Errorf("dirtree: files: %w", gvariant.InPath(err, "[0]"))
	}
	for i := 0; i < n; i++ {
		e, err := files.VarElem(i, dataSize, w)
		if err != nil {
			return fmt.Errorf("dirtree: files: %w", gvariant.InPath(err, "[0]"))
		}
		var buf [2]Variant
		m, err := e.Fields(buf[:0])
		if err != nil {
			return fmt.Errorf("dirtree: file %d: %w", i, err)
		}
		name, err := entryName(m[0])
		if err != nil {
			return fmt.Errorf("dirtree: file %d: name: %w", i, err)
		}
		c, err := checksumOf(m[1])
		if err != nil {
			return fmt.Errorf("dirtree: file %q: checksum: %w", name, err)
		}
		if err := file(name, c); err != nil {
			return err
		}
	}

	n, dataSize, w, err = dirs.ArrayFrame()
	if err != nil {
		return fmt.Errorf("dirtree: dirs: %w", gvariant.InPath(err, "[1]"))
	}
	for i := 0; i < n; i++ {
		e, err := dirs.VarElem(i, dataSize, w)
		if err != nil {
			return fmt.Errorf("dirtree: dirs: %w", gvariant.InPath(err, "[1]"))
		}
		var buf [3]Variant
		m, err := e.Fields(buf[:0])
		if err != nil {
			return fmt.Errorf("dirtree: dir %d: %w", i, err)
		}
		name, err := entryName(m[0])
		if err != nil {
			return fmt.Errorf("dirtree: dir %d: name: %w", i, err)
		}
		tree, err := checksumOf(m[1])
		if err != nil {
			return fmt.Errorf("dirtree: dir %q: dirtree checksum: %w", name, err)
		}
		meta, err := checksumOf(m[2])
		if err != nil {
			return fmt.Errorf("dirtree: dir %q: dirmeta checksum: %w", name, err)
		}
		if err := dir(name, tree, meta); err != nil {
			return err
		}
	}
	return nil
}

// entryName reads a dirtree entry name: a normal string that is one path
// component (ot_util_filename_validate, plus non-empty): no "/", not "." or
// "..". Anything else would let a tree reach outside its directory.
func entryName(v Variant) ([]byte, error) {
	name, err := v.StrBytes()
	if err != nil {
		return nil, err
	}
	switch {
	case len(name) == 0:
		return nil, fmt.Errorf("empty file name: %w", ErrCorrupt)
	case len(name) == 1 && name[0] == '.', len(name) == 2 && name[0] == '.' && name[1] == '.':
		return nil, fmt.Errorf("invalid file name %q: %w", name, ErrCorrupt)
	case bytes.IndexByte(name, '/') >= 0:
		return nil, fmt.Errorf("file name %q contains '/': %w", name, ErrCorrupt)
	}
	return name, nil
}

// Xattr is one extended attribute of a dirmeta. Name is without the
// terminating NUL that ostree stores in the "ay".
type Xattr struct {
	Name  []byte
	Value []byte
}

// DirMeta is a decoded .dirmeta object.
type DirMeta struct {
	UID, GID, Mode uint32
	Xattrs         []Xattr
}

const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
)

// DecodeDirMeta decodes a dirmeta object. As ostree_validate_structureof_dirmeta
// does, it requires a directory mode with only permission, setuid/setgid
// and sticky bits.
func DecodeDirMeta(b []byte) (*DirMeta, error) {
	v, err := gvariant.NewTyped(typeDirMeta, b)
	if err != nil {
		return nil, fmt.Errorf("dirmeta: %w", err)
	}
	if err := v.Normal(); err != nil {
		return nil, fmt.Errorf("dirmeta: %w", err)
	}
	var buf [4]Variant
	f, err := v.Fields(buf[:0])
	if err != nil {
		return nil, fmt.Errorf("dirmeta: %w", err)
	}
	d := &DirMeta{
		UID:  binary.BigEndian.Uint32(f[0].Data()),
		GID:  binary.BigEndian.Uint32(f[1].Data()),
		Mode: binary.BigEndian.Uint32(f[2].Data()),
	}
	if d.Mode&sIFMT != sIFDIR {
		return nil, fmt.Errorf("dirmeta: mode 0%o is not a directory: %w", d.Mode, ErrCorrupt)
	}
	if d.Mode&^(sIFMT|0o7777) != 0 {
		return nil, fmt.Errorf("dirmeta: mode 0%o has invalid bits: %w", d.Mode, ErrCorrupt)
	}
	xs, err := decodeXattrs(f[3])
	if err != nil {
		return nil, fmt.Errorf("dirmeta: xattrs: %w", err)
	}
	d.Xattrs = xs
	return d, nil
}

// decodeXattrs reads an a(ayay) already checked by Normal. Names are
// NUL-terminated byte strings (g_variant_new_bytestring); values are raw.
func decodeXattrs(v Variant) ([]Xattr, error) {
	n, err := v.Len()
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]Xattr, 0, n)
	for i := 0; i < n; i++ {
		e, err := v.Index(i)
		if err != nil {
			return nil, err
		}
		var buf [2]Variant
		f, err := e.Fields(buf[:0])
		if err != nil {
			return nil, err
		}
		name := f[0].Data()
		if len(name) < 2 || name[len(name)-1] != 0 || bytes.IndexByte(name[:len(name)-1], 0) >= 0 {
			return nil, fmt.Errorf("xattr %d: name %q is not a non-empty NUL-terminated byte string: %w", i, name, ErrCorrupt)
		}
		out = append(out, Xattr{Name: bytes.Clone(name[:len(name)-1]), Value: bytes.Clone(f[1].Data())})
	}
	return out, nil
}
