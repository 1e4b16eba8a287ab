package etcmerge

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sort"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"golang.org/x/sys/unix"
)

// Entry is the stat of one path of the booted etc, as recorded at staging.
type Entry struct {
	Path     string // relative to etc, never "" (the etc root is not recorded)
	Mode     uint32 // st_mode: type and permission bits
	UID, GID uint32
	Size     int64
	Mtime    int64 // nanoseconds since the epoch
	Ctime    int64 // nanoseconds since the epoch; catches chmod, chown and xattr changes
	Ino      uint64
}

// Baseline is every path of the booted etc with its stat, sorted by Path
// (bytewise). The seal compares /etc against it with stat calls only.
type Baseline struct {
	Entries []Entry
}

// Scan records the baseline of etc: an lstat of every path, no content read,
// no symlink followed.
func Scan(ctx context.Context, etc string) (*Baseline, error) {
	b := &Baseline{}
	if err := scanTree(ctx, etc, func(e Entry) { b.Entries = append(b.Entries, e) }); err != nil {
		return nil, err
	}
	sort.Slice(b.Entries, func(i, j int) bool { return b.Entries[i].Path < b.Entries[j].Path })
	return b, nil
}

// scanTree opens etc once and walks it below that fd (see tree): a
// directory swapped for a symlink during the walk is not followed.
func scanTree(ctx context.Context, etc string, fn func(Entry)) error {
	t, err := openTree(etc)
	if err != nil {
		return err
	}
	defer t.Close()
	return scanDir(ctx, t, "", fn)
}

