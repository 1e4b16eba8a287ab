package main

import "github.com/spf13/cobra"

func newWatchCmd(g *globalOpts) *cobra.Command {
	return &cobra.Command{Use: "watch", Short: "Keep the staged /etc merge current by watching /etc (systemd Type=notify)", Args: noArgs, RunE: notBuilt}
}
