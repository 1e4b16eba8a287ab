package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// StagedID identifies the staged deployment a runtime store describes. A
// store whose StagedID differs from the live staged deployment is stale and
// is rebuilt (re-stage).
type StagedID struct {
	OSName   string `json:"osname"`
	Checksum string `json:"checksum"`
	Serial   int    `json:"serial"`
	BootCsum string `json:"bootcsum,omitempty"`
}

// Etc states, as `status --json` reports them.
const (
	EtcNone        = "none"
	EtcPrecomputed = "precomputed"
	EtcDirty       = "dirty"
	EtcSealed      = "sealed"
	EtcFallback    = "fallback"
)

// Prune states, as `status --json` reports them.
const (
	PruneNone    = "none"
	PrunePlanned = "planned"
	PruneInvalid = "invalid"
)

// State is the small, frequently read part of the runtime store. The zero
// value means nothing has been precomputed.
type State struct {
	Staged *StagedID `json:"staged,omitempty"` // nil: no staged deployment recorded

	EtcState  string `json:"etc_state,omitempty"`  // one of Etc*; "" reads as EtcNone
	EtcReason string `json:"etc_reason,omitempty"` // why the last etc transition happened
	Takeover  bool   `json:"takeover,omitempty"`   // the staged state on disk is our rewrite
	// Policy is the outcome of our SELinux policy refresh of the staged
	// deployment (lifecycle.PolicyState), meaningful with Takeover.
	Policy string `json:"policy,omitempty"`

	PruneState   string `json:"prune_state,omitempty"` // one of Prune*; "" reads as PruneNone
	PruneReason  string `json:"prune_reason,omitempty"`
	PruneObjects int64  `json:"prune_objects,omitempty"`
	PruneBytes   int64  `json:"prune_bytes,omitempty"`
	RootsHash    string `json:"roots_hash,omitempty"`

	UpdatedAt time.Time `json:"updated_at"`
}

// Transition is one entry of the short history kept for `status` and logs.
type Transition struct {
	At     time.Time `json:"at"`
	What   string    `json:"what"` // "etc" or "prune"
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason,omitempty"`
}

// Blob names in the runtime store.
const (
	BlobOrigStaged = "orig-staged" // ostree's staged-deployment bytes before takeover
	BlobBaseline   = "baseline"    // the lifecycle's baseline (etcmerge.Baseline) of the booted /etc
	BlobPlan       = "plan"        // prune's plan
)

// HistoryLen is how many transitions are kept.
const HistoryLen = 64

var (
	bucketState   = []byte("state")
	bucketBlobs   = []byte("blobs")
	bucketPending = []byte("pending")
	bucketHistory = []byte("history")
	keyState      = []byte("state")
)

// RuntimeTx is one transaction on the runtime store. It is only valid
// inside the function given to ViewRuntime or UpdateRuntime.
type RuntimeTx struct {
	tx *bolt.Tx
}

// ViewRuntime runs fn in a read-only transaction on the runtime store.
// ErrNotExist when there is none.
func ViewRuntime(runDir string, fn func(*RuntimeTx) error) error {
	return view(RuntimePath(runDir), func(tx *bolt.Tx) error { return fn(&RuntimeTx{tx}) })
}

// UpdateRuntime runs fn in a read-write transaction, creating the store (and
// its 0700 directory) when missing. Returning an error from fn discards
// every change fn made.
func UpdateRuntime(runDir string, fn func(*RuntimeTx) error) error {
	return update(RuntimePath(runDir), true, true, func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketState, bucketBlobs, bucketPending, bucketHistory} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return fn(&RuntimeTx{tx})
	})
}

// State returns the recorded state; the zero State when none was written.
func (t *RuntimeTx) State() (State, error) {
	var s State
	b := t.tx.Bucket(bucketState)
	if b == nil {
		return s, nil
	}
	v, err := get(t.tx, b, keyState)
	if err != nil {
		return State{}, err
	}
	if v == nil {
		return s, nil
	}
	if err := json.Unmarshal(v, &s); err != nil {
		return State{}, fmt.Errorf("runtime state: %v: %w", err, ErrCorrupt)
	}
	return s, nil
}

