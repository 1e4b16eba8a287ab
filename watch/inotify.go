package watch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The watch set is built without ever resolving a path string that a user
// could steer. The root is opened once (O_NOFOLLOW) and held; every other
// directory is opened beneath its parent's fd with openat2
// (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, so a
// directory swapped for a symlink fails with ELOOP instead of leading out of
// the tree), listed through that fd (getdents), and watched through
// /proc/self/fd/N: the kernel resolves that magic link to the very file the
// fd holds, not to whatever the path names now.
//
// IN_DONT_FOLLOW is not used: /proc/self/fd/N is itself a (magic) symlink,
// so with IN_DONT_FOLLOW inotify would look at the link and IN_ONLYDIR
// fail with ENOTDIR. Following that one link is what makes the watch land
// on the opened directory; IN_ONLYDIR still refuses anything else.
const watchMask = unix.IN_MODIFY | unix.IN_ATTRIB | unix.IN_CLOSE_WRITE |
	unix.IN_CREATE | unix.IN_DELETE | unix.IN_DELETE_SELF |
	unix.IN_MOVED_FROM | unix.IN_MOVED_TO | unix.IN_MOVE_SELF |
	unix.IN_ONLYDIR | unix.IN_EXCL_UNLINK

// errBudget wraps the errors that say the kernel will not give us more
// inotify watches or instances (fs.inotify.max_user_watches,
// max_user_instances) or file descriptors: the watcher degrades to
// periodic rescans instead of failing.
var errBudget = errors.New("inotify budget exhausted")

func budgetErr(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)
}

// event is one raw inotify event.
type event struct {
	wd   int
	mask uint32
	name string
}

// inotify is one inotify instance and the goroutine reading it.
type inotify struct {
	fd     int
	file   *os.File // the same fd, through Go's poller (Close wakes the reader)
	events chan []event
	errs   chan error
	done   chan struct{}
}

func newInotify() (*inotify, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		if budgetErr(err) {
			return nil, fmt.Errorf("inotify_init: %w (%w)", err, errBudget)
		}
		return nil, fmt.Errorf("inotify_init: %w", err)
	}
	in := &inotify{
		fd:     fd,
		file:   os.NewFile(uintptr(fd), "inotify"),
		events: make(chan []event, 64),
		errs:   make(chan error, 1),
		done:   make(chan struct{}),
	}
	go in.read()
	return in, nil
}

// readEvery bounds how often the inotify fd is read. Under a flood every
// read would otherwise return a handful of events and cost a wakeup of
// this goroutine and of Run's; pausing lets the kernel queue them
// (fs.inotify.max_queued_events, 16384 by default, is far more than a
// pause's worth; an overflow costs only a rescan) and one read then takes
// hundreds. A lone change waits at most this long more, against a
// debounce of 250ms.
const readEvery = 20 * time.Millisecond

// read turns what the kernel reports into events until Close.
func (in *inotify) read() {
	buf := make([]byte, 64<<10)
	var last time.Time
	for {
		if d := time.Since(last); d < readEvery {
			select {
			case <-time.After(readEvery - d):
			case <-in.done:
				return
			}
		}
		n, err := in.file.Read(buf)
		last = time.Now()
		if err != nil {
			select {
			case in.errs <- err:
			case <-in.done:
			}
			return
		}
		evs := parseEvents(buf[:n])
		select {
		case in.events <- evs:
		case <-in.done:
			return
		}
	}
}

// parseEvents decodes struct inotify_event records.
func parseEvents(b []byte) []event {
	var out []event
	const hdr = unix.SizeofInotifyEvent
	for len(b) >= hdr {
		wd := int(int32(binary.NativeEndian.Uint32(b[0:])))
		mask := binary.NativeEndian.Uint32(b[4:])
		nlen := int(binary.NativeEndian.Uint32(b[12:]))
		if hdr+nlen > len(b) {
			break // the kernel never splits a record; be safe anyway
		}
		name := b[hdr : hdr+nlen]
		for len(name) > 0 && name[len(name)-1] == 0 {
			name = name[:len(name)-1]
		}
		out = append(out, event{wd: wd, mask: mask, name: string(name)})
		b = b[hdr+nlen:]
	}
	return out
}

// add watches the directory open at dirfd.
func (in *inotify) add(dirfd int) (int, error) {
	wd, err := unix.InotifyAddWatch(in.fd, "/proc/self/fd/"+strconv.Itoa(dirfd), watchMask)
	if err != nil && budgetErr(err) {
		return -1, fmt.Errorf("inotify_add_watch: %w (%w)", err, errBudget)
	}
	return wd, err
}

func (in *inotify) Close() error {
	close(in.done)
	return in.file.Close()
}

// openDir opens name beneath the directory fd dirfd, refusing symlinks in
// any component and anything that is not a directory.
func openDir(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue // EAGAIN: a rename raced the lookup; the kernel asks to retry
		}
		if err != nil && budgetErr(err) {
			return -1, fmt.Errorf("open %s: %w (%w)", name, err, errBudget)
		}
		return fd, err
	}
}

// gone reports errors that mean "this is no longer a directory of the
// tree" (removed, replaced by a symlink or a file, moved out): not a
// failure, since the change is evented on the parent.
func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) ||
		errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV)
}

// subdirs lists the entries of the directory open at fd that may be
// directories (d_type DT_DIR, or DT_UNKNOWN: openDir decides), reading
// through the fd, never by path.
func subdirs(fd int) ([]string, error) {
	var out []string
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		b := buf[:n]
		for len(b) > 0 {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
			const nameOff = int(unsafe.Offsetof(unix.Dirent{}.Name))
			if len(b) < nameOff {
				break
			}
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen < nameOff || reclen > len(b) {
				return nil, fmt.Errorf("getdents: bad record length %d", reclen)
			}
			typ := b[18]
			name := b[nameOff:reclen]
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			b = b[reclen:]
			s := string(name)
			if s == "." || s == ".." {
				continue
			}
			if typ == unix.DT_DIR || typ == unix.DT_UNKNOWN {
				out = append(out, s)
			}
		}
	}
}
