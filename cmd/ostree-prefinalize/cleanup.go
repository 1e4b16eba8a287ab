package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/finalize"
)

func newCleanupCmd(g *globalOpts) *cobra.Command {
	var foreground, asJSON bool
	c := &cobra.Command{
		Use:   "cleanup [--foreground] [--json]",
		Short: "Delete the objects of the persisted plan (next boot)",
		Long: `Delete exactly the objects the plan persisted by 'finalize --post' names,
under ostree's exclusive repository lock, after checking that no ref or
deployment added since reaches them. No reachability crawl of the whole
repository. SIGTERM stops it promptly; the rest resumes next time.
Without --foreground it lowers its own CPU and I/O priority (idle class).`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cfg := g.config()
			if !foreground {
				lowerPriority()
			}
			res, err := finalize.Cleanup(c.Context(), cfg)
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
	c.Flags().BoolVar(&foreground, "foreground", false, "run at normal priority (first-boot provisioning)")
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON summary")
	return c
}

// lowerPriority moves this process to the idle I/O class and niceness 19,
// unless the unit already did (lowering twice is harmless: both are
// idempotent, and a lower priority is never raised).
func lowerPriority() {
	const ioprioClassIdle = 3
	const ioprioWhoProcess = 1
	unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, 0, uintptr(ioprioClassIdle<<13))
	if cur, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err == nil && 20-cur < 19 {
		unix.Setpriority(unix.PRIO_PROCESS, 0, 19)
	}
}
