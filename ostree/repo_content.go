package ostree

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// FileObject is an opened content object, decomposed as
// ostree_repo_load_file does: metadata plus, for regular files, a stream of
// the file's bytes (Read). Close it.
type FileObject struct {
	Checksum Checksum
	// Mode is the full st_mode: S_IFREG or S_IFLNK plus permission bits.
	Mode     uint32
	UID, GID uint32
	Symlink  string // target, for symlinks
	// Size is the content length of a regular file (archive: from the
	// header; bare modes: st_size). 0 for symlinks.
	Size int64
	// Xattrs as the mode stores them: bare reads the object's own xattrs,
	// bare-user its user.ostreemeta, archive its header, bare-split-xattrs
	// its .file-xattrs-link object; bare-user-only has none.
	Xattrs []Xattr

	r      io.Reader
	closer io.Closer
}

// IsSymlink reports whether the object is a symlink.
func (f *FileObject) IsSymlink() bool { return f.Mode&unix.S_IFMT == unix.S_IFLNK }

// Read reads the content of a regular file; a symlink reads as empty.
// A content stream that ends early, or an archive stream that does not
// decompress to exactly Size bytes, fails with ErrCorrupt.
func (f *FileObject) Read(p []byte) (int, error) {
	if f.r == nil {
		return 0, io.EOF
	}
	return f.r.Read(p)
}

// Close releases the object's file.
func (f *FileObject) Close() error {
	if f.closer == nil {
		return nil
	}
	err := f.closer.Close()
	f.closer = nil
	return err
}

// File header formats (ostree-core.c): archive objects start with a
// big-endian u32 header length, 4 bytes of padding and the header
// "(tuuuusa(ayay))" (size, uid, gid, mode, rdev, symlink target, xattrs; the
// integers big-endian inside the little-endian GVariant); bare-user keeps
// "(uuua(ayay))" (uid, gid, mode, xattrs) in the user.ostreemeta xattr.
const (
	zlibFileHeaderType = "(tuuuusa(ayay))"
	fileMetaType       = "(uuua(ayay))"
	bareUserMetaXattr  = "user.ostreemeta"
)

// OpenFile opens the content object c as ostree_repo_load_file reads it in
// this repository's mode. Errors name the object and wrap ErrNotFound or
// ErrCorrupt where that applies.
func (r *Repo) OpenFile(c Checksum) (*FileObject, error) {
	o := ObjectName{Checksum: c, Type: ObjFile}
	var f *FileObject
	var err error
	if r.Mode == ModeArchive {
		f, err = r.openArchiveFile(o)
	} else {
		f, err = r.openBareFile(o)
	}
	if err != nil {
		return nil, fmt.Errorf("object %s (%s): %w", o, r.ObjectPath(o), err)
	}
	f.Checksum = c
	return f, nil
}

func (r *Repo) openArchiveFile(o ObjectName) (*FileObject, error) {
	file, err := r.openObject(o)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			file.Close()
		}
	}()
	fi, err := file.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file: %w", ErrCorrupt)
	}
	var pre [8]byte
	if _, err := io.ReadFull(file, pre[:]); err != nil {
		return nil, fmt.Errorf("file header: %v: %w", err, ErrCorrupt)
	}
	hlen := int64(binary.BigEndian.Uint32(pre[:4]))
	if hlen == 0 {
		return nil, fmt.Errorf("file header size is zero: %w", ErrCorrupt)
	}
	if hlen > fi.Size()-8 || hlen > MaxMetadataSize {
		return nil, fmt.Errorf("file header size %d exceeds the object's %d bytes: %w", hlen, fi.Size(), ErrCorrupt)
	}
	hdr := make([]byte, hlen)
	if _, err := io.ReadFull(file, hdr); err != nil {
		return nil, fmt.Errorf("file header: %v: %w", err, ErrCorrupt)
	}
	f, err := DecodeZlibFileHeader(hdr)
	if err != nil {
		return nil, err
	}
	if !f.IsSymlink() {
		zr := flate.NewReader(file)
		f.r = &exactReader{r: zr, want: f.Size}
		f.closer = multiCloser{zr, file}
	} else {
		f.closer = file
	}
	ok = true
	return f, nil
}

