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
	if errors.As(err, &ue) {
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
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })

	notBuilt := func(c *cobra.Command, args []string) error {
		return fmt.Errorf("%s: %w", c.CommandPath(), errNotBuilt)
	}
	stage := &cobra.Command{Use: "stage", Short: "Precompute the /etc merge and the prune plan for the staged deployment (idempotent)", Args: noArgs, RunE: notBuilt}
	stage.Flags().Bool("no-takeover", false, "keep ostree's own /etc merge at finalization")
	stage.Flags().Bool("json", false, "print the result as JSON")

	watch := &cobra.Command{Use: "watch", Short: "Keep the staged /etc merge current by watching /etc (systemd Type=notify)", Args: noArgs, RunE: notBuilt}

	finalize := &cobra.Command{Use: "finalize (--pre | --post [--delete-now])", Short: "Seal before ostree-finalize-staged (--pre), persist the plan after it (--post)", Args: noArgs, RunE: notBuilt}
	finalize.Flags().Bool("pre", false, "seal the /etc merge before ostree's finalization, or restore ostree's staged state")
	finalize.Flags().Bool("post", false, "after ostree's finalization: verify and persist the prune plan")
	finalize.Flags().Bool("delete-now", false, "with --post: delete the planned objects now instead of at next boot")

	cleanup := &cobra.Command{Use: "cleanup", Short: "Delete the objects of the persisted plan (next boot)", Args: noArgs, RunE: notBuilt}
	cleanup.Flags().Bool("foreground", false, "run at normal priority (first-boot provisioning)")
	cleanup.Flags().Bool("json", false, "print a JSON summary")

	status := &cobra.Command{Use: "status", Short: "Show what is staged, precomputed and pending", Args: noArgs, RunE: notBuilt}
	status.Flags().Bool("json", false, "print the status as JSON")

	plan := &cobra.Command{Use: "plan", Short: "Show the mock prune for the staged transition (or for now when nothing is staged)", Args: noArgs, RunE: notBuilt}
	plan.Flags().Bool("json", false, "print the plan summary as JSON")
	plan.Flags().Bool("list", false, "print one object per line, <checksum>.<type>, sorted")

	root.AddCommand(stage, watch, finalize, cleanup, status, plan)
	return root
}

func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", c.CommandPath(), args)}
	}
	return nil
}
