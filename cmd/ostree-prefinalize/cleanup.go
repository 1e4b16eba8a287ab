package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
)

func newCleanupCmd(g *globalOpts) *cobra.Command {
	var foreground, asJSON bool
	c := &cobra.Command{
		Use:   "cleanup [--foreground] [--json]",
		Short: "At next boot: delete the objects the finalized update left unreachable",
		Long: `Delete exactly the repository objects that 'finalize --post' planned at
the last shutdown, then remove the plan. Normally started by
ostree-prefinalize-cleanup.timer some minutes after boot.

It takes ostree's exclusive repository lock (so no pull or prune runs at
the same time) and first checks that no ref or deployment added since the
plan was made reaches a planned object: such objects are kept. There is no
crawl of the whole repository, unlike 'ostree admin cleanup'.

SIGTERM (e.g. shutdown) stops it promptly; what is left is kept and the next
run resumes. Without --foreground it lowers its own CPU and I/O priority
(idle class), so it never competes with the boot; use --foreground in
first-boot provisioning to get it done fast.

With no plan pending it does nothing and exits 0.`,
		Example: `  ostree-prefinalize cleanup --foreground --json`,
		Args:    noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cfg := g.config()
			if !foreground {
				lowerPriority()
			}
			report, stop := countProgress(progressFile(g.stderr), "deleting")
			cfg.Progress = report
			res, err := lifecycle.Cleanup(c.Context(), cfg)
			stop()
			if res != nil {
				if asJSON {
					printJSON(c.OutOrStdout(), res)
				} else if !res.Pending {
					fmt.Fprintln(c.OutOrStdout(), "Nothing pending.")
				} else {
					fmt.Fprintf(c.OutOrStdout(), "Deleted %d objects (%s) in %.2fs; %d kept because they became live; %d remaining.\n",
						res.Objects, humanBytes(uint64(res.Bytes)), res.Seconds, res.KeptLive, res.Remaining)
				}
			}
			return err
		},
	}
	c.Flags().BoolVar(&foreground, "foreground", false, "run at normal CPU and I/O priority (first-boot provisioning)")
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary: objects, bytes, seconds, kept_live, remaining")
	return c
}

// lowerPriority moves this process to the idle I/O class and niceness 19,
// unless the unit already did (lowering twice is harmless: both are
// idempotent, and a lower priority is never raised). Failures are ignored:
// priority is a courtesy, not a condition for deleting correctly.
func lowerPriority() {
	const ioprioClassIdle = 3
	const ioprioWhoProcess = 1
	unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, uintptr(ioprioClassIdle<<13))
	if cur, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err == nil && 20-cur < 19 {
		unix.Setpriority(unix.PRIO_PROCESS, 0, 19)
	}
}