// DecodeZlibFileHeader decodes an archive object's header variant
// "(tuuuusa(ayay))" (the bytes after the length and padding) into a
// FileObject without content, with ostree's checks (zlib_file_header_parse):
// rdev must be 0 and the mode a regular file or a symlink.
func DecodeZlibFileHeader(b []byte) (*FileObject, error) {
	v, err := NewVariant(zlibFileHeaderType, b)
	if err != nil {
		return nil, fmt.Errorf("file header: %w", err)
	}
	if err := v.Normal(); err != nil {
		return nil, fmt.Errorf("file header: %w", err)
	}
	var buf [7]Variant
	fs, err := v.Fields(buf[:0])
	if err != nil {
		return nil, fmt.Errorf("file header: %w", err)
	}
	size, _ := fs[0].Uint64()
	var u [4]uint32
	for i := range u {
		u[i], _ = fs[1+i].Uint32()
		u[i] = bits.ReverseBytes32(u[i])
	}
	target, err := fs[5].Str()
	if err != nil {
		return nil, fmt.Errorf("file header: %w", err)
	}
	xs, err := decodeXattrs(fs[6])
	if err != nil {
		return nil, fmt.Errorf("file header: %w", err)
	}
	f := &FileObject{UID: u[0], GID: u[1], Mode: u[2], Xattrs: xs}
	if u[3] != 0 {
		return nil, fmt.Errorf("file header: invalid rdev %d: %w", u[3], ErrCorrupt)
	}
	size = bits.ReverseBytes64(size)
	switch f.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if size > 1<<62 {
			return nil, fmt.Errorf("file header: size %d: %w", size, ErrCorrupt)
		}
		f.Size = int64(size)
	case unix.S_IFLNK:
		f.Symlink = target
	default:
		return nil, fmt.Errorf("file header: invalid mode %o: %w", f.Mode, ErrCorrupt)
	}
	return f, nil
}

// DecodeFileMeta decodes bare-user's user.ostreemeta value "(uuua(ayay))":
// uid, gid, mode (big-endian) and xattrs.
func DecodeFileMeta(b []byte) (uid, gid, mode uint32, xattrs []Xattr, err error) {
	v, err := NewVariant(fileMetaType, b)
	if err != nil {
		return 0, 0, 0, nil, fmt.Errorf("%s: %w", bareUserMetaXattr, err)
	}
	if err := v.Normal(); err != nil {
		return 0, 0, 0, nil, fmt.Errorf("%s: %w", bareUserMetaXattr, err)
	}
	var buf [4]Variant
	fs, err := v.Fields(buf[:0])
	if err != nil {
		return 0, 0, 0, nil, fmt.Errorf("%s: %w", bareUserMetaXattr, err)
	}
	var u [3]uint32
	for i := range u {
		u[i], _ = fs[i].Uint32()
		u[i] = bits.ReverseBytes32(u[i])
	}
	xs, err := decodeXattrs(fs[3])
	if err != nil {
		return 0, 0, 0, nil, fmt.Errorf("%s: %w", bareUserMetaXattr, err)
	}
	return u[0], u[1], u[2], xs, nil
}

