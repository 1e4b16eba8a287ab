package lifecycle

import (
	"errors"
	"io/fs"
	"testing"
)

// A failed fallback is a typed error: callers decide with errors.As (the
// seal returns it as its error), and it wraps its cause and every failure.
// Its text is the reason status shows, in the form it always had.
func TestFallbackError(t *testing.T) {
	cause := errors.New("sealing the /etc merge: boom")
	reset := &fs.PathError{Op: "open", Path: "etc", Err: fs.ErrPermission}
	lockErr := errors.New("read-only")
	for _, c := range []struct {
		fe   *fallbackError
		want string
	}{
		{&fallbackError{Locked: true, cause: cause, failed: []error{ErrTakeoverLost, reset}},
			"sealing the /etc merge: boom; fallback failed too (takeover without its original; open etc: permission denied); finalization locked: the update is not applied at this shutdown"},
		{&fallbackError{cause: cause, failed: []error{reset}, lockErr: lockErr},
			"sealing the /etc merge: boom; fallback failed too (open etc: permission denied); locking finalization failed: read-only"},
	} {
		r := EtcResult{State: EtcFallback, err: c.fe}
		var err error = r.err
		if got := err.Error(); got != c.want {
			t.Errorf("text\n got %q\nwant %q", got, c.want)
		}
		var fe *fallbackError
		if !errors.As(err, &fe) || fe.Locked != c.fe.Locked {
			t.Errorf("errors.As: %v", fe)
		}
		if !errors.Is(err, cause) || !errors.Is(err, fs.ErrPermission) {
			t.Errorf("%v does not wrap its cause and failures", err)
		}
		if errors.Is(err, lockErr) != !c.fe.Locked {
			t.Errorf("%v: the lock's failure wrapped %v, want %v", err, errors.Is(err, lockErr), !c.fe.Locked)
		}
	}
}
