package prune

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// ErrBadPlan is wrapped by every error that rejects a plan or a plan entry
// (unknown type, zero checksum, duplicate, bad file suffix, non-commit root).
var ErrBadPlan = errors.New("invalid prune plan")

// ObjectLister enumerates every loose object of the repository with its
// storage size, as ostree_repo_list_objects and
// ostree_repo_query_object_storage_size see them. *ostree.Repo satisfies it.
type ObjectLister interface {
	ListObjects(fn func(o ostree.ObjectName, size int64) error) error
}

// ObjectSizer is implemented by listers that report size -1 ("unknown")
// so that listing needs no stat per object; ComputePlan then asks for the
// sizes of the planned objects only, as ostree's prune queries the storage
// size of the objects it deletes only.
type ObjectSizer interface {
	// ObjectSize is the object's storage size. An error wrapping
	// ostree.ErrNotFound means the object vanished since it was listed: it
	// is dropped from the plan.
	ObjectSize(o ostree.ObjectName) (int64, error)
}

// Entry is one object the plan deletes: 48 bytes in memory.
type Entry struct {
	Checksum ostree.Checksum
	Size     uint64 // bytes on disk, as listed when planning
	Type     ostree.ObjectType
	state    entryState
}

// Name is the entry's object name.
func (e Entry) Name() ostree.ObjectName { return ostree.ObjectName{Checksum: e.Checksum, Type: e.Type} }

type entryState uint8

const (
	statePending entryState = iota
	stateDeleted            // Delete (and Tombstone for a commit) succeeded
	stateKept               // reached by a root that appeared after planning
)

// TypeStats counts the planned objects of one type.
type TypeStats struct {
	Objects int    `json:"objects"`
	Bytes   uint64 `json:"bytes"`
}

// Stats is what `plan --json` and `cleanup --json` print: the objects the
// plan deletes, in total and per type. Per-type keys use ostree's type names;
// content objects are "file" whatever the repository mode.
type Stats struct {
	Objects    int       `json:"objects"`
	Bytes      uint64    `json:"bytes"`
	Commit     TypeStats `json:"commit"`
	CommitMeta TypeStats `json:"commitmeta"`
	DirTree    TypeStats `json:"dirtree"`
	DirMeta    TypeStats `json:"dirmeta"`
	File       TypeStats `json:"file"`
	// Listed is how many loose objects were listed when planning and
	// Reachable how many objects the roots reach (0 for a plan rebuilt with
	// NewPlan, which does not know).
	Listed    int `json:"listed,omitempty"`
	Reachable int `json:"reachable,omitempty"`
}

func (s *Stats) add(t ostree.ObjectType, size uint64) {
	s.Objects++
	s.Bytes += size
	var ts *TypeStats
	switch t {
	case ostree.ObjCommit:
		ts = &s.Commit
	case ostree.ObjCommitMeta:
		ts = &s.CommitMeta
	case ostree.ObjDirTree:
		ts = &s.DirTree
	case ostree.ObjDirMeta:
		ts = &s.DirMeta
	case ostree.ObjFile:
		ts = &s.File
	default:
		return
	}
	ts.Objects++
	ts.Bytes += size
}

// Plan is the mock prune: the loose objects that no root reaches, computed
// once (at staging) and executed later (at the next boot) after checking
// that the roots did not gain anything. A Plan is not safe for concurrent
// use.
type Plan struct {
	// Roots are the root commits the plan was computed from, sorted and
	// de-duplicated; RootsHash is RootsHash(Roots).
	Roots     []ostree.ObjectName
	RootsHash string
	// FileSuffix is the repository mode's suffix of content objects, "file"
	// (bare modes) or "filez" (archive): the listing prints it as the type.
	FileSuffix string
	// Stats describes the plan as computed (Execute does not change it).
	Stats Stats

	// ImageRefs are the image-store refs that cleanup removes before the
	// objects (a plan with image GC; sorted by name); Images reports what
	// such refs hold (nil when the plan was not computed by PlanSysroot).
	// Images is not persisted.
	ImageRefs []ImageRef
	Images    *ImagesReport

	// entries are sorted by (checksum, printed suffix), the order of
	// `plan --list`; Execute makes one pass per phase.
	entries []Entry
}

