package main

import (
	"errors"
	"os"
	"runtime/debug"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
)

func newWatchCmd(g *globalOpts) *cobra.Command {
	var debounce, rescanEvery time.Duration
	var maxWatches int
	c := &cobra.Command{
		Use:   "watch",
		Short: "Keep the staged /etc merge current by watching /etc (systemd Type=notify)",
		Long: `Watch the booted /etc with inotify and apply each change to the staged
deployment's etc, so that at shutdown nothing is left to do. Tells systemd
READY=1 once watching; on SIGTERM it applies what is pending and exits 0.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if rescanEvery < 0 {
				return usageError{errors.New("watch: --rescan-every must not be negative")}
			}
			if debounce < 0 {
				return usageError{errors.New("watch: --debounce must not be negative")}
			}
			limitMemory()
			return lifecycle.Watch(c.Context(), g.config(), lifecycle.WatchOptions{
				Notify:      func(state string) { daemon.SdNotify(false, state) },
				Debounce:    debounce,
				RescanEvery: rescanEvery,
				MaxWatches:  maxWatches,
			})
		},
	}
	// Hidden: the quiet period before a batch is applied (0 = the default,
	// 250ms). Tests make it long to observe pending paths in status.
	c.Flags().DurationVar(&debounce, "debounce", 0, "quiet period before changes are applied")
	c.Flags().MarkHidden("debounce")
	// When the kernel gives no more inotify watches
	// (fs.inotify.max_user_watches), the watcher rescans the whole /etc
	// this often instead (0 = the default, 30s); status shows the mode.
	// Hidden: act as if the kernel gave at most N inotify watches (tests
	// of the rescan mode that must not lower the machine-wide limit).
	c.Flags().IntVar(&maxWatches, "max-watches", 0, "cap on inotify watches (0 = the kernel's limit)")
	c.Flags().MarkHidden("max-watches")
	c.Flags().DurationVar(&rescanEvery, "rescan-every", 0, "period of full rescans when inotify watches run out")
	return c
}

// watchMemoryLimit is the soft limit of the Go runtime's memory for the
// long-running watcher (issue 5's goal is 30 MB resident in all, the
// program's own mapped pages included). Near it the garbage collector runs
// more often instead of letting the heap double after a large batch; it
// is soft, so a batch that needs more still gets it.
const watchMemoryLimit = 16 << 20

// limitMemory sets watchMemoryLimit unless GOMEMLIMIT chose a limit.
func limitMemory() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(watchMemoryLimit)
	}
}
