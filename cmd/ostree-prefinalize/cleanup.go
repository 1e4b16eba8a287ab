package main

import "github.com/spf13/cobra"

func newCleanupCmd(g *globalOpts) *cobra.Command {
	c := &cobra.Command{Use: "cleanup", Short: "Delete the objects of the persisted plan (next boot)", Args: noArgs, RunE: notBuilt}
	c.Flags().Bool("foreground", false, "run at normal priority (first-boot provisioning)")
	c.Flags().Bool("json", false, "print a JSON summary")
	return c
}