func (r *Repo) openBareFile(o ObjectName) (*FileObject, error) {
	rel := r.ObjectRelPath(o)
	dirFD, err := openBeneath(r.Path, "objects/"+rel[:2], unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, errnoErr(err)
	}
	defer unix.Close(dirFD)
	leaf := rel[3:]
	var st unix.Stat_t
	if err := unix.Fstatat(dirFD, leaf, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, errnoErr(err)
	}
	f := &FileObject{Mode: st.Mode, UID: st.Uid, GID: st.Gid}
	var file *os.File
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fd, err := unix.Openat(dirFD, leaf, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err != nil {
			return nil, errnoErr(err)
		}
		file = os.NewFile(uintptr(fd), r.ObjectPath(o))
	case unix.S_IFLNK:
		if r.Mode == ModeBareUser {
			return nil, fmt.Errorf("symlink in a bare-user repository: %w", ErrCorrupt)
		}
		buf := make([]byte, unix.PathMax+1)
		n, err := unix.Readlinkat(dirFD, leaf, buf)
		if err != nil {
			return nil, err
		}
		f.Symlink = string(buf[:n])
	default:
		return nil, fmt.Errorf("not a regular file or symlink (mode %o): %w", st.Mode, ErrCorrupt)
	}
	ok := false
	defer func() {
		if !ok && file != nil {
			file.Close()
		}
	}()

	switch r.Mode {
	case ModeBareUser:
		meta, err := fgetxattr(int(file.Fd()), bareUserMetaXattr)
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", bareUserMetaXattr, err)
		}
		if f.UID, f.GID, f.Mode, f.Xattrs, err = DecodeFileMeta(meta); err != nil {
			return nil, err
		}
		switch f.Mode & unix.S_IFMT {
		case unix.S_IFREG:
		case unix.S_IFLNK:
			// The file's content is the target (ostree reads up to PATH_MAX).
			b, err := io.ReadAll(io.LimitReader(file, unix.PathMax+1))
			if err != nil {
				return nil, err
			}
			if len(b) > unix.PathMax {
				return nil, fmt.Errorf("symlink target longer than %d bytes: %w", unix.PathMax, ErrCorrupt)
			}
			// Written with its terminating NUL ("so we can mmap this
			// file"); ostree reads it back with g_strndup, which stops at
			// the first NUL.
			if i := bytes.IndexByte(b, 0); i >= 0 {
				b = b[:i]
			}
			f.Symlink = string(b)
			file.Close()
			file = nil
		default:
			return nil, fmt.Errorf("%s: invalid mode %o: %w", bareUserMetaXattr, f.Mode, ErrCorrupt)
		}
	case ModeBareUserOnly:
		// Canonical: uid/gid 0, no xattrs (as _ostree_repo_load_file_bare).
		f.UID, f.GID = 0, 0
	case ModeBare:
		var err error
		if file != nil {
			f.Xattrs, err = allXattrs(func(dest []byte) (int, error) { return unix.Flistxattr(int(file.Fd()), dest) },
				func(name string, dest []byte) (int, error) { return unix.Fgetxattr(int(file.Fd()), name, dest) })
		} else {
			p := r.ObjectPath(o)
			f.Xattrs, err = allXattrs(func(dest []byte) (int, error) { return unix.Llistxattr(p, dest) },
				func(name string, dest []byte) (int, error) { return unix.Lgetxattr(p, name, dest) })
		}
		if err != nil {
			return nil, fmt.Errorf("xattrs: %w", err)
		}
	case ModeBareSplitXattrs:
		xo := ObjectName{Checksum: o.Checksum, Type: ObjFileXattrsLink}
		xf, err := r.openObject(xo)
		if err != nil {
			return nil, err
		}
		b, err := readCapped(xf, MaxMetadataSize)
		xf.Close()
		if err != nil {
			return nil, err
		}
		v, err := NewVariant("a(ayay)", b)
		if err == nil {
			err = v.Normal()
		}
		if err == nil {
			f.Xattrs, err = decodeXattrs(v)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.ObjectPath(xo), err)
		}
	}
	if file != nil {
		f.Size = st.Size
		f.r = &exactReader{r: file, want: st.Size}
		f.closer = file
	}
	ok = true
	return f, nil
}

// fgetxattr reads one whole xattr value.
func fgetxattr(fd int, name string) ([]byte, error) {
	for {
		n, err := unix.Fgetxattr(fd, name, nil)
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				return nil, fmt.Errorf("%w: %w", err, ErrCorrupt)
			}
			return nil, err
		}
		buf := make([]byte, n)
		m, err := unix.Fgetxattr(fd, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // grew in between
		}
		if err != nil {
			return nil, err
		}
		return buf[:m], nil
	}
}

// allXattrs lists and reads every xattr, sorted by name as
// ostree_fs_get_all_xattrs returns them (it sorts the canonical variant).
func allXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]Xattr, error) {
	n, err := list(nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, n)
	n, err = list(buf)
	if err != nil {
		return nil, err
	}
	var out []Xattr
	for _, name := range strings.Split(strings.TrimSuffix(string(buf[:n]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		sz, err := get(name, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		val := make([]byte, sz)
		sz, err = get(name, val)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, Xattr{Name: []byte(name), Value: val[:sz]})
	}
	sortXattrs(out)
	return out, nil
}

func sortXattrs(xs []Xattr) {
	for i := 1; i < len(xs); i++ {
		for j := i; j > 0 && bytes.Compare(xs[j-1].Name, xs[j].Name) > 0; j-- {
			xs[j-1], xs[j] = xs[j], xs[j-1]
		}
	}
}

// exactReader fails unless the stream has exactly want bytes.
type exactReader struct {
	r    io.Reader
	want int64
	got  int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if int64(len(p)) > e.want-e.got+1 {
		p = p[:e.want-e.got+1]
	}
	n, err := e.r.Read(p)
	e.got += int64(n)
	if e.got > e.want {
		return n, fmt.Errorf("content longer than the %d bytes recorded: %w", e.want, ErrCorrupt)
	}
	if err == io.EOF && e.got != e.want {
		return n, fmt.Errorf("content of %d bytes, want %d: %w", e.got, e.want, ErrCorrupt)
	}
	if err != nil && err != io.EOF {
		var ce flate.CorruptInputError
		if errors.As(err, &ce) || errors.Is(err, io.ErrUnexpectedEOF) {
			return n, fmt.Errorf("compressed content: %v: %w", err, ErrCorrupt)
		}
	}
	return n, err
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	var first error
	for _, c := range m {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
