package main

import (
	"log/slog"
	"os"
)

// newLogger logs to stderr: under systemd that is the journal (with the
// unit's metadata); on a terminal, a person reads it.
func newLogger(verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
