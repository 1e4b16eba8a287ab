package main

import "github.com/spf13/cobra"

func newPlanCmd(g *globalOpts) *cobra.Command {
	c := &cobra.Command{Use: "plan", Short: "Show the mock prune for the staged transition (or for now when nothing is staged)", Args: noArgs, RunE: notBuilt}
	c.Flags().Bool("json", false, "print the plan summary as JSON")
	c.Flags().Bool("list", false, "print one object per line, <checksum>.<type>, sorted")
	return c
}
