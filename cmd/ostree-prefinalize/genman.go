//go:build genman

// The man page generator, built only with -tags genman (`make man`), so
// the installed binary does not carry the markdown and roff libraries.

package main

import (
	"errors"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func init() {
	extraCommands = append(extraCommands, func(g *globalOpts) *cobra.Command {
		return &cobra.Command{
			Use:    "genman DIR",
			Short:  "Write the man pages (section 8) into DIR",
			Hidden: true,
			RunE: func(c *cobra.Command, args []string) error {
				if len(args) != 1 {
					return usageError{errors.New("genman: give the output directory")}
				}
				if err := os.MkdirAll(args[0], 0o755); err != nil {
					return err
				}
				root := c.Root()
				root.InitDefaultCompletionCmd()
				root.DisableAutoGenTag = true
				return doc.GenManTree(root, &doc.GenManHeader{
					Title:   "OSTREE-PREFINALIZE",
					Section: "8",
					Source:  "ostree-prefinalize",
					Manual:  "System Administration",
				}, args[0])
			},
		}
	})
}
