package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
)

func newStageCmd(g *globalOpts) *cobra.Command {
	var noTakeover, asJSON bool
	var imageGC func() (bool, error)
	c := &cobra.Command{
		Use:   "stage [--no-takeover] [--json] [--image-gc]",
		Short: "Precompute the /etc merge and the prune plan for the staged update",
		Long: `Run after an update has been staged ('ostree admin deploy --stage', or
rpm-ostree/bootc doing the same); ostree-prefinalize.path starts it
automatically. It is safe to run again at any time.

It does now what ostree would do at shutdown:
  - merges your /etc changes into the staged deployment's etc, exactly as
    ostree's merge would, and records how /etc looked (for the seal);
  - computes the prune plan: the repository objects that become
    unreachable once the update is finalized.

Unless --no-takeover is given, ostree's own /etc merge is then skipped at
shutdown: the staged state file is rewritten without its merge deployment.
ostree skips its SELinux policy refresh with it, so when the new etc has
selinux/config, stage runs that refresh itself as ostree would (semodule in
a bwrap sandbox of the new deployment).
The original is kept and put back on any doubt, so the worst case is
ostree's normal behaviour.

With nothing staged it does nothing and exits 0.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cfg := g.config()
			cfg.NoTakeover = noTakeover
			gc, err := imageGC()
			if err != nil {
				return err
			}
			cfg.ImageGC = gc
			stop := startProgress(progressFile(g.stderr), "precomputing")
			res, err := lifecycle.Stage(c.Context(), cfg)
			stop()
			if res != nil && res.Staged != nil {
				g.logger().Info("precomputed for the staged deployment", slog.String(msgid.Key, msgid.Stage),
					"staged", fmt.Sprintf("%s %s.%d", res.Staged.OSName, res.Staged.Checksum, res.Staged.Serial),
					"etc", res.Etc.State, "takeover", res.Etc.Takeover, "prune", res.Prune.State,
					"objects", res.Prune.Objects, "bytes", res.Prune.Bytes, "seconds", res.Duration)
			}
			if res != nil {
				if asJSON {
					if perr := printJSON(c.OutOrStdout(), res); perr != nil {
						return perr
					}
				} else {
					printStage(c, res)
				}
			}
			return err
		},
	}
	c.Flags().BoolVar(&noTakeover, "no-takeover", false, "precompute and check, but let ostree do its own /etc merge at shutdown")
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	imageGC = addImageGCFlag(c)
	return c
}

func printStage(c *cobra.Command, r *lifecycle.StageResult) {
	w := c.OutOrStdout()
	if r.Staged == nil {
		fmt.Fprintln(w, "Nothing staged.")
		return
	}
	fmt.Fprintf(w, "Staged: %s %s.%d\n", r.Staged.OSName, r.Staged.Checksum, r.Staged.Serial)
	fmt.Fprintf(w, "/etc:   %s (%d modified, %d removed, %d added)", r.Etc.State, r.Etc.Modified, r.Etc.Removed, r.Etc.Added)
	if r.Etc.Takeover {
		fmt.Fprint(w, "; ostree's merge taken over")
		if r.Etc.Policy == lifecycle.PolicyRefreshed {
			fmt.Fprint(w, ", SELinux policy refreshed")
		}
	}
	if r.Etc.Reason != "" {
		fmt.Fprintf(w, "; %s", r.Etc.Reason)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "prune:  %s, %d objects, %s", r.Prune.State, r.Prune.Objects, humanBytes(uint64(r.Prune.Bytes)))
	if r.Prune.Reason != "" {
		fmt.Fprintf(w, "; %s", r.Prune.Reason)
	}
	fmt.Fprintln(w)
}
