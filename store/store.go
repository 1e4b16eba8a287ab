// Package store keeps ostree-prefinalize's state in bbolt files.
//
// # Basics
//
// There are two stores with the same mechanics and different lifetimes:
//
//   - the runtime store, <run-dir>/ostree-prefinalize/state.db, lives in /run
//     and so dies with the boot: the staged deployment's identity, the /etc
//     merge state and its baseline, the pending paths the watcher has not
//     applied yet, the prune plan with its roots hash, ostree's original
//     staged-state bytes (for every fallback), and a short history of
//     transitions with their reasons;
//   - the persisted plan, <sysroot>/ostree/prefinalize/cleanup.db, written by
//     `finalize --post` and consumed by `cleanup` at next boot.
//
// Several processes use a store at once (the watcher writing, status
// reading, stage re-running). bbolt holds an flock on the file for as long as
// it is open, exclusive for writers, so every operation opens the file, runs
// one short transaction and closes it: nobody holds it for long, and a
// transaction is all-or-nothing, so nobody sees a half-written state. Slow
// work (merging, planning) happens outside, and only its result is stored.
//
// # Caveats
//
// Blobs (baseline, plan) are opaque here: their owners encode and decode
// them, and must validate them on decode (they come from disk).
//
// A store that cannot be read (garbage, wrong schema version, a panic inside
// bbolt on a corrupt page) is reported as ErrCorrupt. Callers then take the
// safe fallback: no takeover or ostree's staged state restored, no deletion.
// The documented reset is to remove the file (Reset does exactly that): the
// runtime store is rebuilt by the next `stage`; a removed persisted plan only
// means that nothing is deleted until ostree's own cleanup runs.
package store

//go:generate go run ./internal/genseeds testdata

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is written into every store; a store with another version is
// treated as corrupt (never guessed at).
const SchemaVersion = 1

var (
	// ErrCorrupt: the file exists but is not a store we can trust.
	ErrCorrupt = errors.New("store corrupt or of an unknown version")
	// ErrUnsafe: the store's directory is a symlink, not a directory, or
	// writable by others; we refuse to use it.
	ErrUnsafe = errors.New("unsafe store location")
	// ErrBusy: another process held the store longer than the lock timeout.
	ErrBusy = errors.New("store busy")
	// ErrNotExist: there is no store (nothing staged, nothing pending).
	ErrNotExist = errors.New("no store")
)

// LockTimeout bounds how long an operation waits for another process's
// transaction. Transactions are short, so this is generous.
var LockTimeout = 5 * time.Second

// RuntimePath is where the runtime store lives for a run directory.
func RuntimePath(runDir string) string {
	return filepath.Join(runDir, "ostree-prefinalize", "state.db")
}

// RuntimeDir creates (when missing) and checks the runtime store's
// directory, <runDir>/ostree-prefinalize, and returns it. Every other file
// of ours under the run directory (locks, the backup of ostree's staged
// state) is created there only after this check, so a directory that is a
// symlink, not ours, or writable by group or others is ErrUnsafe before
// anything is written into it (or through it).
func RuntimeDir(runDir string) (string, error) {
	dir := filepath.Dir(RuntimePath(runDir))
	return dir, ensureDir(dir, 0o700)
}

// PlanPath is where the persisted plan lives for a sysroot.
func PlanPath(sysroot string) string {
	return filepath.Join(sysroot, "ostree", "prefinalize", "cleanup.db")
}

// Reset removes a store file (the documented way out of ErrCorrupt). A
// missing file is not an error.
func Reset(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reset store %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// checkDir refuses a store directory that is a symlink, not a directory,
// not owned by us, or writable by group or others: whoever can write there
// could swap the file we trust to decide what to delete.
func checkDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("store directory %s: %w", dir, ErrNotExist)
		}
		return fmt.Errorf("store directory %s: %w", dir, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("store directory %s is a symlink: %w", dir, ErrUnsafe)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("store directory %s is not a directory: %w", dir, ErrUnsafe)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("store directory %s is writable by group or others (mode %04o): %w", dir, st.Mode&0o7777, ErrUnsafe)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("store directory %s is owned by uid %d, not us: %w", dir, st.Uid, ErrUnsafe)
	}
	return nil
}

// ensureDir creates dir (mode perm) when missing and makes the creation
// durable by syncing its parent; then checks it.
func ensureDir(dir string, perm os.FileMode) error {
	err := os.Mkdir(dir, perm)
	switch {
	case err == nil:
		// The new directory entry must survive a crash before we rely on
		// files inside it, so sync the parent.
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return err
		}
	case errors.Is(err, os.ErrExist):
	default:
		return fmt.Errorf("create store directory %s: %w", dir, err)
	}
	return checkDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// open opens (or, with create, creates) a store file and checks its schema.