// planTypes are the types a plan may delete. Everything else a lister
// reports (.payload-link, .commit-tombstone, ...) is kept: do less, never
// more.
func plannable(t ostree.ObjectType) bool {
	switch t {
	case ostree.ObjCommit, ostree.ObjCommitMeta, ostree.ObjDirTree, ostree.ObjDirMeta, ostree.ObjFile:
		return true
	}
	return false
}

func checkSuffix(s string) error {
	if s != "file" && s != "filez" {
		return fmt.Errorf("content object suffix %q, want \"file\" or \"filez\": %w", s, ErrBadPlan)
	}
	return nil
}

// normRoots validates that every root is a commit and returns them sorted
// and de-duplicated.
func normRoots(roots []ostree.ObjectName) ([]ostree.ObjectName, error) {
	out := slices.Clone(roots)
	for _, r := range out {
		if r.Type != ostree.ObjCommit || r.Checksum.IsZero() {
			return nil, fmt.Errorf("root %s: not a commit: %w", r, ErrBadPlan)
		}
	}
	slices.SortFunc(out, func(a, b ostree.ObjectName) int { return bytes.Compare(a.Checksum[:], b.Checksum[:]) })
	return slices.Compact(out), nil
}

// RootsHash is the ref-state hash: a hex SHA-256 over a version line and
// the sorted, de-duplicated root names ("<64-hex>.commit\n" each). Equal
// hashes mean the same root set, so the plan's reachability still holds.
func RootsHash(roots []ostree.ObjectName) string {
	rs := slices.Clone(roots)
	slices.SortFunc(rs, compareNames)
	rs = slices.Compact(rs)
	h := sha256.New()
	io.WriteString(h, "ostree-prefinalize roots v1\n")
	for _, r := range rs {
		io.WriteString(h, r.String())
		io.WriteString(h, "\n")
	}
	return hex.EncodeToString(h.Sum(nil))
}

var compareNames = ostree.CompareObjectNames

// suffix is the type as `plan --list` and the object's file name print it.
func (p *Plan) suffix(t ostree.ObjectType) string {
	if t == ostree.ObjFile {
		return p.FileSuffix
	}
	return t.String()
}

// sortEntries orders entries as the listing prints them: by checksum, then
// by the printed type (string order: commit < commitmeta < dirmeta <
// dirtree < file[z]).
func (p *Plan) sortEntries() {
	slices.SortFunc(p.entries, func(a, b Entry) int {
		if c := bytes.Compare(a.Checksum[:], b.Checksum[:]); c != 0 {
			return c
		}
		sa, sb := p.suffix(a.Type), p.suffix(b.Type)
		switch {
		case sa < sb:
			return -1
		case sa > sb:
			return 1
		}
		return 0
	})
}

