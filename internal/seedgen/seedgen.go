// Package seedgen is the common main of the go generate tools that write
// fuzz seeds into a package's testdata (store/internal/genseeds,
// prune/internal/genseeds).
package seedgen

import (
	"fmt"
	"os"
	"path/filepath"
)

// Main runs write with the output directory named by the only argument
// and exits non-zero when it fails.
func Main(write func(dir string) error) {
	name := filepath.Base(os.Args[0])
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s DIR\n", name)
		os.Exit(2)
	}
	if err := write(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
