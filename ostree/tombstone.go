package ostree

import (
	"github.com/ostree-prefinalize/ostree-prefinalize/internal/durable"
)

// TombstoneData is the content of the tombstone-commit object ostree writes
// for a deleted commit c when core.tombstone-commits is true
// (ostree_repo_delete_object: an a{sv} {"commit": <c as a NUL-terminated
// hex "ay">}).
func TombstoneData(c Checksum) ([]byte, error) {
	return EncodeVardict([]VariantEntry{{Key: "commit", Type: "ay", Value: append([]byte(c.String()), 0)}})
}

// WriteTombstone writes c's tombstone as name (its object file name) in dir,
// an open objects/XX directory whose path is dirPath, through fs: whole or
// nothing (a temporary file, fsynced, renamed under its final name; a crash
// leaves at most the temporary, never a torn tombstone), mode 0644 whatever
// the umask, as ostree writes it. durable.FileOnly: the directory entry is
// made durable by the caller's barrier after the deletions (the deleter's
// Sync: an fsync of each directory changed).
func WriteTombstone(fs durable.FS, dir int, dirPath, name string, c Checksum) error {
	data, err := TombstoneData(c)
	if err != nil {
		return err
	}
	tg := durable.Target{Dir: dir, DirPath: dirPath, Name: name, Perm: 0o644, Sync: durable.FileOnly}
	return fs.Write(tg, durable.Bytes(data))
}
