package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/durable"
	bolt "go.etcd.io/bbolt"
)

// PersistedPlan is what `finalize --post` leaves for the next boot's
// `cleanup`: the plan (opaque, encoded by package prune) and what it depends
// on.
type PersistedPlan struct {
	Plan      []byte    // prune's encoded plan
	RootsHash string    // the roots hash the plan was computed for
	Staged    StagedID  // the deployment whose finalization made these objects unreachable
	Objects   int64     // counts, for status without decoding the plan
	Bytes     int64     //
	CreatedAt time.Time //
}

type planMeta struct {
	// BodySHA256 guards the plan body: bbolt checksums only its meta pages,
	// and a flipped bit in an object name must never become a deletion.
	BodySHA256 string    `json:"body_sha256"`
	RootsHash  string    `json:"roots_hash"`
	Staged     StagedID  `json:"staged"`
	Objects    int64     `json:"objects"`
	Bytes      int64     `json:"bytes"`
	CreatedAt  time.Time `json:"created_at"`
}

var (
	bucketPlan  = []byte("plan")
	keyPlanMeta = []byte("meta")
	keyPlanBody = []byte("body")
)

// WritePlan persists p at PlanPath(sysroot) atomically and durably through
// the shared writer (internal/durable, Full): the plan is written whole into
// a temporary store beside the final name (bbolt fsyncs it on commit, and
// the writer fsyncs it once more, cheaply), renamed over the final name, and
// the directory is fsynced, so after WritePlan returns the plan survives a
// crash, and at no instant is a partial plan visible under the final name.
// The temporary has a fixed name (cleanup.db.tmp): the plan's writers are
// serialised by the repository lock, and a stale one left by a crash is
// removed first.
func WritePlan(sysroot string, p PersistedPlan) error {
	final := PlanPath(sysroot)
	dir := filepath.Dir(final)
	if err := ensureDir(dir, 0o700); err != nil {
		return err
	}
	sum := sha256.Sum256(p.Plan)
	meta, err := json.Marshal(planMeta{hex.EncodeToString(sum[:]), p.RootsHash, p.Staged, p.Objects, p.Bytes, p.CreatedAt.UTC()})
	if err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("persist plan: %w", err)
	}
	defer d.Close()
	tg := durable.Target{Dir: int(d.Fd()), DirPath: dir, Name: filepath.Base(final), Perm: 0o600, Temp: filepath.Base(final) + ".tmp"}
	err = PlanFS.Write(tg, func(f *os.File) error {
		// bbolt opens the (empty) temporary by name and fills it.
		return update(f.Name(), true, false, func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bucketPlan)
			if err != nil {
				return err
			}
			if err := b.Put(keyPlanMeta, meta); err != nil {
				return err
			}
			return b.Put(keyPlanBody, p.Plan)
		})
	})
	if err != nil {
		return fmt.Errorf("persist plan: %w", err)
	}
	return nil
}

// PlanFS is the filesystem WritePlan writes through; tests replace one step
// with a failing one.
var PlanFS = durable.Real()

// ReadPlan reads the persisted plan; ErrNotExist when there is none.
func ReadPlan(sysroot string) (*PersistedPlan, error) {
	path := PlanPath(sysroot)
	var out *PersistedPlan
	err := view(path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPlan)
		if b == nil {
			return fmt.Errorf("store %s: no plan bucket: %w", path, ErrCorrupt)
		}
		var m planMeta
		mv, err := get(tx, b, keyPlanMeta)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(mv, &m); err != nil {
			return fmt.Errorf("store %s: plan metadata: %v: %w", path, err, ErrCorrupt)
		}
		body, err := get(tx, b, keyPlanBody)
		if err != nil {
			return err
		}
		if body == nil {
			return fmt.Errorf("store %s: plan body missing: %w", path, ErrCorrupt)
		}
		if sum := sha256.Sum256(body); hex.EncodeToString(sum[:]) != m.BodySHA256 {
			return fmt.Errorf("store %s: plan body does not match its checksum: %w", path, ErrCorrupt)
		}
		out = &PersistedPlan{
			Plan: append([]byte(nil), body...), RootsHash: m.RootsHash, Staged: m.Staged,
			Objects: m.Objects, Bytes: m.Bytes, CreatedAt: m.CreatedAt,
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrNotExist) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsafe) || errors.Is(err, ErrBusy) {
			return nil, err
		}
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return out, nil
}

// RemovePlan removes the persisted plan durably once it has been executed.
func RemovePlan(sysroot string) error {
	return Reset(PlanPath(sysroot))
}