// PutState records s, and appends a history entry for each of the etc and
// prune states that changed, with its reason.
func (t *RuntimeTx) PutState(s State) error {
	old, err := t.State()
	if err != nil {
		return err
	}
	s.UpdatedAt = time.Now().UTC()
	if norm(old.EtcState, EtcNone) != norm(s.EtcState, EtcNone) {
		if err := t.record(Transition{At: s.UpdatedAt, What: "etc", From: norm(old.EtcState, EtcNone), To: norm(s.EtcState, EtcNone), Reason: s.EtcReason}); err != nil {
			return err
		}
	}
	if norm(old.PruneState, PruneNone) != norm(s.PruneState, PruneNone) {
		if err := t.record(Transition{At: s.UpdatedAt, What: "prune", From: norm(old.PruneState, PruneNone), To: norm(s.PruneState, PruneNone), Reason: s.PruneReason}); err != nil {
			return err
		}
	}
	v, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return t.tx.Bucket(bucketState).Put(keyState, v)
}

func norm(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (t *RuntimeTx) record(tr Transition) error {
	b := t.tx.Bucket(bucketHistory)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	v, err := json.Marshal(tr)
	if err != nil {
		return err
	}
	if err := b.Put(seqKey(seq), v); err != nil {
		return err
	}
	// Keep the last HistoryLen entries.
	if seq > HistoryLen {
		c := b.Cursor()
		for k, _ := c.First(); k != nil && decodeSeq(k) <= seq-HistoryLen; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
	}
	return nil
}

// History returns the kept transitions, oldest first.
func (t *RuntimeTx) History() ([]Transition, error) {
	b := t.tx.Bucket(bucketHistory)
	if b == nil {
		return nil, nil
	}
	var out []Transition
	err := b.ForEach(func(k, v []byte) error {
		if err := checkLen(t.tx, k, v); err != nil {
			return err
		}
		var tr Transition
		if err := json.Unmarshal(v, &tr); err != nil {
			return fmt.Errorf("history entry %x: %v: %w", k, err, ErrCorrupt)
		}
		out = append(out, tr)
		return nil
	})
	return out, err
}

// Blob returns a copy of the named blob, or nil when absent.
func (t *RuntimeTx) Blob(name string) []byte {
	b := t.tx.Bucket(bucketBlobs)
	if b == nil {
		return nil
	}
	v, err := get(t.tx, b, []byte(name))
	if err != nil {
		// Blob has no error result; the panic is turned into ErrCorrupt
		// for the whole transaction by ViewRuntime/UpdateRuntime.
		panic(err)
	}
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

// PutBlob stores (or, with nil, deletes) the named blob.
func (t *RuntimeTx) PutBlob(name string, v []byte) error {
	b := t.tx.Bucket(bucketBlobs)
	if v == nil {
		return b.Delete([]byte(name))
	}
	return b.Put([]byte(name), v)
}

// AddPending marks paths (relative to /etc) as changed but not yet applied.
func (t *RuntimeTx) AddPending(paths ...string) error {
	b := t.tx.Bucket(bucketPending)
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := b.Put([]byte(p), nil); err != nil {
			return fmt.Errorf("pending path %q: %w", p, err)
		}
	}
	return nil
}

// RemovePending unmarks paths once they are applied.
func (t *RuntimeTx) RemovePending(paths ...string) error {
	b := t.tx.Bucket(bucketPending)
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := b.Delete([]byte(p)); err != nil {
			return err
		}
	}
	return nil
}

// Pending returns up to limit pending paths (all when limit <= 0), sorted,
// and how many there are in all.
func (t *RuntimeTx) Pending(limit int) ([]string, int) {
	b := t.tx.Bucket(bucketPending)
	if b == nil {
		return nil, 0
	}
	n := b.Stats().KeyN
	var out []string
	c := b.Cursor()
	for k, _ := c.First(); k != nil && (limit <= 0 || len(out) < limit); k, _ = c.Next() {
		if err := checkLen(t.tx, k, nil); err != nil {
			panic(err) // see Blob
		}
		out = append(out, string(k))
	}
	return out, n
}

// Clear removes every state, blob and pending path (history stays), for a
// new staged deployment or a reset.
func (t *RuntimeTx) Clear() error {
	for _, name := range [][]byte{bucketState, bucketBlobs, bucketPending} {
		if err := t.tx.DeleteBucket(name); err != nil {
			return err
		}
		if _, err := t.tx.CreateBucket(name); err != nil {
			return err
		}
	}
	return nil
}

func seqKey(seq uint64) []byte {
	k := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		k[i] = byte(seq)
		seq >>= 8
	}
	return k
}

func decodeSeq(k []byte) uint64 {
	var s uint64
	for _, b := range k {
		s = s<<8 | uint64(b)
	}
	return s
}
