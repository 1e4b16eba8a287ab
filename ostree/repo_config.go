package ostree

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file reads a repository's "config" file the way libostree 2022.7
// does (ostree-repo.c reload_core_config on top of GLib 2.74's GKeyFile,
// flags 0). Only the keys this project relies on are interpreted; every
// other group and key is accepted as GKeyFile accepts it, so a config that
// ostree opens is a config we open, and a config ostree refuses to open
// (bad syntax, repo_version other than 1, unknown mode, archive=true) is one
// we refuse too. We additionally refuse a tombstone-commits or locking value
// that is not a GKeyFile boolean: ostree would fail on it later (when it
// deletes a commit, resp. never), and we must not guess what it means.

// maxConfigSize caps the config file; ostree applies OSTREE_MAX_METADATA_SIZE
// to configs it fetches, and no sane local config comes near it.
const maxConfigSize = 10 << 20

// KeyFile is the subset of a parsed GKeyFile this package needs: raw values
// (as g_key_file_get_value returns them: leading whitespace removed, trailing
// whitespace kept, no escape processing) by group and key; later duplicates
// win and repeated groups merge, as in GLib.
type KeyFile struct {
	groups map[string]map[string]string
}

// Value returns the raw value of key in group, and whether it is present.
func (k *KeyFile) Value(group, key string) (string, bool) {
	if k == nil {
		return "", false
	}
	g, ok := k.groups[group]
	if !ok {
		return "", false
	}
	v, ok := g[key]
	return v, ok
}

// Bool interprets key in group as g_key_file_get_boolean does (GLib 2.74:
// "true"/"1" or "false"/"0", trailing whitespace ignored, case-sensitive);
// def when the group or key is absent; an error wrapping ErrCorrupt when the
// value is something else.
func (k *KeyFile) Bool(group, key string, def bool) (bool, error) {
	v, ok := k.Value(group, key)
	if !ok {
		return def, nil
	}
	t := strings.TrimRightFunc(v, func(r rune) bool { return r < utf8.RuneSelf && asciiSpace(byte(r)) })
	switch t {
	case "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("[%s] %s=%q is not a boolean: %w", group, key, truncate(v), ErrCorrupt)
}

// asciiSpace is GLib's g_ascii_isspace: note that vertical tab is not space.
func asciiSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r'
}

// ParseKeyFile parses data as g_key_file_load_from_data(flags 0) after
// glnx_file_get_contents_utf8_at: the whole file must be valid UTF-8 without
// NUL bytes. Errors wrap ErrCorrupt and give the 1-based line number.
func ParseKeyFile(data []byte) (*KeyFile, error) {
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("not valid UTF-8: %w", ErrCorrupt)
	}
	for i, c := range data {
		if c == 0 {
			return nil, fmt.Errorf("NUL byte at offset %d: %w", i, ErrCorrupt)
		}
	}
	kf := &KeyFile{groups: map[string]map[string]string{}}
	var cur map[string]string
	s := string(data)
	lineNo := 0
	for len(s) > 0 {
		lineNo++
		var line string
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			line, s = s[:i], s[i+1:]
			// GLib drops one '\r' before the '\n' (CRLF files).
			line = strings.TrimSuffix(line, "\r")
		} else {
			// The last line without a newline is flushed as is.
			line, s = s, ""
		}
		l := strings.TrimLeftFunc(line, func(r rune) bool { return r < utf8.RuneSelf && asciiSpace(byte(r)) })
		switch {
		case l == "" || l[0] == '#':
			// comment or blank line
		case isGroupLine(l):
			// The name runs to the last ']' (which isGroupLine made sure
			// is the first one).
			name := l[1:strings.LastIndexByte(l, ']')]
			if !isGroupName(name) {
				return nil, fmt.Errorf("line %d: invalid group name %q: %w", lineNo, truncate(name), ErrCorrupt)
			}
			g, ok := kf.groups[name]
			if !ok {
				g = map[string]string{}
				kf.groups[name] = g
			}
			cur = g
		case strings.IndexByte(l, '=') > 0:
			if cur == nil {
				return nil, fmt.Errorf("line %d: key before the first group: %w", lineNo, ErrCorrupt)
			}
			eq := strings.IndexByte(l, '=')
			key := strings.TrimRightFunc(l[:eq], func(r rune) bool { return r < utf8.RuneSelf && asciiSpace(byte(r)) })
			if !isKeyName(key) {
				return nil, fmt.Errorf("line %d: invalid key name %q: %w", lineNo, truncate(key), ErrCorrupt)
			}
			val := strings.TrimLeftFunc(l[eq+1:], func(r rune) bool { return r < utf8.RuneSelf && asciiSpace(byte(r)) })
			cur[key] = val
		default:
			return nil, fmt.Errorf("line %d: %q is not a key-value pair, group, or comment: %w", lineNo, truncate(l), ErrCorrupt)
		}
	}
	return kf, nil
}

// isGroupLine is g_key_file_line_is_group: '[' ... first ']' followed only
// by spaces and tabs.
func isGroupLine(l string) bool {
	if l == "" || l[0] != '[' {
		return false
	}
	i := strings.IndexByte(l[1:], ']')
	if i < 0 {
		return false
	}
	for _, c := range []byte(l[1+i+1:]) {
		if c != ' ' && c != '\t' {
			return false
		}
	}
	return true
}

