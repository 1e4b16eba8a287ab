package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"
	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
)

// logModeEnv forces the log destination: "journal" (native journal
// protocol, when the journal socket answers) or "text" (stderr). Unset, the
// journal is used exactly when stderr is the journal's stream (a systemd
// service: JOURNAL_STREAM names our stderr).
const logModeEnv = "OSTREE_PREFINALIZE_LOG"

// sendFunc is journal.Send; tests hand in a fake sink.
type sendFunc func(message string, priority journal.Priority, fields map[string]string) error

// newLogger returns the command's logger and whether it writes to the
// journal. Under systemd every record becomes a structured journal entry
// (MESSAGE_ID for the notable events, one field per attribute); elsewhere it
// is text on stderr: at a terminal only warnings unless -v (the command's
// own output says what happened), otherwise from info up (scripts, CI and
// services without a journal keep the details).
func newLogger(stderr io.Writer, verbose bool) (*slog.Logger, bool) {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	} else if isTerminal(stderr) {
		level = slog.LevelWarn
	}
	text := slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})
	if useJournal() {
		jl := slog.LevelInfo
		if verbose {
			jl = slog.LevelDebug
		}
		return slog.New(newJournalHandler(journal.Send, jl, text)), true
	}
	return slog.New(text), false
}

func useJournal() bool {
	switch os.Getenv(logModeEnv) {
	case "text":
		return false
	case "journal":
		return journal.Enabled()
	}
	ok, err := journal.StderrIsJournalStream()
	return ok && err == nil && journal.Enabled()
}

// isTerminal reports whether w is a terminal (for the log level and the
// progress display).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// journalHandler is a slog.Handler that sends each record to the journal
// with journal.Send: MESSAGE is the message followed by key=value pairs
// (what `journalctl` shows), PRIORITY follows the level, each attribute is
// also a field of its own (key upper-cased, groups joined with "_"), and an
// attribute msgid.Key becomes MESSAGE_ID. If a send fails (journald
// restarting, message too large for the socket and /dev/shm), the record
// goes to the fallback handler instead: never lost silently.
type journalHandler struct {
	send     sendFunc
	level    slog.Leveler
	fallback slog.Handler
	attrs    []slog.Attr // from WithAttrs, keys already carry their groups
	group    string      // prefix for keys of later attributes, "a.b."
	mu       *sync.Mutex // serialises sends (one datagram each; keeps order)
}

func newJournalHandler(send sendFunc, level slog.Leveler, fallback slog.Handler) *journalHandler {
	return &journalHandler{send: send, level: level, fallback: fallback, mu: &sync.Mutex{}}
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		a.Key = h.group + a.Key
		c.attrs = append(c.attrs, a)
	}
	c.fallback = h.fallback.WithAttrs(as)
	return &c
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.group = h.group + name + "."
	c.fallback = h.fallback.WithGroup(name)
	return &c
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	fields := map[string]string{"SYSLOG_IDENTIFIER": "ostree-prefinalize"}
	var msg strings.Builder
	msg.WriteString(r.Message)
	add := func(key string, v slog.Value) {
		if key == msgid.Key {
			fields["MESSAGE_ID"] = v.String()
			return
		}
		s := v.String()
		fields[journalField(key)] = s
		msg.WriteString(" " + key + "=")
		if strings.ContainsAny(s, " \t\n\"=") || s == "" {
			msg.WriteString(quote(s))
		} else {
			msg.WriteString(s)
		}
	}
	var walk func(prefix string, a slog.Attr)
	walk = func(prefix string, a slog.Attr) {
		v := a.Value.Resolve()
		if v.Kind() == slog.KindGroup {
			p := prefix
			if a.Key != "" {
				p += a.Key + "."
			}
			for _, g := range v.Group() {
				walk(p, g)
			}
			return
		}
		if a.Key == "" {
			return
		}
		add(prefix+a.Key, v)
	}
	for _, a := range h.attrs {
		walk("", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		walk(h.group, a)
		return true
	})
	h.mu.Lock()
	err := h.send(msg.String(), priorityOf(r.Level), fields)
	h.mu.Unlock()
	if err != nil {
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// journalField turns an attribute key into a journal field name: upper
// case, [A-Z0-9_] only, not starting with "_" or a digit (journald drops
// such fields), and never one of the fields this handler sets itself.
func journalField(key string) string {
	var b strings.Builder
	for _, c := range strings.ToUpper(key) {
		if ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	f := strings.TrimLeft(b.String(), "_")
	switch {
	case f == "":
		f = "ATTR"
	case f[0] >= '0' && f[0] <= '9':
		f = "ATTR_" + f
	}
	switch f {
	case "MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER":
		f = "ATTR_" + f
	}
	return f
}

func priorityOf(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	}
	return journal.PriDebug
}
