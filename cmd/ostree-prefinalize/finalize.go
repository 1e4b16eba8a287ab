package main

import "github.com/spf13/cobra"

func newFinalizeCmd(g *globalOpts) *cobra.Command {
	c := &cobra.Command{Use: "finalize (--pre | --post [--delete-now])", Short: "Seal before ostree-finalize-staged (--pre), persist the plan after it (--post)", Args: noArgs, RunE: notBuilt}
	c.Flags().Bool("pre", false, "seal the /etc merge before ostree's finalization, or restore ostree's staged state")
	c.Flags().Bool("post", false, "after ostree's finalization: verify and persist the prune plan")
	c.Flags().Bool("delete-now", false, "with --post: delete the planned objects now instead of at next boot")
	return c
}
