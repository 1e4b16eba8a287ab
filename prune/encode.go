package prune

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// planMagic opens every encoded plan; the trailing digit is the format
// version. A plan in another format is refused, never guessed at. Version
// 2 adds the image-store refs of a plan with image GC; a plan without them
// is still written (and read) as version 1, byte for byte as before.
const (
	planMagic   = "OPFPLAN1"
	planMagicV2 = "OPFPLAN2"
)

// maxImageRefs bounds the refs a decoder accepts.
const maxImageRefs = 1 << 20

// entrySize is one encoded entry: checksum, type, size.
const entrySize = 32 + 1 + 8

// maxPlanEntries bounds what a decoder accepts, so a corrupt count cannot
// make us allocate without limit: far above any real repository.
const maxPlanEntries = 1 << 28

// MarshalBinary encodes the plan's roots, file suffix and the entries still
// pending (what a resumed run has to do), big-endian:
//
//	"OPFPLAN1" | u8 len, suffix | u32 nroots, nroots × 32-byte checksum |
//	u64 nentries, nentries × (32-byte checksum, u8 type, u64 size)
//
// The roots hash is not stored: UnmarshalPlan recomputes it from the roots.
// A plan with image refs starts "OPFPLAN2" and has, right after the roots,
//
//	u32 nrefs, nrefs × (u8 kind, 32-byte commit, u16 len, name, u16 len, digest)
//
// with only the refs still to handle.
func (p *Plan) MarshalBinary() ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	rem := p.Remaining()
	b := make([]byte, 0, len(planMagic)+1+len(p.FileSuffix)+4+32*len(p.Roots)+8+entrySize*len(rem))
	if len(p.ImageRefs) == 0 {
		b = append(b, planMagic...)
	} else {
		b = append(b, planMagicV2...)
	}
	b = append(b, byte(len(p.FileSuffix)))
	b = append(b, p.FileSuffix...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(p.Roots)))
	for _, r := range p.Roots {
		b = append(b, r.Checksum[:]...)
	}
	if len(p.ImageRefs) > 0 {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p.ImageRefs)))
		for _, r := range p.ImageRefs {
			b = append(b, byte(r.Kind))
			b = append(b, r.Commit[:]...)
			b = binary.BigEndian.AppendUint16(b, uint16(len(r.Name)))
			b = append(b, r.Name...)
			b = binary.BigEndian.AppendUint16(b, uint16(len(r.Digest)))
			b = append(b, r.Digest...)
		}
	}
	b = binary.BigEndian.AppendUint64(b, uint64(len(rem)))
	for _, e := range rem {
		b = append(b, e.Checksum[:]...)
		b = append(b, byte(e.Type))
		b = binary.BigEndian.AppendUint64(b, e.Size)
	}
	return b, nil
}

// UnmarshalPlan decodes what MarshalBinary wrote and validates it as
// NewPlan does: a truncated, oversized or inconsistent encoding, an unknown
// type or a duplicate entry rejects the whole plan (ErrBadPlan), before
// anything can be deleted from it.
func UnmarshalPlan(b []byte) (*Plan, error) {
	d := decoder{b: b}
	magic := string(d.take(len(planMagic)))
	if magic != planMagic && magic != planMagicV2 {
		return nil, fmt.Errorf("plan: not an encoded plan (bad magic): %w", ErrBadPlan)
	}
	n := d.take(1)
	if n == nil {
		return nil, fmt.Errorf("plan: truncated: %w", ErrBadPlan)
	}
	suffix := string(d.take(int(n[0])))
	nroots := d.u32()
	if d.err || uint64(nroots)*32 > uint64(len(d.b)) {
		return nil, fmt.Errorf("plan: truncated roots (%d announced): %w", nroots, ErrBadPlan)
	}
	roots := make([]ostree.ObjectName, nroots)
	for i := range roots {
		copy(roots[i].Checksum[:], d.take(32))
		roots[i].Type = ostree.ObjCommit
	}
	var refs []ImageRef
	if magic == planMagicV2 {
		nrefs := d.u32()
		if d.err || nrefs == 0 || nrefs > maxImageRefs || uint64(nrefs)*(1+32+2+2) > uint64(len(d.b)) {
			return nil, fmt.Errorf("plan: %d image refs announced: %w", nrefs, ErrBadPlan)
		}
		refs = make([]ImageRef, nrefs)
		for i := range refs {
			r := &refs[i]
			if k := d.take(1); k != nil {
				r.Kind = ImageRefKind(k[0])
			}
			copy(r.Commit[:], d.take(32))
			r.Name = string(d.take(int(d.u16())))
			r.Digest = string(d.take(int(d.u16())))
		}
		if d.err {
			return nil, fmt.Errorf("plan: truncated image refs: %w", ErrBadPlan)
		}
	}
	nent := d.u64()
	if d.err || nent > maxPlanEntries || nent*entrySize != uint64(len(d.b)) {
		return nil, fmt.Errorf("plan: %d entries announced, %d bytes left: %w", nent, len(d.b), ErrBadPlan)
	}
	entries := make([]Entry, nent)
	for i := range entries {
		e := &entries[i]
		copy(e.Checksum[:], d.take(32))
		e.Type = ostree.ObjectType(d.take(1)[0])
		e.Size = d.u64()
	}
	p, err := NewPlan(roots, suffix, entries)
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	p.ImageRefs = refs
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	// MarshalBinary writes one canonical form (roots and entries sorted and
	// unique). Anything else did not come from us intact: refuse it.
	again, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	if !bytes.Equal(again, b) {
		return nil, fmt.Errorf("plan: not in canonical form (unsorted or duplicate roots or entries): %w", ErrBadPlan)
	}
	return p, nil
}

type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) take(n int) []byte {
	if d.err || n > len(d.b) {
		d.err = true
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u16() uint16 {
	v := d.take(2)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint16(v)
}

func (d *decoder) u32() uint32 {
	v := d.take(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (d *decoder) u64() uint64 {
	v := d.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}
