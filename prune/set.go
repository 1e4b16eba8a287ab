package prune

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"sync"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// Set is a set of object names built for the reachability walk of a whole
// repository: 1M objects must cost tens of MB, not hundreds, and many
// goroutines insert at once.
//
// It is a flat open-addressing hash table (linear probing) split into
// shards, each under its own mutex. A slot is an ostree.ObjectName: the 32
// checksum bytes and the type byte, 33 bytes without padding (type 0, which
// ostree never uses, marks an empty slot), so an object costs 33/load bytes,
// with the load kept between 0.68 and 0.85 by growing shards 1.25×.
// Sharding also keeps a resize cheap: only one shard's old and new tables
// coexist at a time.
//
// The zero value is not usable; use NewSet. All methods are safe for
// concurrent use.
type Set struct {
	shards [setShards]setShard
}

const (
	setShards    = 256
	setMinSlots  = 16
	setMaxLoadNm = 85 // grow when n*100 > slots*85
)

type setShard struct {
	mu    sync.Mutex
	seed  uint64 // the set's seed, copied so that grow can rehash
	slots []ostree.ObjectName
	n     int
	_     [16]byte // keep neighbouring shards' mutexes off one cache line
}

// NewSet returns an empty set.
func NewSet() *Set {
	// A random seed per set: checksums are SHA-256 outputs, but objects come
	// from updates we do not control, and a seed makes it pointless to aim
	// many of them at one probe sequence.
	s := &Set{}
	seed := rand.Uint64()
	for i := range s.shards {
		s.shards[i].seed = seed
	}
	return s
}

// mix64 is splitmix64's finalizer: a bijection with good avalanche.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func hashObject(seed uint64, o ostree.ObjectName) uint64 {
	// Checksums are SHA-256 outputs, so 16 of their bytes are plenty of
	// entropy; the type is mixed in because a commit and its commitmeta share
	// a checksum.
	w0 := binary.LittleEndian.Uint64(o.Checksum[0:8])
	w1 := binary.LittleEndian.Uint64(o.Checksum[8:16])
	return mix64(w0 ^ seed ^ mix64(w1^uint64(o.Type)))
}

// Add inserts o and reports whether it was absent. Objects of type 0 are
// not valid ostree objects and are never stored (Add returns false).
func (s *Set) Add(o ostree.ObjectName) bool {
	if o.Type == 0 {
		return false
	}
	h := hashObject(s.shards[0].seed, o)
	sh := &s.shards[h>>56]
	sh.mu.Lock()
	added := sh.add(o, h)
	sh.mu.Unlock()
	return added
}

// Has reports whether o is in the set.
func (s *Set) Has(o ostree.ObjectName) bool {
	if o.Type == 0 {
		return false
	}
	h := hashObject(s.shards[0].seed, o)
	sh := &s.shards[h>>56]
	sh.mu.Lock()
	found := sh.find(o, h) >= 0
	sh.mu.Unlock()
	return found
}

// Len is the number of objects in the set.
func (s *Set) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.n
		sh.mu.Unlock()
	}
	return n
}

// Range calls fn for every member, in no particular order, until fn returns
// false. The set must not be modified meanwhile.
func (s *Set) Range(fn func(o ostree.ObjectName) bool) {
	for i := range s.shards {
		sh := &s.shards[i]
		for _, o := range sh.slots {
			if o.Type != 0 && !fn(o) {
				return
			}
		}
	}
}

// slot maps the hash onto [0, len) without a power-of-two size
// (Lemire's multiply-shift), so shards can grow by 1.5×. The top byte chose
// the shard, so the low 56 bits are used here.
func slot(h uint64, n int) int {
	hi, _ := bits.Mul64(h<<8, uint64(n))
	return int(hi)
}

func (sh *setShard) find(o ostree.ObjectName, h uint64) int {
	n := len(sh.slots)
	if n == 0 {
		return -1
	}
	for i := slot(h, n); ; {
		s := &sh.slots[i]
		if s.Type == 0 {
			return -1
		}
		if *s == o {
			return i
		}
		if i++; i == n {
			i = 0
		}
	}
}

func (sh *setShard) add(o ostree.ObjectName, h uint64) bool {
	if (sh.n+1)*100 > len(sh.slots)*setMaxLoadNm {
		sh.grow()
	}
	n := len(sh.slots)
	w0 := binary.LittleEndian.Uint64(o.Checksum[0:8])
	for i := slot(h, n); ; {
		s := &sh.slots[i]
		if s.Type == 0 {
			*s = o
			sh.n++
			return true
		}
		// Most probes meet another object: its first word differs.
		if binary.LittleEndian.Uint64(s.Checksum[0:8]) == w0 && *s == o {
			return false
		}
		if i++; i == n {
			i = 0
		}
	}
}

// grow rehashes into a table 1.25× larger: a small factor keeps the load,
// hence the bytes per object, high; the extra rehashing is cheap next to
// the I/O of the walk.
func (sh *setShard) grow() {
	newN := len(sh.slots) * 5 / 4
	if newN < setMinSlots {
		newN = setMinSlots
	}
	old := sh.slots
	sh.slots = make([]ostree.ObjectName, newN)
	sh.n = 0
	for _, o := range old {
		if o.Type != 0 {
			sh.add(o, hashObject(sh.seed, o))
		}
	}
}