func scanDir(ctx context.Context, t *tree, rel string, fn func(Entry)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	names, err := t.readNames(rel)
	if err != nil {
		return err
	}
	for _, n := range names {
		p := joinRel(rel, n)
		st, ok, err := t.stat(p)
		if err != nil {
			return err
		}
		if !ok {
			continue // vanished since readdir: the next Changed sees it as absent
		}
		fn(entryOf(p, &st))
		if isDir(&st) {
			if err := scanDir(ctx, t, p, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

func entryOf(p string, st *unix.Stat_t) Entry {
	return Entry{Path: p, Mode: st.Mode, UID: st.Uid, GID: st.Gid, Size: st.Size,
		Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano(), Ino: st.Ino}
}

// Changed walks etc (stat only) and returns, sorted, every path whose stat
// differs from the baseline, that appeared, or that vanished. A directory
// whose entries were added or removed is itself reported (its mtime and
// ctime change), and so are the added and removed entries.
func (b *Baseline) Changed(ctx context.Context, etc string) ([]string, error) {
	old := make(map[string]*Entry, len(b.Entries))
	for i := range b.Entries {
		old[b.Entries[i].Path] = &b.Entries[i]
	}
	seen := make(map[string]bool, len(b.Entries))
	var out []string
	err := scanTree(ctx, etc, func(e Entry) {
		seen[e.Path] = true
		if o, ok := old[e.Path]; !ok || *o != e {
			out = append(out, e.Path)
		}
	})
	if err != nil {
		return nil, err
	}
	for _, e := range b.Entries {
		if !seen[e.Path] {
			out = append(out, e.Path)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Rescan is Scan and Changed in one stat walk: it returns the new baseline
// of etc and the paths that differ from b. Both come from the same lstat
// of each path, so a change racing with the walk either shows in changed
// or differs from the new baseline, and is found by the next Rescan.
func (b *Baseline) Rescan(ctx context.Context, etc string) (*Baseline, []string, error) {
	old := make(map[string]*Entry, len(b.Entries))
	for i := range b.Entries {
		old[b.Entries[i].Path] = &b.Entries[i]
	}
	nb := &Baseline{Entries: make([]Entry, 0, len(b.Entries))}
	seen := 0
	var out []string
	err := scanTree(ctx, etc, func(e Entry) {
		nb.Entries = append(nb.Entries, e)
		o, ok := old[e.Path]
		if ok {
			seen++
		}
		if !ok || *o != e {
			out = append(out, e.Path)
		}
	})
	if err != nil {
		return nil, nil, err
	}
	if seen < len(b.Entries) {
		present := make(map[string]bool, len(nb.Entries))
		for _, e := range nb.Entries {
			present[e.Path] = true
		}
		for _, e := range b.Entries {
			if !present[e.Path] {
				out = append(out, e.Path)
			}
		}
	}
	sort.Slice(nb.Entries, func(i, j int) bool { return nb.Entries[i].Path < nb.Entries[j].Path })
	sort.Strings(out)
	return nb, out, nil
}

const baselineMagic = "OPFBL\x01"

// MarshalBinary encodes the baseline compactly: magic, entry count, then
// per entry the length of the prefix shared with the previous path, the
// rest of the path, and the stat fields as varints.
func (b *Baseline) MarshalBinary() ([]byte, error) {
	buf := make([]byte, 0, 16+len(b.Entries)*40)
	buf = append(buf, baselineMagic...)
	buf = binary.AppendUvarint(buf, uint64(len(b.Entries)))
	prev := ""
	for i, e := range b.Entries {
		if err := checkRel(e.Path); err != nil || e.Path == "" {
			return nil, fmt.Errorf("baseline entry %d %q: %w", i, e.Path, ErrBadPath)
		}
		if i > 0 && e.Path <= prev {
			return nil, fmt.Errorf("baseline entry %d %q: not sorted after %q: %w", i, e.Path, prev, ErrBadPath)
		}
		if e.Size < 0 {
			return nil, fmt.Errorf("baseline entry %q: negative size: %w", e.Path, ErrBadPath)
		}
		shared := 0
		for shared < len(prev) && shared < len(e.Path) && prev[shared] == e.Path[shared] {
			shared++
		}
		buf = binary.AppendUvarint(buf, uint64(shared))
		buf = binary.AppendUvarint(buf, uint64(len(e.Path)-shared))
		buf = append(buf, e.Path[shared:]...)
		buf = binary.AppendUvarint(buf, uint64(e.Mode))
		buf = binary.AppendUvarint(buf, uint64(e.UID))
		buf = binary.AppendUvarint(buf, uint64(e.GID))
		buf = binary.AppendUvarint(buf, uint64(e.Size))
		buf = binary.AppendVarint(buf, e.Mtime)
		buf = binary.AppendVarint(buf, e.Ctime)
		buf = binary.AppendUvarint(buf, e.Ino)
		prev = e.Path
	}
	return buf, nil
}

// minEntryBytes is the smallest encoded entry (nine one-byte varints, a
// one-byte path suffix): it bounds the count a buffer can claim.
const minEntryBytes = 10

// UnmarshalBinary decodes MarshalBinary's output; anything else is an
// error wrapping ostree.ErrCorrupt, never a panic or a huge allocation.
func (b *Baseline) UnmarshalBinary(data []byte) error {
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("baseline: "+format+": %w", append(args, ostree.ErrCorrupt)...)
	}
	if len(data) < len(baselineMagic) || string(data[:len(baselineMagic)]) != baselineMagic {
		return corrupt("bad magic")
	}
	r := data[len(baselineMagic):]
	uv := func(what string) (uint64, error) {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			return 0, corrupt("truncated or overlong %s", what)
		}
		r = r[n:]
		return v, nil
	}
	sv := func(what string) (int64, error) {
		v, n := binary.Varint(r)
		if n <= 0 {
			return 0, corrupt("truncated or overlong %s", what)
		}
		r = r[n:]
		return v, nil
	}
	u32 := func(what string) (uint32, error) {
		v, err := uv(what)
		if err == nil && v > math.MaxUint32 {
			err = corrupt("%s %d out of range", what, v)
		}
		return uint32(v), err
	}
	count, err := uv("count")
	if err != nil {
		return err
	}
	if count > uint64(len(r)/minEntryBytes) {
		return corrupt("count %d larger than the data allows", count)
	}
	entries := make([]Entry, 0, count)
	prev := ""
	for i := uint64(0); i < count; i++ {
		shared, err := uv("prefix length")
		if err != nil {
			return err
		}
		if shared > uint64(len(prev)) {
			return corrupt("entry %d: shared prefix %d longer than previous path", i, shared)
		}
		rest, err := uv("path length")
		if err != nil {
			return err
		}
		if rest > uint64(len(r)) {
			return corrupt("entry %d: path length %d beyond the data", i, rest)
		}
		p := prev[:shared] + string(r[:rest])
		r = r[rest:]
		if p == "" || checkRel(p) != nil {
			return corrupt("entry %d: invalid path %q", i, p)
		}
		if i > 0 && p <= prev {
			return corrupt("entry %d: path %q not sorted after %q", i, p, prev)
		}
		e := Entry{Path: p}
		if e.Mode, err = u32("mode"); err != nil {
			return err
		}
		if e.UID, err = u32("uid"); err != nil {
			return err
		}
		if e.GID, err = u32("gid"); err != nil {
			return err
		}
		size, err := uv("size")
		if err != nil {
			return err
		}
		if size > math.MaxInt64 {
			return corrupt("entry %q: size out of range", p)
		}
		e.Size = int64(size)
		if e.Mtime, err = sv("mtime"); err != nil {
			return err
		}
		if e.Ctime, err = sv("ctime"); err != nil {
			return err
		}
		if e.Ino, err = uv("inode"); err != nil {
			return err
		}
		entries = append(entries, e)
		prev = p
	}
	if len(r) != 0 {
		return corrupt("%d trailing bytes", len(r))
	}
	b.Entries = entries
	return nil
}
