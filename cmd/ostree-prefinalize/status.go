package main

import "github.com/spf13/cobra"

func newStatusCmd(g *globalOpts) *cobra.Command {
	c := &cobra.Command{Use: "status", Short: "Show what is staged, precomputed and pending", Args: noArgs, RunE: notBuilt}
	c.Flags().Bool("json", false, "print the status as JSON")
	return c
}
