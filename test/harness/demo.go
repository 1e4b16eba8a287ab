package harness

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Standalone is a testing.TB for programs that are not tests (make demo),
// so they can use this package, whose functions take a testing.TB. Fatal
// and friends panic with a value that Run turns back into an error;
// TempDir makes directories under one base directory; Close runs the
// cleanups (last registered first, as testing does) and removes the base,
// clearing the immutable flags ostree sets on deployments first.
//
// Only the methods the harness calls are implemented; the embedded nil
// testing.TB makes any other one panic, which Run also reports as an error.
type Standalone struct {
	testing.TB
	// Out receives Log/Error output (default os.Stderr).
	Out io.Writer

	mu       sync.Mutex
	base     string
	n        int
	cleanups []func()
	failed   bool
}

// standaloneFatal is the panic value of Fatal.
type standaloneFatal struct{ msg string }

// NewStandalone makes the base directory (under $TMPDIR) for TempDir.
func NewStandalone(prefix string) (*Standalone, error) {
	base, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	return &Standalone{base: base, Out: os.Stderr}, nil
}

// Base is the directory every TempDir is under.
func (s *Standalone) Base() string { return s.base }

func (s *Standalone) Helper()      {}
func (s *Standalone) Name() string { return "standalone" }

func (s *Standalone) Log(args ...any) { fmt.Fprintln(s.Out, args...) }
func (s *Standalone) Logf(format string, args ...any) {
	fmt.Fprintf(s.Out, format+"\n", args...)
}

func (s *Standalone) Error(args ...any) { s.Fail(); s.Log(args...) }
func (s *Standalone) Errorf(format string, args ...any) {
	s.Fail()
	s.Logf(format, args...)
}

func (s *Standalone) Fail() {
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
}

func (s *Standalone) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

func (s *Standalone) FailNow()          { s.Fail(); panic(standaloneFatal{"FailNow"}) }
func (s *Standalone) Fatal(args ...any) { s.Fail(); panic(standaloneFatal{fmt.Sprint(args...)}) }
func (s *Standalone) Fatalf(format string, args ...any) {
	s.Fail()
	panic(standaloneFatal{fmt.Sprintf(format, args...)})
}

// Skip is a failure here: a standalone program has nothing to skip to.
func (s *Standalone) Skip(args ...any) { s.Fatal(append([]any{"skipped:"}, args...)...) }
func (s *Standalone) Skipf(format string, args ...any) {
	s.Fatalf("skipped: "+format, args...)
}
func (s *Standalone) SkipNow()      { s.Fatal("skipped") }
func (s *Standalone) Skipped() bool { return false }

func (s *Standalone) TempDir() string {
	s.mu.Lock()
	s.n++
	n := s.n
	s.mu.Unlock()
	d := filepath.Join(s.base, fmt.Sprintf("%03d", n))
	if err := os.Mkdir(d, 0o700); err != nil {
		s.Fatalf("TempDir: %v", err)
	}
	return d
}

func (s *Standalone) Cleanup(f func()) {
	s.mu.Lock()
	s.cleanups = append(s.cleanups, f)
	s.mu.Unlock()
}

// Run calls f and returns the message of a Fatal (or of any other panic)
// as an error.
func (s *Standalone) Run(f func()) (err error) {
	defer func() {
		switch v := recover().(type) {
		case nil:
		case standaloneFatal:
			err = errors.New(v.msg)
		default:
			err = fmt.Errorf("panic: %v", v)
		}
	}()
	f()
	return nil
}

// Close runs the cleanups and removes everything under Base.
func (s *Standalone) Close() error {
	for {
		s.mu.Lock()
		if len(s.cleanups) == 0 {
			s.mu.Unlock()
			break
		}
		f := s.cleanups[len(s.cleanups)-1]
		s.cleanups = s.cleanups[:len(s.cleanups)-1]
		s.mu.Unlock()
		if err := s.Run(f); err != nil {
			s.Logf("cleanup: %v", err)
		}
	}
	if err := os.RemoveAll(s.base); err == nil {
		return nil
	}
	if err := ClearImmutable(s.base); err != nil {
		return fmt.Errorf("clearing immutable flags under %s: %w", s.base, err)
	}
	return os.RemoveAll(s.base)
}
