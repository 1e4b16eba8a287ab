package ostree

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ScanStats describes what ScanObjects saw besides the objects it reported.
type ScanStats struct {
	Objects int64 // objects reported
	Bytes   int64 // sum of their sizes
	// Skipped counts directory entries under objects/ that are not loose
	// objects of this repository: names that are not 2 lower-case hex
	// digits at the top, or not 62 lower-case hex digits plus a suffix this
	// mode uses below, or files of the wrong kind. ostree ignores these too
	// (list_loose_objects_at); they are never reported as objects.
	Skipped int
	// SkippedExamples holds up to 16 of them, relative to objects/.
	SkippedExamples []string
}

const maxSkippedExamples = 16

func (s *ScanStats) skip(name string) {
	s.Skipped++
	if len(s.SkippedExamples) < maxSkippedExamples {
		s.SkippedExamples = append(s.SkippedExamples, name)
	}
}

// ListObjects calls fn for every loose object in the repository with its
// size as ostree_repo_query_object_storage_size reports it (st_size of the
// loose file, lstat for symlinks). See ScanObjects for the order and the
// entries that are skipped.
func (r *Repo) ListObjects(fn func(o ObjectName, size int64) error) error {
	_, err := r.ScanObjects(context.Background(), fn)
	return err
}

// objEntry is one object found in a directory.
type objEntry struct {
	name ObjectName
	size int64
}

type dirScan struct {
	objs  []objEntry
	stats ScanStats
	err   error
	done  chan struct{}
}

// ScanObjects enumerates every loose object: every objects/XX directory (XX
// two lower-case hex digits) and in it every name of 62 lower-case hex
// digits plus a suffix valid for the repository mode (".file" in bare modes,
// ".filez" in archive mode, and ".dirtree", ".dirmeta", ".commit",
// ".commitmeta", ".tombstone-commit", ".payload-link", ".file-xattrs",
// ".file-xattrs-link"). Nothing is followed: an objects/XX that is a
// symlink or not a directory is an error naming it (ostree would follow or
// fail; we do neither). Only regular files, and symlinks for content
// objects of bare modes, are objects.
//
// fn is called from one goroutine at a time, in ascending order of
// checksum (then type); directories are read in parallel. An error from fn
// stops the scan and is returned as is.
func (r *Repo) ScanObjects(ctx context.Context, fn func(o ObjectName, size int64) error) (ScanStats, error) {
	var stats ScanStats
	objPath := r.Path + "/objects"
	objFD, err := openBeneath(r.Path, "objects", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return stats, fmt.Errorf("list objects: %s: %w", objPath, errnoErr(err))
	}
	defer unix.Close(objFD)

	var dirs []byte // first checksum byte of every objects/XX present
	buf := make([]byte, 32<<10)
	err = readDirents(objFD, buf, func(name []byte, typ uint8) error {
		b, ok := hexByte(name)
		if !ok {
			stats.skip(string(name))
			return nil
		}
		if typ == unix.DT_UNKNOWN {
			var st unix.Stat_t
			if err := unix.Fstatat(objFD, string(name), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("%s/%s: %w", objPath, name, errnoErr(err))
			}
			typ = dtype(st.Mode)
		}
		switch typ {
		case unix.DT_DIR:
			dirs = append(dirs, b)
		case unix.DT_LNK:
			return fmt.Errorf("%s/%s is a symlink; refusing to follow it: %w", objPath, name, ErrCorrupt)
		default:
			return fmt.Errorf("%s/%s is not a directory: %w", objPath, name, ErrCorrupt)
		}
		return nil
	})
	if err != nil {
		return stats, fmt.Errorf("list objects: %w", err)
	}
	sort.Slice(dirs, func(i, j int) bool { return dirs[i] < dirs[j] })

	suffixes := r.suffixTypes()
	results := make([]*dirScan, len(dirs))
	for i := range results {
		results[i] = &dirScan{done: make(chan struct{})}
	}
	// Workers read directories ahead of the consumer, at most window of
	// them, so memory stays bounded when fn is slow.
	const window = 32
	workers := 2 * runtime.GOMAXPROCS(0)
	if workers > 8 {
		workers = 8
	}
	tokens := make(chan struct{}, window)
	stop := make(chan struct{})
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for {
				select {
				case tokens <- struct{}{}:
				case <-stop:
					return
				}
				i := int(next.Add(1) - 1)
				if i >= len(dirs) {
					<-tokens
					return
				}
				select {
				case <-stop:
					close(results[i].done)
					return
				default:
				}
				res := results[i]
				res.objs, res.err = scanObjectDir(objFD, objPath, dirs[i], suffixes, r.Mode, buf, &res.stats)
				close(res.done)
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
	}()

	for i := range results {
		res := results[i]
		select {
		case <-res.done:
		case <-ctx.Done():
			return stats, fmt.Errorf("list objects: %w", ctx.Err())
		}
		results[i] = nil
		if res.err != nil {
			return stats, fmt.Errorf("list objects: %w", res.err)
		}
		stats.Skipped += res.stats.Skipped
		for _, s := range res.stats.SkippedExamples {
			if len(stats.SkippedExamples) < maxSkippedExamples {
				stats.SkippedExamples = append(stats.SkippedExamples, s)
			}
		}
		for _, e := range res.objs {
			if err := fn(e.name, e.size); err != nil {
				return stats, err
			}
			stats.Objects++
			stats.Bytes += e.size
		}
		<-tokens
		if err := ctx.Err(); err != nil {
			return stats, fmt.Errorf("list objects: %w", err)
		}
	}
	return stats, nil
}

