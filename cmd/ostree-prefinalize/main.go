// Command ostree-prefinalize does the work of ostree's staged-deployment
// finalization ahead of time. This file is wiring only: each command calls
// into the packages that do the work.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit statuses (DESIGN.md): 0 success, including "nothing staged" and
// "nothing pending"; 1 error; 2 bad usage.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError marks errors that are the caller's fault (exit status 2).
type usageError struct{ error }

type globalOpts struct {
	sysroot string
	runDir  string
	verbose bool

	stderr  io.Writer
	log     *slog.Logger // see logger()
	journal bool         // log goes to the journal
}

// extraCommands are added by optional files (build tags), e.g. the man page
// generator.
var extraCommands []func(*globalOpts) *cobra.Command

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:]))
}

func run(ctx context.Context, args []string) int {
	return runWith(ctx, args, os.Stdout, os.Stderr)
}

// runWith runs the command line with the given output streams and returns
// the exit status. An error is one line on stderr ("ostree-prefinalize:
// <what failed>"); when logging goes to the journal, the error is also
// logged there with the command, for the details.
func runWith(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root, g := newRoot(stderr)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	code := exitError
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		code = exitUsage
	}
	fmt.Fprintf(stderr, "ostree-prefinalize: %s\n", oneLine(err))
	if code == exitUsage {
		if cmd == nil {
			cmd = root
		}
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	} else if g.log != nil && g.journal {
		g.log.Error("command failed", "command", cmd.CommandPath(), "err", err.Error())
	}
	return code
}

// isCobraUsage recognises the usage errors cobra makes itself (argument
// and subcommand checks happen before our code runs; flag errors go through
// SetFlagErrorFunc and are already usageErrors).
func isCobraUsage(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "unknown flag") ||
		strings.HasPrefix(s, "unknown shorthand flag") || strings.HasPrefix(s, "invalid argument") ||
		strings.HasPrefix(s, "accepts ") || strings.HasPrefix(s, "requires at least") ||
		strings.Contains(s, "flag needs an argument")
}

// oneLine joins a multi-line error (errors.Join, wrapped command output)
// into one line for the terminal.
func oneLine(err error) string {
	f := strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ; "))
	return strings.Join(f, " ")
}

func newRoot(stderr io.Writer) (*cobra.Command, *globalOpts) {
	g := &globalOpts{stderr: stderr}
	root := &cobra.Command{
		Use:   "ostree-prefinalize",
		Short: "Do ostree's staged-update finalization work before shutdown, not during it",
		Long: `When an ostree system (Fedora CoreOS, RHCOS, Endless OS, bootc) stages an
update, ostree leaves the /etc merge to shutdown (ostree-finalize-staged),
and the objects the old deployment leaves behind stay on disk until a full
repository crawl ('ostree admin cleanup').

ostree-prefinalize does that work early:
    stage      right after staging: merge /etc into the staged deployment now
               and compute which repository objects the update will orphan
    watch      until shutdown: apply every later /etc change to the merge
    finalize   at shutdown: --pre seals the merge before ostree finalizes,
               --post (after ostree succeeded) saves the deletion plan
    cleanup    at next boot: delete exactly the planned objects, no crawl
    status     what is staged, precomputed and pending (--json, metrics)
    plan       preview the objects the staged update will orphan

Normally systemd runs all of this (see the units in dist/systemd); on any
doubt ostree-prefinalize steps aside and ostree behaves as it always did.

Exit status: 0 success (also "nothing staged" / "nothing pending"),
1 error, 2 bad usage.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Example: `  ostree-prefinalize status
  ostree-prefinalize plan --list | wc -l
  ostree-prefinalize status --textfile-dir /var/lib/prometheus/node-exporter --quiet`,
	}
	root.PersistentFlags().StringVar(&g.sysroot, "sysroot", "/", "the physical sysroot, as ostree's --sysroot")
	root.PersistentFlags().StringVar(&g.runDir, "run-dir", "/run", "the runtime directory holding ostree/staged-deployment; our state goes under it too")
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "log details (debug level)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })

	root.AddCommand(newStageCmd(g), newWatchCmd(g), newFinalizeCmd(g), newCleanupCmd(g), newStatusCmd(g), newPlanCmd(g))
	for _, f := range extraCommands {
		root.AddCommand(f(g))
	}
	return root, g
}

func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", c.CommandPath(), args)}
	}
	return nil
}