// ComputePlan lists every loose object and plans the deletion of those that
// the roots (commits) do not reach at depth 0. fileSuffix is the repository
// mode's content suffix ("file" or "filez").
//
// As ostree, a .commitmeta is only deleted together with its commit (ostree
// lists no .commitmeta and unlinks it when it deletes the commit), so a
// detached-metadata file whose commit is kept, or absent, is kept. Types
// other than commit, commitmeta, dirtree, dirmeta and file are kept.
//
// Any error (walk, listing, cancellation) returns no plan.
func ComputePlan(ctx context.Context, all ObjectLister, roots []ostree.ObjectName, fileSuffix string, children ChildrenFunc, opts ...Option) (*Plan, error) {
	if err := checkSuffix(fileSuffix); err != nil {
		return nil, err
	}
	rs, err := normRoots(roots)
	if err != nil {
		return nil, err
	}
	// Walk first, then list and keep only what the walk did not reach: the
	// listing is never held whole (running both at once was measured no
	// faster on 2 cores, and would hold every listed name).
	reach, err := Reachable(ctx, rs, children, opts...)
	if err != nil {
		return nil, err
	}
	p := &Plan{Roots: rs, RootsHash: RootsHash(rs), FileSuffix: fileSuffix}
	listed, unsized := 0, 0
	err = all.ListObjects(func(o ostree.ObjectName, size int64) error {
		listed++
		if listed&0xfff == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if !plannable(o.Type) || reach.Has(o) {
			return nil
		}
		if size < 0 {
			unsized++
		}
		p.entries = append(p.entries, Entry{Checksum: o.Checksum, Type: o.Type, Size: uint64(size)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing objects: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if unsized > 0 {
		if err := p.sizeEntries(ctx, all); err != nil {
			return nil, err
		}
	}
	p.sortEntries()
	p.entries = slices.CompactFunc(p.entries, func(a, b Entry) bool { return a.Checksum == b.Checksum && a.Type == b.Type })
	p.dropOrphanCommitMeta()
	p.entries = slices.Clip(p.entries)
	p.recount()
	p.Stats.Listed = listed
	p.Stats.Reachable = reach.Len()
	return p, nil
}

// sizeEntries fills in the sizes a lister reported as unknown.
func (p *Plan) sizeEntries(ctx context.Context, all ObjectLister) error {
	sizer, ok := all.(ObjectSizer)
	out := p.entries[:0]
	for i, e := range p.entries {
		if int64(e.Size) >= 0 { // -1 ("unknown") was stored as MaxUint64
			out = append(out, e)
			continue
		}
		if !ok {
			return fmt.Errorf("object %s: lister reported no size: %w", e.Name(), ostree.ErrCorrupt)
		}
		if i&0xff == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		size, err := sizer.ObjectSize(e.Name())
		if errors.Is(err, ostree.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("object %s: size: %w", e.Name(), err)
		}
		if size < 0 {
			return fmt.Errorf("object %s: negative size %d: %w", e.Name(), size, ostree.ErrCorrupt)
		}
		e.Size = uint64(size)
		out = append(out, e)
	}
	p.entries = out
	return nil
}

// dropOrphanCommitMeta keeps every .commitmeta whose commit is not planned.
// In listing order a commit sorts right before its commitmeta.
func (p *Plan) dropOrphanCommitMeta() {
	out := p.entries[:0]
	var prev Entry // the previous input entry (out may lag behind)
	for i, e := range p.entries {
		keep := e.Type != ostree.ObjCommitMeta ||
			(i > 0 && prev.Type == ostree.ObjCommit && prev.Checksum == e.Checksum)
		prev = e
		if keep {
			out = append(out, e)
		}
	}
	p.entries = out
}

func (p *Plan) recount() {
	p.Stats = Stats{}
	for _, e := range p.entries {
		p.Stats.add(e.Type, e.Size)
	}
}

// NewPlan rebuilds a plan from stored parts (the store's persisted plan).
// Every entry is validated (a known type among commit, commitmeta, dirtree,
// dirmeta, file; a non-zero checksum; no duplicate) and every root must be a
// commit: one bad entry rejects the whole plan, so nothing is ever deleted
// from a plan that did not survive storage intact. Entries come back pending.
func NewPlan(roots []ostree.ObjectName, fileSuffix string, entries []Entry) (*Plan, error) {
	if err := checkSuffix(fileSuffix); err != nil {
		return nil, err
	}
	rs, err := normRoots(roots)
	if err != nil {
		return nil, err
	}
	p := &Plan{Roots: rs, RootsHash: RootsHash(rs), FileSuffix: fileSuffix, entries: make([]Entry, len(entries))}
	for i, e := range entries {
		e.state = statePending
		p.entries[i] = e
	}
	p.sortEntries()
	if err := p.Validate(); err != nil {
		return nil, err
	}
	p.recount()
	return p, nil
}

// Validate checks every entry as NewPlan does. Execute calls it before it
// deletes anything.
func (p *Plan) Validate() error {
	if err := checkSuffix(p.FileSuffix); err != nil {
		return err
	}
	if _, err := normRoots(p.Roots); err != nil {
		return err
	}
	for i := 1; i < len(p.Roots); i++ {
		if compareNames(p.Roots[i-1], p.Roots[i]) >= 0 {
			return fmt.Errorf("roots not sorted and unique at %s: %w", p.Roots[i], ErrBadPlan)
		}
	}
	if p.RootsHash != RootsHash(p.Roots) {
		return fmt.Errorf("roots hash %q does not match the plan's roots: %w", p.RootsHash, ErrBadPlan)
	}
	for i, r := range p.ImageRefs {
		if err := validImageRef(r); err != nil {
			return err
		}
		if i > 0 && compareImageRefs(p.ImageRefs[i-1], r) >= 0 {
			return fmt.Errorf("image refs not sorted and unique at %q: %w", truncateStr(r.Name), ErrBadPlan)
		}
	}
	for i, e := range p.entries {
		if !plannable(e.Type) {
			return fmt.Errorf("entry %d: %s: type not deletable: %w", i, e.Name(), ErrBadPlan)
		}
		if e.Checksum.IsZero() {
			return fmt.Errorf("entry %d: %s: zero checksum: %w", i, e.Name(), ErrBadPlan)
		}
		if i > 0 && p.entries[i-1].Checksum == e.Checksum && p.entries[i-1].Type == e.Type {
			return fmt.Errorf("entry %d: %s: duplicate: %w", i, e.Name(), ErrBadPlan)
		}
	}
	return nil
}

// Entries returns a copy of every entry in listing order, whatever its
// progress.
func (p *Plan) Entries() []Entry { return slices.Clone(p.entries) }

// Len is the number of planned objects.
func (p *Plan) Len() int { return len(p.entries) }

// Remaining returns the entries Execute has not yet deleted nor dropped as
// live: what a resumed cleanup still has to do (persist these to resume
// after a restart).
func (p *Plan) Remaining() []Entry {
	var out []Entry
	for _, e := range p.entries {
		if e.state == statePending {
			out = append(out, e)
		}
	}
	return out
}

// Pending is Stats over Remaining.
func (p *Plan) Pending() Stats {
	var s Stats
	for _, e := range p.entries {
		if e.state == statePending {
			s.add(e.Type, e.Size)
		}
	}
	return s
}

// Summary is the JSON form of a plan (`plan --json`).
type Summary struct {
	RootsHash  string   `json:"roots_hash"`
	Roots      []string `json:"roots"`
	FileSuffix string   `json:"file_suffix"`
	Stats
	// Images is what undeployed images hold (see ImagesReport).
	Images ImagesReport `json:"images"`
}

// Summary returns the plan's JSON form.
func (p *Plan) Summary() Summary {
	s := Summary{RootsHash: p.RootsHash, FileSuffix: p.FileSuffix, Stats: p.Stats, Roots: make([]string, len(p.Roots))}
	for i, r := range p.Roots {
		s.Roots[i] = r.Checksum.String()
	}
	if p.Images != nil {
		s.Images = *p.Images
	}
	if s.Images.Refs == nil {
		s.Images.Refs = []ImageUsage{}
	}
	s.Images.GC = s.Images.GC || len(p.ImageRefs) > 0
	return s
}

// ObjectString is the entry as `plan --list` prints it: "<64-hex>.<type>"
// with the repository's content suffix for files.
func (p *Plan) ObjectString(e Entry) string { return e.Checksum.String() + "." + p.suffix(e.Type) }

// WriteList writes `plan --list`: one planned object per line, sorted.
func (p *Plan) WriteList(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var line [64 + 1 + 16 + 1]byte
	for _, e := range p.entries {
		hex.Encode(line[:64], e.Checksum[:])
		b := append(line[:64], '.')
		b = append(b, p.suffix(e.Type)...)
		b = append(b, '\n')
		if _, err := bw.Write(b); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// ParseObjectString parses one `plan --list` line ("<64-hex>.<type>") with
// the given content suffix; it is strict (as ostree_validate_checksum_string)
// because its output becomes a path.
func ParseObjectString(s, fileSuffix string) (ostree.ObjectName, error) {
	if err := checkSuffix(fileSuffix); err != nil {
		return ostree.ObjectName{}, err
	}
	if len(s) < 66 || s[64] != '.' {
		return ostree.ObjectName{}, fmt.Errorf("object %q: want <64-hex>.<type>: %w", truncateStr(s), ErrBadPlan)
	}
	c, err := ostree.ParseChecksum(s[:64])
	if err != nil {
		return ostree.ObjectName{}, fmt.Errorf("object %q: %w: %w", truncateStr(s), err, ErrBadPlan)
	}
	var t ostree.ObjectType
	switch suf := s[65:]; suf {
	case "commit":
		t = ostree.ObjCommit
	case "commitmeta":
		t = ostree.ObjCommitMeta
	case "dirtree":
		t = ostree.ObjDirTree
	case "dirmeta":
		t = ostree.ObjDirMeta
	default:
		if suf != fileSuffix {
			return ostree.ObjectName{}, fmt.Errorf("object %q: unknown type %q: %w", truncateStr(s), suf, ErrBadPlan)
		}
		t = ostree.ObjFile
	}
	return ostree.ObjectName{Checksum: c, Type: t}, nil
}

func truncateStr(s string) string {
	if len(s) > 90 {
		return s[:90] + "..."
	}
	return s
}
