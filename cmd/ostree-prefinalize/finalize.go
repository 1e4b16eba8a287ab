package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
)

func newFinalizeCmd(g *globalOpts) *cobra.Command {
	var pre, post, deleteNow, asJSON bool
	c := &cobra.Command{
		Use:   "finalize (--pre | --post [--delete-now])",
		Short: "At shutdown: seal the /etc merge (--pre), save the deletion plan (--post)",
		Long: `The two shutdown hooks around ostree's own 'ostree admin finalize-staged'.
systemd runs them; you normally do not.

--pre runs just before ostree's finalization (when the watch service
stops): it applies whatever changed in /etc since the last update of the
merge and makes the staged etc durable. On any doubt it restores ostree's
original staged state, so ostree merges /etc itself as it always did.

--post runs after ostree's finalization succeeded (appended to
ostree-finalize-staged.service): it checks that the deployment list is the
one predicted at staging and saves the prune plan under the sysroot for
'cleanup' at next boot, or, with --delete-now, deletes the planned objects
at once. If the prediction does not hold, nothing is saved (and ostree's
own cleanup remains the way to free the space).

Exit status of --post: 0 when the plan was saved (or deleted), when there
was nothing planned, and when a deployment is still staged (a locked
finalization: ostree kept the update for a later shutdown, as asked);
1 when the deployment list is not the predicted one (ostree's finalization
failed, or the deployments changed behind our back) or the plan could not
be saved. Either way nothing is deleted that was not planned, and
'status' says why.

With nothing staged (--pre) or nothing planned (--post) it exits 0.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if pre == post {
				return usageError{errors.New("finalize: give exactly one of --pre and --post")}
			}
			if deleteNow && !post {
				return usageError{errors.New("finalize: --delete-now goes with --post")}
			}
			cfg := g.config()
			w := c.OutOrStdout()
			if pre {
				res, err := lifecycle.Pre(c.Context(), cfg)
				if res != nil {
					if asJSON {
						printJSON(w, res)
					} else if res.Staged == nil {
						fmt.Fprintln(w, "Nothing staged.")
					} else {
						fmt.Fprintf(w, "/etc: %s (takeover %v): %s\n", res.Etc.State, res.Etc.Takeover, res.Etc.Reason)
					}
				}
				return err
			}
			stop := func() {}
			if deleteNow {
				cfg.Progress, stop = countProgress(progressFile(g.stderr), "deleting")
			}
			res, err := lifecycle.Post(c.Context(), cfg, deleteNow)
			stop()
			if res != nil {
				if asJSON {
					printJSON(w, res)
				} else {
					switch {
					case res.Deleted != nil:
						fmt.Fprintf(w, "Deleted %d objects (%s), kept %d that became live.\n", res.Deleted.Deleted, humanBytes(uint64(res.Deleted.BytesFreed)), res.Deleted.KeptLive)
					case res.Persisted:
						fmt.Fprintf(w, "Plan persisted: %d objects, %s to delete at next boot.\n", res.Objects, humanBytes(uint64(res.Bytes)))
					default:
						fmt.Fprintf(w, "Nothing persisted: %s\n", res.Reason)
					}
				}
			}
			return err
		},
	}
	c.Flags().BoolVar(&pre, "pre", false, "seal the /etc merge before ostree's finalization, or restore ostree's staged state")
	c.Flags().BoolVar(&post, "post", false, "after ostree's finalization: verify and persist the prune plan")
	c.Flags().BoolVar(&deleteNow, "delete-now", false, "with --post: delete the planned objects now instead of at next boot")
	c.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return c
}