func open(path string, create, readOnly, noSync bool) (db *bolt.DB, err error) {
	dir := filepath.Dir(path)
	if create {
		if err := ensureDir(dir, 0o700); err != nil {
			return nil, err
		}
	} else if err := checkDir(dir); err != nil {
		return nil, err
	}
	var st unix.Stat_t
	switch err := unix.Lstat(path, &st); {
	case errors.Is(err, unix.ENOENT):
		if !create {
			return nil, fmt.Errorf("store %s: %w", path, ErrNotExist)
		}
	case err != nil:
		return nil, fmt.Errorf("store %s: %w", path, err)
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("store %s is not a regular file: %w", path, ErrUnsafe)
	case st.Mode&0o077 != 0 && !readOnly:
		return nil, fmt.Errorf("store %s has mode %04o, want 0600: %w", path, st.Mode&0o7777, ErrUnsafe)
	}
	defer guardFaults()()
	defer recoverCorrupt(path, &err)
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:  LockTimeout,
		ReadOnly: readOnly,
		NoSync:   noSync,
		// Opened with O_NOFOLLOW (the path was checked above; never let a
		// symlink swapped in since redirect us), locked, and validated
		// before bbolt reads it (validate.go).
		OpenFile: lockedOpener(readOnly),
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) || errors.Is(err, errLockTimeout) {
			return nil, fmt.Errorf("store %s: held by another process for over %s: %w", path, LockTimeout, ErrBusy)
		}
		return nil, fmt.Errorf("store %s: %v: %w", path, err, ErrCorrupt)
	}
	if create {
		err = db.Update(func(tx *bolt.Tx) error { return initSchema(tx) })
	} else {
		err = db.View(func(tx *bolt.Tx) error { return checkSchema(tx) })
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	if create {
		// bbolt fsyncs the file on commit; the directory entry of a newly
		// created file needs its own sync.
		if err := syncDir(dir); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

var (
	bucketMeta = []byte("meta")
	keyVersion = []byte("version")
)

func initSchema(tx *bolt.Tx) error {
	b, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	if v := b.Get(keyVersion); v != nil {
		return checkSchema(tx)
	}
	return b.Put(keyVersion, []byte(fmt.Sprint(SchemaVersion)))
}

func checkSchema(tx *bolt.Tx) error {
	b := tx.Bucket(bucketMeta)
	if b == nil {
		return fmt.Errorf("no schema version: %w", ErrCorrupt)
	}
	v, err := get(tx, b, keyVersion)
	if err != nil {
		return err
	}
	if string(v) != fmt.Sprint(SchemaVersion) {
		if len(v) > 16 {
			v = v[:16]
		}
		return fmt.Errorf("schema version %q, this program reads %d: %w", v, SchemaVersion, ErrCorrupt)
	}
	return nil
}

// get returns b's value for key, refusing a value longer than the whole
// database: bbolt takes element lengths from pages it does not checksum,
// so a corrupt leaf can claim gigabytes, and copying or formatting such a
// slice would exhaust memory (seen: a 1.8 GB "version" from a few flipped
// bytes) before any page fault could stop it.
func get(tx *bolt.Tx, b *bolt.Bucket, key []byte) ([]byte, error) {
	v := b.Get(key)
	if int64(len(v)) > tx.Size() {
		return nil, fmt.Errorf("value of %q claims %d bytes in a %d-byte store: %w", key, len(v), tx.Size(), ErrCorrupt)
	}
	return v, nil
}

// checkLen is get's check for keys and values met while iterating.
func checkLen(tx *bolt.Tx, k, v []byte) error {
	if int64(len(k))+int64(len(v)) > tx.Size() {
		return fmt.Errorf("entry claims %d bytes in a %d-byte store: %w", len(k)+len(v), tx.Size(), ErrCorrupt)
	}
	return nil
}

// recoverCorrupt turns a panic inside bbolt (which it does on some corrupt
// pages) into ErrCorrupt: a bad file on disk must never crash a service that
// runs at shutdown. See guardFaults for the memory faults.
func recoverCorrupt(path string, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("store %s: bbolt: %v: %w", path, r, ErrCorrupt)
	}
}

// guardFaults makes a memory fault in this goroutine a recoverable panic
// instead of a crash, and returns the function restoring the old setting.
// bbolt reads pages straight from its mmap and trusts page ids it finds on
// disk, so a corrupt file can make it touch an address outside the mapping
// (seen with a few flipped bytes: SIGSEGV in Page.FastCheck). Every store
// access runs under this guard together with recoverCorrupt.
func guardFaults() func() {
	old := debug.SetPanicOnFault(true)
	return func() { debug.SetPanicOnFault(old) }
}

// view and update run one transaction on a freshly opened store and close it.
func view(path string, fn func(tx *bolt.Tx) error) (err error) {
	db, err := open(path, false, true, false)
	if err != nil {
		return err
	}
	defer db.Close()
	defer guardFaults()()
	defer recoverCorrupt(path, &err)
	return db.View(fn)
}

// update commits with an fsync unless noSync: the runtime store lives in
// /run and dies with the boot, so syncing it buys nothing (a crash of our
// process alone loses nothing: the data is in the page cache); the
// persisted plan is synced.
func update(path string, create, noSync bool, fn func(tx *bolt.Tx) error) (err error) {
	db, err := open(path, create, false, noSync)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("store %s: close: %w", path, cerr)
		}
	}()
	defer guardFaults()()
	defer recoverCorrupt(path, &err)
	return db.Update(fn)
}
