// Package etcmerge is ostree's /etc three-way merge as a Go library: the
// engine alone (no runtime store, no lifecycle; package lifecycle runs it).
//
// # Basics
//
// Merge is ostree 2022.7's merge_configuration_from as a Go function: the
// difference between the booted deployment's usr/etc (orig) and etc
// (modified), found by Diff with ostree's rules, is applied to the staged
// deployment's etc. MergePaths keeps that result current for a set of
// changed paths of the booted etc, computing for each affected region the
// state a full merge would give (the planner, plan.go) and writing only
// what differs (the applier, apply.go). Reset puts the staged etc back to
// the new defaults, for a fallback to ostree's own merge. Baseline records
// the booted etc with stat calls only, so the seal at shutdown finds what
// changed without reading content.
//
// Every tree (booted etc, both usr/etc, staged etc) is opened once per
// operation and everything below it is reached through that fd with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS) (tree.go):
// users who own directories of /etc cannot steer a read or a write outside
// it, and what is copied (content, mode, owner, xattrs) comes from the one
// inode that was opened. Every write goes through an FS (function fields,
// for fault injection; fs.go) that only ever receives a directory opened
// beneath the target etc plus a single name: the booted etc and usr/etc
// are read, never written. Files are written whole (temporary file,
// rename); only the seal flushes, with one syncfs (SyncEtc).
//
// # Caveats
//
// Where ostree would follow a symlink in the new etc (a symlinked parent
// directory), or a privileged file of the booted etc may have been
// planted by a user (ErrPlanted), we stop with ErrUnsafe instead, and ostree's fatal
// conditions (ErrNewDefaultDir, ErrNotCopyable) are found before the first
// write, so a failed Merge leaves the target untouched where ostree would
// leave it half-merged. Both only ever make us do less than ostree.
//
// The mtime of a file that comes from the new defaults is not reproduced:
// ostree's checkout gives it the checkout time, which usr/etc does not
// record. After a crash in the middle of a write, a temporary file
// ".prefinalize-tmp-*" may remain in the target; Reset or MergePaths over
// "" removes it.
package etcmerge
