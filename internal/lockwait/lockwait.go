// Package lockwait is the one polling lock loop of ostree-prefinalize:
// ostree's repository and sysroot locks (ostree.Repo.Lock), the store's
// flock and the lifecycle lock all wait through Poll.
//
// Waiting polls a non-blocking attempt with a doubling backoff rather than
// blocking in F_OFD_SETLKW or flock without LOCK_NB: a blocked system call
// cannot be interrupted from Go without signalling its thread, so a blocked
// waiter would outlive a cancelled context and could take the lock after
// the caller gave up. Linux grants no fairness to blocked waiters, so
// polling loses nothing (libostree itself polls, once a second).
package lockwait

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// Poll calls try until it reports the lock taken (true, nil), fails (its
// error is returned as is), or ctx ends (ctx.Err() is returned). Between
// attempts it waits 1ms, doubling up to max.
func Poll(ctx context.Context, max time.Duration, try func() (bool, error)) error {
	wait := time.Millisecond
	var timer *time.Timer
	for {
		ok, err := try()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		if wait *= 2; wait > max {
			wait = max
		}
	}
}

// TryFlock makes one non-blocking flock(2) attempt (how is LOCK_SH or
// LOCK_EX; LOCK_NB is added): false without error means someone else holds
// it incompatibly. An interrupted call is retried.
func TryFlock(fd int, how int) (bool, error) {
	for {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return false, nil
		}
		return false, err
	}
}