// isGroupName is g_key_file_is_group_name: non-empty, no brackets, no ASCII
// control characters.
func isGroupName(n string) bool {
	if n == "" {
		return false
	}
	for _, c := range []byte(n) {
		if c == '[' || c == ']' || c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// isKeyName is g_key_file_is_key_name: a non-empty name without '=', '[' or
// ']' that neither starts nor ends with a space, optionally followed by one
// "[locale]" of Unicode letters/digits and "-_.@", and nothing after it.
func isKeyName(k string) bool {
	q := strings.IndexAny(k, "=[]")
	if q < 0 {
		q = len(k)
	}
	if q == 0 || k[0] == ' ' || k[q-1] == ' ' {
		return false
	}
	if q == len(k) {
		return true
	}
	if k[q] != '[' {
		return false
	}
	rest := k[q+1:]
	for len(rest) > 0 {
		r, size := utf8.DecodeRuneInString(rest)
		if !(unicode.IsLetter(r) || unicode.IsNumber(r) || r == '-' || r == '_' || r == '.' || r == '@') {
			break
		}
		rest = rest[size:]
	}
	return rest == "]"
}

// RepoConfig is what this project takes from a repository config.
type RepoConfig struct {
	Mode RepoMode
	// TombstoneCommits is [core] tombstone-commits: ostree writes a
	// .tombstone-commit object when it deletes a commit.
	TombstoneCommits bool
	// Locking is [core] locking (default true). When false, libostree takes
	// no repository lock at all, so our lock excludes no ostree writer.
	Locking bool
	// CollectionID is [core] collection-id, "" when unset; refs/heads refs
	// belong to it in `ostree refs --collections`.
	CollectionID string
}

// ParseRepoConfig parses a repository config file's bytes with ostree's
// rules for the keys in RepoConfig. Errors wrap ErrCorrupt.
func ParseRepoConfig(data []byte) (*RepoConfig, error) {
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("config of %d bytes exceeds %d: %w", len(data), maxConfigSize, ErrCorrupt)
	}
	kf, err := ParseKeyFile(data)
	if err != nil {
		return nil, err
	}
	v, ok := kf.Value("core", "repo_version")
	if !ok {
		return nil, fmt.Errorf("no [core] repo_version: %w", ErrCorrupt)
	}
	if v != "1" {
		return nil, fmt.Errorf("invalid repository version %q: %w", truncate(v), ErrCorrupt)
	}
	archive, err := kf.Bool("core", "archive", false)
	if err != nil {
		return nil, err
	}
	if archive {
		return nil, fmt.Errorf("[core] archive=true (pre-archive-z2 format) is not supported by ostree: %w", ErrCorrupt)
	}
	cfg := &RepoConfig{Mode: ModeBare}
	if m, ok := kf.Value("core", "mode"); ok {
		if cfg.Mode, err = ParseRepoMode(m); err != nil {
			return nil, err
		}
	}
	if cfg.TombstoneCommits, err = kf.Bool("core", "tombstone-commits", false); err != nil {
		return nil, err
	}
	if cfg.Locking, err = kf.Bool("core", "locking", true); err != nil {
		return nil, err
	}
	cfg.CollectionID, _ = kf.Value("core", "collection-id")
	return cfg, nil
}

// ParseRepoMode is ostree_repo_mode_from_string: exact, case-sensitive.
func ParseRepoMode(s string) (RepoMode, error) {
	switch s {
	case "bare":
		return ModeBare, nil
	case "bare-user":
		return ModeBareUser, nil
	case "bare-user-only":
		return ModeBareUserOnly, nil
	case "archive-z2", "archive":
		return ModeArchive, nil
	case "bare-split-xattrs":
		return ModeBareSplitXattrs, nil
	}
	return 0, fmt.Errorf("invalid mode %q in repository configuration: %w", truncate(s), ErrCorrupt)
}

// ParseRef parses the content of a loose ref file as ostree resolves it
// (resolve_refspec): valid UTF-8 without NUL, trailing ASCII whitespace
// removed (g_strchomp), then exactly 64 lower-case hex digits. ostree has no
// textual symbolic refs ("ref: ..."); its aliases are symlinks (see Refs), so
// such content is corrupt. Errors wrap ErrCorrupt.
func ParseRef(b []byte) (Checksum, error) {
	if len(b) > maxRefSize {
		return Checksum{}, fmt.Errorf("ref file of %d bytes: %w", len(b), ErrCorrupt)
	}
	if !utf8.Valid(b) {
		return Checksum{}, fmt.Errorf("ref is not valid UTF-8: %w", ErrCorrupt)
	}
	for _, c := range b {
		if c == 0 {
			return Checksum{}, fmt.Errorf("ref contains a NUL byte: %w", ErrCorrupt)
		}
	}
	end := len(b)
	for end > 0 && asciiSpace(b[end-1]) {
		end--
	}
	return ParseChecksum(string(b[:end]))
}

// maxRefSize bounds what we read of a ref file: a valid one is 65 bytes.
const maxRefSize = 4096
