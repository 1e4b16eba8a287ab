package main

import (
	"encoding/json"
	"io"
	"log/slog"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
)

// config turns the global flags into the lifecycle's configuration.
func (g *globalOpts) config() lifecycle.Config {
	return lifecycle.Config{Sysroot: g.sysroot, RunDir: g.runDir, Log: g.logger()}
}

// logger is made once per run (after the flags are parsed, -v included).
func (g *globalOpts) logger() *slog.Logger {
	if g.log == nil {
		g.log, g.journal = newLogger(g.stderr, g.verbose)
	}
	return g.log
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