// suffixTypes maps the loose-object suffixes valid in this mode to types.
func (r *Repo) suffixTypes() map[string]ObjectType {
	m := map[string]ObjectType{}
	for _, t := range []ObjectType{ObjFile, ObjDirTree, ObjDirMeta, ObjCommit, ObjTombstoneCommit,
		ObjCommitMeta, ObjPayloadLink, ObjFileXattrs, ObjFileXattrsLink} {
		m[r.Suffix(t)] = t
	}
	return m
}

// scanObjectDir lists objects/XX. The result is sorted.
func scanObjectDir(objFD int, objPath string, first byte, suffixes map[string]ObjectType, mode RepoMode, buf []byte, stats *ScanStats) ([]objEntry, error) {
	xx := fmt.Sprintf("%02x", first)
	fd, err := unix.Openat(objFD, xx, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", objPath, xx, errnoErr(err))
	}
	defer unix.Close(fd)
	var objs []objEntry
	err = readDirents(fd, buf, func(name []byte, typ uint8) error {
		dot := bytes.LastIndexByte(name, '.')
		if dot != 62 {
			stats.skip(xx + "/" + string(name))
			return nil
		}
		t, ok := suffixes[string(name[dot+1:])]
		if !ok {
			stats.skip(xx + "/" + string(name))
			return nil
		}
		var c Checksum
		c[0] = first
		if !decodeLowerHex(c[1:], name[:62]) {
			stats.skip(xx + "/" + string(name))
			return nil
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, string(name), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				return nil // deleted since we read the directory
			}
			return fmt.Errorf("%s/%s/%s: %w", objPath, xx, name, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
		case unix.S_IFLNK:
			// Content objects that are symlinks exist only in modes that
			// store them as real symlinks.
			if t != ObjFile || mode == ModeBareUser || mode == ModeArchive {
				stats.skip(xx + "/" + string(name))
				return nil
			}
		default:
			stats.skip(xx + "/" + string(name))
			return nil
		}
		objs = append(objs, objEntry{ObjectName{c, t}, st.Size})
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(objs, func(i, j int) bool {
		if c := bytes.Compare(objs[i].name.Checksum[:], objs[j].name.Checksum[:]); c != 0 {
			return c < 0
		}
		return objs[i].name.Type < objs[j].name.Type
	})
	return objs, nil
}

// readDirents calls fn for every entry of the directory fd except "." and
// "..", with the name (valid only during the call) and the d_type.
func readDirents(fd int, buf []byte, fn func(name []byte, typ uint8) error) error {
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		for off := 0; off < n; {
			// struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name
			if off+19 > n {
				return fmt.Errorf("getdents: truncated record")
			}
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen < 19 || off+reclen > n {
				return fmt.Errorf("getdents: bad record length %d", reclen)
			}
			typ := buf[off+18]
			name := buf[off+19 : off+reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			off += reclen
			if len(name) == 0 || (name[0] == '.' && (len(name) == 1 || (len(name) == 2 && name[1] == '.'))) {
				continue
			}
			if err := fn(name, typ); err != nil {
				return err
			}
		}
	}
}

// dtOther is a d_type value for anything that is neither directory,
// symlink nor regular file.
const dtOther = 0xff

func dtype(mode uint32) uint8 {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.DT_DIR
	case unix.S_IFLNK:
		return unix.DT_LNK
	case unix.S_IFREG:
		return unix.DT_REG
	}
	return dtOther
}

func hexByte(name []byte) (byte, bool) {
	if len(name) != 2 {
		return 0, false
	}
	var b [1]byte
	if !decodeLowerHex(b[:], name) {
		return 0, false
	}
	return b[0], true
}

// decodeLowerHex decodes exactly 2*len(dst) lower-case hex digits.
func decodeLowerHex(dst []byte, src []byte) bool {
	if len(src) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := lowerHexVal(src[2*i])
		lo, ok2 := lowerHexVal(src[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func lowerHexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
