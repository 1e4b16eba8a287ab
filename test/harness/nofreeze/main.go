// Command nofreeze runs a command with the FIFREEZE ioctl failing with
// EPERM, through a seccomp filter the command and its children inherit.
//
// The booted namespace runs ostree on a throwaway sysroot that lives on the
// host's root filesystem, whose /boot ostree freezes and thaws at every
// deployment change: a freeze would stall every writer on the machine. Up
// to 2024.x the harness drops CAP_SYS_ADMIN from the bounding set, so the
// freeze fails with EPERM and ostree falls back to syncfs (its fallback for
// EPERM, EOPNOTSUPP, ENOSYS and EBUSY in fsfreeze_thaw_cycle). Since 2025.1
// ostree refuses to touch a booted sysroot without CAP_SYS_ADMIN in its
// bounding set (ot_util_process_privileged), so the capability stays and
// this filter makes the one ioctl fail the same way instead. Nothing else
// is filtered; what ostree writes is unchanged.
//
// Usage: nofreeze COMMAND [ARG...]. Built with CGO_ENABLED=0.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	fifreeze     = 0xC0045877 // _IOWR('X', 119, int)
	archX86_64   = 0xc000003e // AUDIT_ARCH_X86_64
	archAarch64  = 0xc00000b7 // AUDIT_ARCH_AARCH64
	retAllow     = 0x7fff0000 // SECCOMP_RET_ALLOW
	retErrno     = 0x00050000 // SECCOMP_RET_ERRNO
	offNr        = 0          // struct seccomp_data.nr
	offArch      = 4          // .arch
	offArg1Low   = 24         // .args[1], low 32 bits (little endian)
	bpfLdW       = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
	bpfJeq       = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
	bpfRet       = unix.BPF_RET | unix.BPF_K
	seccompTsync = 1 // SECCOMP_FILTER_FLAG_TSYNC
)

func filter() ([]unix.SockFilter, error) {
	var arch, ioctl uint32
	switch runtime.GOARCH {
	case "amd64":
		arch, ioctl = archX86_64, 16
	case "arm64":
		arch, ioctl = archAarch64, 29
	default:
		return nil, fmt.Errorf("nofreeze: unsupported architecture %s", runtime.GOARCH)
	}
	// A jump offset counts instructions after the jump; the last two are
	// "deny" and "allow".
	return []unix.SockFilter{
		{Code: bpfLdW, K: offArch},
		{Code: bpfJeq, K: arch, Jt: 0, Jf: 5},
		{Code: bpfLdW, K: offNr},
		{Code: bpfJeq, K: ioctl, Jt: 0, Jf: 3},
		{Code: bpfLdW, K: offArg1Low},
		{Code: bpfJeq, K: fifreeze, Jt: 0, Jf: 1},
		{Code: bpfRet, K: retErrno | uint32(unix.EPERM)},
		{Code: bpfRet, K: retAllow},
	}, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nofreeze COMMAND [ARG...]")
		os.Exit(2)
	}
	runtime.LockOSThread()
	prog, err := filter()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(125)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	// Root installs a filter without no_new_privs (CAP_SYS_ADMIN); TSYNC
	// puts it on every thread of this process before the exec.
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, seccompTsync, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		fmt.Fprintf(os.Stderr, "nofreeze: seccomp: %v\n", e)
		os.Exit(125)
	}
	path, err := exec.LookPath(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "nofreeze: %v\n", err)
		os.Exit(127)
	}
	err = syscall.Exec(path, os.Args[1:], os.Environ())
	fmt.Fprintf(os.Stderr, "nofreeze: exec %s: %v\n", path, err)
	os.Exit(126)
}
