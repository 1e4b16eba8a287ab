package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
)

// imageGCEnv turns image GC on by default for `plan` and `stage`. The
// units read it from the optional EnvironmentFile
// /etc/ostree-prefinalize/config (a line OSTREE_PREFINALIZE_IMAGE_GC=true),
// so the setting lives in one file that systemd parses; --image-gc and
// --image-gc=false override it.
const imageGCEnv = "OSTREE_PREFINALIZE_IMAGE_GC"

// addImageGCFlag adds --image-gc to c and returns the function that
// resolves it: the flag when given, else the environment, else off.
func addImageGCFlag(c *cobra.Command) func() (bool, error) {
	var on bool
	c.Flags().BoolVar(&on, "image-gc", false, "also plan the removal of container image refs that no deployment uses after finalization (default from $"+imageGCEnv+")")
	return func() (bool, error) {
		if c.Flags().Changed("image-gc") {
			return on, nil
		}
		return envImageGC(os.Getenv(imageGCEnv))
	}
}

// envImageGC parses the setting as systemd parses booleans.
func envImageGC(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "0", "false", "no", "off", "n", "f":
		return false, nil
	case "1", "true", "yes", "on", "y", "t":
		return true, nil
	}
	return false, usageError{fmt.Errorf("%s=%q: want true or false", imageGCEnv, v)}
}

// writeImages prints the images report of a plan (nothing on a host
// without an image store).
func writeImages(w io.Writer, im prune.ImagesReport) {
	if len(im.Refs) == 0 && im.Reason == "" {
		return
	}
	verb := "held by their refs (image GC off: kept)"
	if im.GC {
		verb = "included (image GC on: the refs are removed first)"
	}
	fmt.Fprintf(w, "Undeployed container images: %d objects (%s) %s\n", im.HeldObjects, humanBytes(im.HeldBytes), verb)
	for _, r := range im.Refs {
		name := r.Image
		if name == "" {
			name = "(layer no image lists)"
		}
		fmt.Fprintf(w, "  %s: %d objects, %s, %d layer refs\n    %s\n", name, r.Objects, humanBytes(r.Bytes), len(r.Layers), r.Ref)
	}
	if im.Reason != "" {
		fmt.Fprintf(w, "  kept on doubt: %s\n", im.Reason)
	}
}
