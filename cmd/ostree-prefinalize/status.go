package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ostree-prefinalize/ostree-prefinalize/finalize"
)

func newStatusCmd(g *globalOpts) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status [--json]",
		Short: "Show what is staged, precomputed and pending",
		Args:  noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			st, err := finalize.GetStatus(c.Context(), g.config())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(c.OutOrStdout(), st)
			}
			w := c.OutOrStdout()
			if st.Staged == nil {
				fmt.Fprintln(w, "Staged:   none")
			} else {
				lock := ""
				if st.Staged.Locked {
					lock = " (finalization locked)"
				}
				fmt.Fprintf(w, "Staged:   %s %s.%d%s\n", st.Staged.OSName, st.Staged.Checksum, st.Staged.Serial, lock)
			}
			fmt.Fprintf(w, "/etc:     %s, %d pending, takeover %v", st.Etc.State, st.Etc.PendingPaths, st.Etc.Takeover)
			if st.Etc.Reason != "" {
				fmt.Fprintf(w, " (%s)", st.Etc.Reason)
			}
			fmt.Fprintln(w)
			fmt.Fprintf(w, "Prune:    %s, %d objects, %s", st.Prune.State, st.Prune.Objects, humanBytes(uint64(st.Prune.Bytes)))
			if st.Prune.Reason != "" {
				fmt.Fprintf(w, " (%s)", st.Prune.Reason)
			}
			fmt.Fprintln(w)
			if st.Cleanup.Pending {
				fmt.Fprintf(w, "Cleanup:  pending, %d objects, %s\n", st.Cleanup.Objects, humanBytes(uint64(st.Cleanup.Bytes)))
			} else {
				fmt.Fprintln(w, "Cleanup:  nothing pending")
			}
			fmt.Fprintf(w, "Watcher:  running %v\n", st.Watcher.Running)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return c
}
