package store

// bbolt trusts the pages it reads: a branch page that points to itself
// makes a cursor grow its stack for ever, a freelist or element count
// from a flipped byte becomes a gigabyte allocation, a page id past the
// end of the file becomes a fault (all seen with a few flipped bytes).
// A service that runs at shutdown and deletes files as root must answer
// "corrupt" instead. So every store file is checked here, under the same
// flock bbolt then holds, before bbolt reads a byte of it: every page
// reachable from the chosen meta page is in the file, visited once, of a
// known kind, with its elements inside it. The files are small (the
// runtime state, a plan of at most tens of MB), so reading one whole is
// cheap next to what a corrupt one could cost.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/lockwait"
	"golang.org/x/sys/unix"
)

// bbolt's on-disk layout (go.etcd.io/bbolt/internal/common), little endian.
const (
	boltMagic         = 0xED0CDAED
	boltVersion       = 2
	pageHeaderSize    = 16 // id u64, flags u16, count u16, overflow u32
	elemSize          = 16 // branch: pos u32, ksize u32, pgid u64; leaf: flags, pos, ksize, vsize u32
	bucketHeaderSize  = 16 // root pgid u64, sequence u64
	metaChecksumAt    = 56 // offset of the checksum in the meta (after the page header)
	flagBranch        = 0x01
	flagLeaf          = 0x02
	flagMeta          = 0x04
	flagFreelist      = 0x10
	leafFlagBucket    = 0x01
	pgidNoFreelist    = ^uint64(0)
	maxTreeDepth      = 64
	maxStoreFileBytes = 4 << 30
)

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	hwm      uint64 // high water mark: pages in use
	txid     uint64
}

// parseMeta reads the meta at page offset off with page size ps; ok false
// when it is not a valid meta (bbolt then uses the other one).
func parseMeta(b []byte, off int) (boltMeta, bool) {
	if off+pageHeaderSize+metaChecksumAt+8 > len(b) {
		return boltMeta{}, false
	}
	p := b[off:]
	if binary.LittleEndian.Uint16(p[8:])&flagMeta == 0 {
		return boltMeta{}, false
	}
	m := p[pageHeaderSize:]
	if binary.LittleEndian.Uint32(m[0:]) != boltMagic || binary.LittleEndian.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, false
	}
	h := fnv.New64a()
	h.Write(m[:metaChecksumAt])
	if h.Sum64() != binary.LittleEndian.Uint64(m[metaChecksumAt:]) {
		return boltMeta{}, false
	}
	return boltMeta{
		pageSize: binary.LittleEndian.Uint32(m[8:]),
		root:     binary.LittleEndian.Uint64(m[16:]),
		freelist: binary.LittleEndian.Uint64(m[32:]),
		hwm:      binary.LittleEndian.Uint64(m[40:]),
		txid:     binary.LittleEndian.Uint64(m[48:]),
	}, true
}

// validateBolt checks the structure of a bbolt file's bytes as described
// above. An empty file is valid (bbolt initialises it).
func validateBolt(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	m0, ok0 := parseMeta(b, 0)
	var m boltMeta
	switch {
	case ok0:
		m = m0
		if m1, ok1 := parseMeta(b, int(m0.pageSize)); ok1 && m1.pageSize == m0.pageSize && m1.txid > m0.txid {
			m = m1
		}
	default:
		// meta0 is broken: bbolt finds meta1 by trying page sizes.
		found := false
		for ps := 1024; ps <= 64<<10; ps *= 2 {
			if m1, ok1 := parseMeta(b, ps); ok1 && int(m1.pageSize) == ps {
				m, found = m1, true
				break
			}
		}
		if !found {
			return errors.New("no valid meta page")
		}
	}
	ps := uint64(m.pageSize)
	if ps < 512 || ps > 64<<10 || ps&(ps-1) != 0 {
		return fmt.Errorf("page size %d", ps)
	}
	if m.hwm < 2 || m.hwm > uint64(len(b))/ps {
		return fmt.Errorf("high water mark %d pages of %d bytes, file has %d bytes", m.hwm, ps, len(b))
	}
	v := &boltWalker{b: b, ps: ps, hwm: m.hwm, seen: map[uint64]bool{}}
	if m.freelist != pgidNoFreelist {
		if err := v.freelist(m.freelist); err != nil {
			return err
		}
	}
	return v.tree(m.root, 0)
}

type boltWalker struct {
	b    []byte
	ps   uint64
	hwm  uint64
	seen map[uint64]bool
}

// pageBytes returns the bytes of page id and its overflow pages, checking
// they are inside the file and below the high water mark, and marks them
// seen (a second visit is a cycle or a shared page: corrupt).
func (v *boltWalker) pageBytes(id uint64) ([]byte, error) {
	if id < 2 || id >= v.hwm {
		return nil, fmt.Errorf("page %d outside 2..%d", id, v.hwm)
	}
	off := id * v.ps
	if off+pageHeaderSize > uint64(len(v.b)) {
		return nil, fmt.Errorf("page %d past the end of the file", id)
	}
	overflow := uint64(binary.LittleEndian.Uint32(v.b[off+12:]))
	end := id + 1 + overflow
	if end > v.hwm || end < id || end*v.ps > uint64(len(v.b)) {
		return nil, fmt.Errorf("page %d with %d overflow pages past the end", id, overflow)
	}
	for p := id; p < end; p++ {
		if v.seen[p] {
			return nil, fmt.Errorf("page %d reached twice", p)
		}
		v.seen[p] = true
	}
	if got := binary.LittleEndian.Uint64(v.b[off:]); got != id {
		return nil, fmt.Errorf("page %d says it is page %d", id, got)
	}
	return v.b[off : end*v.ps], nil
}

