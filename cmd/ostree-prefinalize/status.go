package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
)

// textfileName is the file `--textfile-dir` writes: node_exporter's
// textfile collector reads every *.prom in its directory.
const textfileName = "ostree_prefinalize.prom"

func newStatusCmd(g *globalOpts) *cobra.Command {
	var asJSON, quiet bool
	var metricsFile, textfileDir string
	c := &cobra.Command{
		Use:   "status [--json] [--metrics-file PATH | --textfile-dir DIR] [--quiet]",
		Short: "Show what is staged, precomputed and pending",
		Long: `Show the state of the update in progress, for people, update daemons and
monitoring:

    Staged    the deployment ostree will finalize at shutdown, if any
    /etc      none | precomputed | dirty (changes waiting) | sealed | fallback
              (ostree merges /etc itself), whether ostree's merge is taken over
    Prune     none | planned | invalid: what finalization will orphan
    Cleanup   a plan saved at the last shutdown, waiting for the cleanup timer
    Watcher   whether the /etc watcher runs, and its mode: inotify, or rescan
              (inotify watches ran out: periodic full rescans)

--json prints a stable JSON form (fields are added, never renamed).
--metrics-file writes node_exporter textfile metrics to PATH atomically (a
temporary file renamed over it); --textfile-dir writes
DIR/` + textfileName + ` the same way. With --quiet only the metrics are
written (for a timer), and a status that cannot be read still writes
ostree_prefinalize_status_success 0 before failing, so a fleet sees the
broken node. status only reads.`,
		Example: `  ostree-prefinalize status
  ostree-prefinalize status --json | jq .cleanup
  ostree-prefinalize status --textfile-dir /var/lib/prometheus/node-exporter --quiet`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if metricsFile != "" && textfileDir != "" {
				return usageError{errors.New("status: --metrics-file and --textfile-dir cannot be used together")}
			}
			if textfileDir != "" {
				metricsFile = filepath.Join(textfileDir, textfileName)
			}
			if quiet && metricsFile == "" {
				return usageError{errors.New("status: --quiet goes with --metrics-file or --textfile-dir")}
			}
			if quiet && asJSON {
				return usageError{errors.New("status: --quiet and --json cannot be used together")}
			}
			st, err := lifecycle.GetStatus(c.Context(), g.config())
			if metricsFile != "" {
				if werr := writeMetricsFile(metricsFile, st, err == nil); werr != nil {
					return errors.Join(err, fmt.Errorf("writing metrics: %w", werr))
				}
			}
			if err != nil {
				return err
			}
			if quiet {
				return nil
			}
			if asJSON {
				return printJSON(c.OutOrStdout(), st)
			}
			return writeStatus(c.OutOrStdout(), st)
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON (stable field names)")
	c.Flags().StringVar(&metricsFile, "metrics-file", "", "also write node_exporter textfile metrics to `PATH` (atomic)")
	c.Flags().StringVar(&textfileDir, "textfile-dir", "", "also write metrics to `DIR`/"+textfileName+" (node_exporter's textfile collector directory)")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "with --metrics-file/--textfile-dir: write the metrics only, print nothing")
	return c
}

// shortSum abbreviates a checksum so a status line fits 80 columns (`plan`
// and `status --json` print it whole).
func shortSum(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// writeStatus is the human view: one short line per part, a reason on its
// own indented line, nothing wider than a terminal except a long reason.
func writeStatus(w io.Writer, st *lifecycle.Status) error {
	var b strings.Builder
	reason := func(r string) {
		if r != "" {
			fmt.Fprintf(&b, "          %s\n", r)
		}
	}
	if st.Staged == nil {
		b.WriteString("Staged:   nothing\n")
	} else {
		lock := ""
		if st.Staged.Locked {
			lock = " (finalization locked: ostree will not apply it at shutdown)"
		}
		fmt.Fprintf(&b, "Staged:   %s %s.%d%s\n", st.Staged.OSName, shortSum(st.Staged.Checksum), st.Staged.Serial, lock)
	}
	fmt.Fprintf(&b, "/etc:     %s", st.Etc.State)
	if st.Etc.Takeover {
		b.WriteString(", ostree's merge taken over")
		if st.Etc.SELinuxPolicy == lifecycle.PolicyRefreshed {
			b.WriteString(" (SELinux policy refreshed)")
		}
	}
	if st.Etc.PendingPaths > 0 {
		fmt.Fprintf(&b, ", %d changed paths waiting", st.Etc.PendingPaths)
	}
	b.WriteString("\n")
	reason(st.Etc.Reason)
	fmt.Fprintf(&b, "Prune:    %s", st.Prune.State)
	if st.Prune.State == "planned" {
		fmt.Fprintf(&b, ", %d objects, %s to free after finalization", st.Prune.Objects, humanBytes(uint64(st.Prune.Bytes)))
	}
	b.WriteString("\n")
	if im := st.Prune.Images; im != nil && (len(im.Refs) > 0 || im.Reason != "") {
		writeImages(&b, *im)
	}
	reason(st.Prune.Reason)
	if st.Cleanup.Pending {
		fmt.Fprintf(&b, "Cleanup:  pending, %d objects, %s (ostree-prefinalize-cleanup.timer)\n", st.Cleanup.Objects, humanBytes(uint64(st.Cleanup.Bytes)))
		reason(st.Cleanup.Reason)
	} else {
		b.WriteString("Cleanup:  nothing pending\n")
	}
	if st.Watcher.Running {
		b.WriteString("Watcher:  running")
		if st.Watcher.Mode != "" {
			fmt.Fprintf(&b, " (%s)", st.Watcher.Mode)
		}
		b.WriteString("\n")
		reason(st.Watcher.Reason)
	} else {
		b.WriteString("Watcher:  not running\n")
	}
	if o := st.Ostree; o != nil {
		if o.Version != "" {
			fmt.Fprintf(&b, "ostree:   %s\n", o.Version)
		} else {
			fmt.Fprintf(&b, "ostree:   unknown (%s)\n", o.Error)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
