package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ostree-prefinalize/ostree-prefinalize/finalize"
)

func newStageCmd(g *globalOpts) *cobra.Command {
	var noTakeover, asJSON bool
	c := &cobra.Command{
		Use:   "stage [--no-takeover] [--json]",
		Short: "Precompute the /etc merge and the prune plan for the staged deployment (idempotent)",
		Long: `Precompute, for the deployment ostree has staged, the /etc merge that
ostree would do at shutdown (written into the staged deployment's etc now)
and the prune plan. Unless --no-takeover is given, ostree's own merge is
then skipped at finalization (its staged state is rewritten without the
merge deployment; the original is kept and restored on any doubt).
With nothing staged it does nothing and exits 0.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			cfg := g.config()
			cfg.NoTakeover = noTakeover
			res, err := finalize.Stage(c.Context(), cfg)
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
	c.Flags().BoolVar(&noTakeover, "no-takeover", false, "keep ostree's own /etc merge at finalization")
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}

func printStage(c *cobra.Command, r *finalize.StageResult) {
	w := c.OutOrStdout()
	if r.Staged == nil {
		fmt.Fprintln(w, "Nothing staged.")
		return
	}
	fmt.Fprintf(w, "Staged: %s %s.%d\n", r.Staged.OSName, r.Staged.Checksum, r.Staged.Serial)
	fmt.Fprintf(w, "/etc:   %s (%d modified, %d removed, %d added)", r.Etc.State, r.Etc.Modified, r.Etc.Removed, r.Etc.Added)
	if r.Etc.Takeover {
		fmt.Fprint(w, "; ostree's merge taken over")
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
