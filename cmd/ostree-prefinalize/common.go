package main

import (
	"encoding/json"
	"io"

	"github.com/ostree-prefinalize/ostree-prefinalize/finalize"
)

// config turns the global flags into the lifecycle's configuration.
func (g *globalOpts) config() finalize.Config {
	return finalize.Config{Sysroot: g.sysroot, RunDir: g.runDir, Log: newLogger(g.verbose)}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
