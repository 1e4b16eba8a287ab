package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/msgid"
)

type sentEntry struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

type fakeJournal struct {
	sent []sentEntry
	fail bool
}

func (f *fakeJournal) send(msg string, pri journal.Priority, fields map[string]string) error {
	if f.fail {
		return errors.New("journal socket gone")
	}
	f.sent = append(f.sent, sentEntry{msg, pri, fields})
	return nil
}

func TestJournalHandlerMessageIDs(t *testing.T) {
	fj := &fakeJournal{}
	var text bytes.Buffer
	log := slog.New(newJournalHandler(fj.send, slog.LevelInfo, slog.NewTextHandler(&text, nil)))
	for _, m := range msgid.All {
		log.Info("event "+m.Name, slog.String(msgid.Key, m.ID), "objects", 12)
	}
	log.Debug("not sent")
	if len(fj.sent) != len(msgid.All) {
		t.Fatalf("sent %d entries, want %d", len(fj.sent), len(msgid.All))
	}
	seen := map[string]bool{}
	for i, m := range msgid.All {
		e := fj.sent[i]
		if e.fields["MESSAGE_ID"] != m.ID {
			t.Errorf("%s: MESSAGE_ID %q, want %q", m.Name, e.fields["MESSAGE_ID"], m.ID)
		}
		if len(m.ID) != 32 || strings.Trim(m.ID, "0123456789abcdef") != "" || seen[m.ID] {
			t.Errorf("%s: id %q is not a distinct 128-bit lowercase hex id", m.Name, m.ID)
		}
		seen[m.ID] = true
		if e.fields["OBJECTS"] != "12" || e.fields["SYSLOG_IDENTIFIER"] != "ostree-prefinalize" {
			t.Errorf("%s: fields %v", m.Name, e.fields)
		}
		if e.pri != journal.PriInfo || e.msg != "event "+m.Name+" objects=12" {
			t.Errorf("%s: priority %d message %q", m.Name, e.pri, e.msg)
		}
	}
	if text.Len() != 0 {
		t.Errorf("text fallback used although the journal took everything: %s", text.String())
	}
}

func TestJournalHandlerFields(t *testing.T) {
	fj := &fakeJournal{}
	var text bytes.Buffer
	h := newJournalHandler(fj.send, slog.LevelDebug, slog.NewTextHandler(&text, nil))
	log := slog.New(h).With("staged", "testos abc.0").WithGroup("plan")
	log.Warn("two words", "err", errors.New("boom: no such file"), slog.Group("by", "type", "dirtree"), "9lives", 1, "message", "x")
	if len(fj.sent) != 1 {
		t.Fatalf("sent %d", len(fj.sent))
	}
	e := fj.sent[0]
	want := map[string]string{
		"STAGED":            "testos abc.0",
		"PLAN_ERR":          "boom: no such file",
		"PLAN_BY_TYPE":      "dirtree",
		"PLAN_9LIVES":       "1",
		"PLAN_MESSAGE":      "x",
		"SYSLOG_IDENTIFIER": "ostree-prefinalize",
	}
	for k, v := range want {
		if e.fields[k] != v {
			t.Errorf("field %s = %q, want %q (all: %v)", k, e.fields[k], v, e.fields)
		}
	}
	if _, ok := e.fields["MESSAGE_ID"]; ok {
		t.Errorf("MESSAGE_ID set without a message_id attribute")
	}
	if e.pri != journal.PriWarning {
		t.Errorf("priority %d", e.pri)
	}
	if !strings.HasPrefix(e.msg, `two words staged="testos abc.0" plan.err="boom: no such file"`) {
		t.Errorf("message %q", e.msg)
	}
	for k := range e.fields {
		if k[0] == '_' || (k[0] >= '0' && k[0] <= '9') || strings.Trim(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != "" {
			t.Errorf("invalid journal field name %q", k)
		}
	}

	// A failing journal falls back to text: the record is not lost.
	fj.fail = true
	log.Error("still here", slog.String(msgid.Key, msgid.Fallback))
	if !strings.Contains(text.String(), "still here") || !strings.Contains(text.String(), msgid.Fallback) {
		t.Errorf("fallback text: %q", text.String())
	}
}

func TestJournalField(t *testing.T) {
	for in, want := range map[string]string{
		"err": "ERR", "a.b-c": "A_B_C", "_x": "X", "": "ATTR", "1st": "ATTR_1ST",
		"priority": "ATTR_PRIORITY", "message_id": "ATTR_MESSAGE_ID", "ünï": "N_",
	} {
		got := journalField(in)
		if got != want {
			t.Errorf("journalField(%q) = %q, want %q", in, got, want)
		}
	}
}
