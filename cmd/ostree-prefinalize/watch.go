package main

import (
	"errors"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/ostree-prefinalize/ostree-prefinalize/finalize"
)

func newWatchCmd(g *globalOpts) *cobra.Command {
	var debounce time.Duration
	c := &cobra.Command{
		Use:   "watch",
		Short: "Keep the staged /etc merge current by watching /etc (systemd Type=notify)",
		Long: `Watch the booted /etc with inotify and apply each change to the staged
deployment's etc, so that at shutdown nothing is left to do. Tells systemd
READY=1 once watching; on SIGTERM it applies what is pending and exits 0.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if debounce < 0 {
				return usageError{errors.New("watch: --debounce must not be negative")}
			}
			return finalize.Watch(c.Context(), g.config(), finalize.WatchOptions{
				Notify:   func(state string) { daemon.SdNotify(false, state) },
				Debounce: debounce,
			})
		},
	}
	// Hidden: the quiet period before a batch is applied (0 = the default,
	// 250ms). Tests make it long to observe pending paths in status.
	c.Flags().DurationVar(&debounce, "debounce", 0, "quiet period before changes are applied")
	c.Flags().MarkHidden("debounce")
	return c
}