func (v *boltWalker) freelist(id uint64) error {
	p, err := v.pageBytes(id)
	if err != nil {
		return fmt.Errorf("freelist: %w", err)
	}
	if binary.LittleEndian.Uint16(p[8:])&flagFreelist == 0 {
		return fmt.Errorf("freelist page %d has flags %#x", id, binary.LittleEndian.Uint16(p[8:]))
	}
	n := uint64(binary.LittleEndian.Uint16(p[10:]))
	start := uint64(pageHeaderSize)
	if n == 0xFFFF {
		if len(p) < pageHeaderSize+8 {
			return fmt.Errorf("freelist page %d truncated", id)
		}
		n = binary.LittleEndian.Uint64(p[pageHeaderSize:])
		start += 8
	}
	if n > (uint64(len(p))-start)/8 {
		return fmt.Errorf("freelist page %d claims %d ids", id, n)
	}
	for i := uint64(0); i < n; i++ {
		if f := binary.LittleEndian.Uint64(p[start+8*i:]); f < 2 || f >= v.hwm {
			return fmt.Errorf("freelist page %d frees page %d", id, f)
		}
	}
	return nil
}

// tree checks the B+tree page id and everything below it.
func (v *boltWalker) tree(id uint64, depth int) error {
	if depth > maxTreeDepth {
		return fmt.Errorf("tree deeper than %d", maxTreeDepth)
	}
	p, err := v.pageBytes(id)
	if err != nil {
		return err
	}
	return v.node(p, depth)
}

// node checks one branch or leaf page given its bytes (a page of the file,
// or an inline bucket's page inside a value).
func (v *boltWalker) node(p []byte, depth int) error {
	if len(p) < pageHeaderSize {
		return errors.New("page truncated")
	}
	flags := binary.LittleEndian.Uint16(p[8:])
	n := int(binary.LittleEndian.Uint16(p[10:]))
	if pageHeaderSize+n*elemSize > len(p) {
		return fmt.Errorf("page of %d bytes claims %d elements", len(p), n)
	}
	for i := 0; i < n; i++ {
		e := pageHeaderSize + i*elemSize
		el := p[e : e+elemSize]
		switch flags {
		case flagBranch:
			pos, ksize := int(binary.LittleEndian.Uint32(el[0:])), int(binary.LittleEndian.Uint32(el[4:]))
			if pos < 0 || ksize < 0 || e+pos+ksize > len(p) || e+pos+ksize < e {
				return fmt.Errorf("branch element %d outside its page", i)
			}
			if err := v.tree(binary.LittleEndian.Uint64(el[8:]), depth+1); err != nil {
				return err
			}
		case flagLeaf:
			lf := binary.LittleEndian.Uint32(el[0:])
			pos := int64(binary.LittleEndian.Uint32(el[4:]))
			ksize := int64(binary.LittleEndian.Uint32(el[8:]))
			vsize := int64(binary.LittleEndian.Uint32(el[12:]))
			end := int64(e) + pos + ksize + vsize
			if end > int64(len(p)) {
				return fmt.Errorf("leaf element %d outside its page", i)
			}
			if lf&leafFlagBucket == 0 {
				continue
			}
			val := p[int64(e)+pos+ksize : end]
			if len(val) < bucketHeaderSize {
				return fmt.Errorf("bucket value of %d bytes", len(val))
			}
			if root := binary.LittleEndian.Uint64(val); root != 0 {
				if err := v.tree(root, depth+1); err != nil {
					return err
				}
			} else if depth+1 > maxTreeDepth {
				return fmt.Errorf("tree deeper than %d", maxTreeDepth)
			} else if err := v.node(val[bucketHeaderSize:], depth+1); err != nil {
				return fmt.Errorf("inline bucket: %w", err)
			}
		default:
			return fmt.Errorf("page of kind %#x in the tree", flags)
		}
	}
	if flags != flagBranch && flags != flagLeaf {
		return fmt.Errorf("page of kind %#x in the tree", flags)
	}
	return nil
}

// lockedOpener returns bbolt's OpenFile hook: it opens the file (never
// through a symlink), takes the flock bbolt would take (bbolt's own flock
// on the same open file then succeeds at once), and validates the whole
// file under that lock before bbolt reads it. The lock wait is bounded by
// LockTimeout.
func lockedOpener(readOnly bool) func(string, int, os.FileMode) (*os.File, error) {
	return func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag|unix.O_NOFOLLOW, perm)
		if err != nil {
			return nil, err
		}
		how := unix.LOCK_EX
		if readOnly {
			how = unix.LOCK_SH
		}
		// The one lock loop (internal/lockwait), bounded by LockTimeout.
		ctx, cancel := context.WithTimeout(context.Background(), LockTimeout)
		err = lockwait.Poll(ctx, 10*time.Millisecond, func() (bool, error) { return lockwait.TryFlock(int(f.Fd()), how) })
		cancel()
		if err != nil {
			f.Close()
			if errors.Is(err, context.DeadlineExceeded) {
				return nil, errLockTimeout
			}
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if st.Size() > maxStoreFileBytes {
			f.Close()
			return nil, fmt.Errorf("%w: %d bytes, more than a store ever holds", errInvalidFile, st.Size())
		}
		b := make([]byte, st.Size())
		if _, err := io.ReadFull(io.NewSectionReader(f, 0, st.Size()), b); err != nil {
			f.Close()
			return nil, err
		}
		if err := validateBolt(b); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %v", errInvalidFile, err)
		}
		return f, nil
	}
}

var (
	errInvalidFile = errors.New("not a valid store file")
	errLockTimeout = errors.New("lock timeout")
)
