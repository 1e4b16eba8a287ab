package main

import "github.com/spf13/cobra"

func newStageCmd(g *globalOpts) *cobra.Command {
	c := &cobra.Command{Use: "stage", Short: "Precompute the /etc merge and the prune plan for the staged deployment (idempotent)", Args: noArgs, RunE: notBuilt}
	c.Flags().Bool("no-takeover", false, "keep ostree's own /etc merge at finalization")
	c.Flags().Bool("json", false, "print the result as JSON")
	return c
}
