// Command ostree-prefinalize does the work of ostree's staged-deployment
// finalization ahead of time. This file is wiring only: each command calls
// into the packages that do the work.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// usageError marks errors that are the caller's fault (exit status 2).
type usageError struct{ error }

// errNotBuilt is what a command that does not exist yet returns: never a
// fake success.
var errNotBuilt = errors.New("not implemented yet in this version")

type globalOpts struct {
	sysroot string
	runDir  string
	verbose bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:]))
}

func run(ctx context.Context, args []string) int {
	root := newRootCmd()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "ostree-prefinalize: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		return 2
	}
	return 1
}

func newRootCmd() *cobra.Command {
	g := &globalOpts{}
	root := &cobra.Command{
		Use:   "ostree-prefinalize",
		Short: "Do ostree's staged-deployment finalization work ahead of shutdown",
		Long: `ostree-prefinalize does the work that ostree defers to shutdown when an
update is staged: it merges /etc into the staged deployment now (and keeps the
merge current by watching /etc), computes which repository objects become
unreachable once the update is finalized, and deletes exactly those at next
boot without a full reachability crawl.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.sysroot, "sysroot", "/", "the sysroot, as ostree's --sysroot")
	root.PersistentFlags().StringVar(&g.runDir, "run-dir", "/run", "where ostree/staged-deployment lives and our state goes")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "log debug details")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })

	root.AddCommand(newStageCmd(g), newWatchCmd(g), newFinalizeCmd(g), newCleanupCmd(g), newStatusCmd(g), newPlanCmd(g))
	return root
}

// notBuilt is the RunE of a command whose implementation has not landed.
func notBuilt(c *cobra.Command, args []string) error {
	return fmt.Errorf("%s: %w", c.CommandPath(), errNotBuilt)
}

func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", c.CommandPath(), args)}
	}
	return nil
}
