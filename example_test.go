package prefinalize_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"

	prefinalize "github.com/ostree-prefinalize/ostree-prefinalize"
)

// emptySysroot lays out what `ostree admin init-fs` leaves (a bare
// repository, no deployments), so the example runs without root and
// without the ostree command; TestAPIOnInitFS checks the same calls on a
// sysroot the real command made.
func emptySysroot() (sysroot, runDir string) {
	base, err := os.MkdirTemp("", "prefinalize-example")
	if err != nil {
		log.Fatal(err)
	}
	sysroot = filepath.Join(base, "sysroot")
	for _, d := range []string{"boot", "ostree/deploy", "ostree/repo/objects", "ostree/repo/refs/heads", "ostree/repo/refs/remotes", "ostree/repo/refs/mirrors", "ostree/repo/tmp", "run"} {
		if err := os.MkdirAll(filepath.Join(sysroot, d), 0o755); err != nil {
			log.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(sysroot, "ostree/repo/config"), []byte("[core]\nrepo_version=1\nmode=bare\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	return sysroot, filepath.Join(sysroot, "run")
}

// An update daemon stages a deployment with libostree, then asks for the
// finalization work to be done now, and reads the pending state.
func Example() {
	sysroot, runDir := emptySysroot()
	defer os.RemoveAll(filepath.Dir(sysroot))
	ctx := context.Background()
	// A daemon passes its own logger; the lifecycle says what it did and why.
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts := prefinalize.Options{Sysroot: sysroot, RunDir: runDir, Logger: logger}

	res, err := prefinalize.Stage(ctx, opts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("staged:", res.Staged != nil)

	st, err := prefinalize.Status(ctx, opts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("etc:", st.Etc.State, "prune:", st.Prune.State, "cleanup pending:", st.Cleanup.Pending)

	plan, err := prefinalize.Plan(ctx, opts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("objects to delete:", plan.Plan.Stats.Objects)

	cr, err := prefinalize.Cleanup(ctx, opts)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("cleanup:", cr.Reason)
	// Output:
	// staged: false
	// etc: none prune: none cleanup pending: false
	// objects to delete: 0
	// cleanup: nothing pending
}
