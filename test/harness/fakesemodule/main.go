// Command fakesemodule stands in for SELinux's semodule inside test commit
// trees (harness.WithFakeSemodule puts it at usr/bin/semodule). It models
// just what ostree's finalization uses, deterministically and with no
// libc (it is built with CGO_ENABLED=0 because test trees have none):
//
//	semodule --help
//	    prints a usage text naming --rebuild-if-modules-changed (what
//	    ostree 2022.7 looks for) and --refresh (what ostree >= 2023.2 looks
//	    for); with /usr/share/fake-semodule/no-rebuild-flag present it
//	    models an older semodule and names neither.
//	semodule -N --rebuild-if-modules-changed
//	semodule -N --refresh
//	    libsemanage's "rebuild the policy if the module store changed
//	    since the last build": the store is /etc/selinux/T/active/modules
//	    (T = SELINUXTYPE from /etc/selinux/config), its digest is compared
//	    with /etc/selinux/T/active/modules.checksum, and only when they
//	    differ is a "policy" written: /etc/selinux/T/policy/policy.33,
//	    /etc/selinux/T/contexts/files/file_contexts.homedirs (from
//	    /etc/passwd, users with uid >= 1000), the new checksum, and the
//	    marker /var/lib/fake-semodule/rebuilt. A regular file named FAIL
//	    anywhere in the store makes the rebuild fail (exit 1); a file
//	    /etc/selinux/T/active/SLOW makes it pause halfway (SlowName). With the
//	    no-rebuild-flag marker these are unknown options, as for a real
//	    old semodule.
//
// Every invocation first appends a line to /etc/selinux/semodule.log:
// "semodule ARGS... uid=N sandbox=yes|no", where sandbox=yes means the
// process sees /usr/bin/semodule and an empty /run, as inside ostree's
// bubblewrap sandbox (the booted host's /run is never empty). Every file it
// writes is replaced whole (temporary file and rename in the same
// directory), mode 0644, with the fixed mtime FixedTime, and so are the
// directories it creates, so two runs at different times leave identical
// trees (directories that already existed get the time of the write, as
// with any writer).
//
// Exit status: 0 success, 1 failure (message on stderr), 2 usage error.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// FixedTime is the mtime of everything the program writes.
var FixedTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Paths relative to the root, slash-separated.
const (
	logPath    = "etc/selinux/semodule.log"
	configPath = "etc/selinux/config"
	passwdPath = "etc/passwd"
	noFlagPath = "usr/share/fake-semodule/no-rebuild-flag"
	markerPath = "var/lib/fake-semodule/rebuilt"
	// sleepingPath exists while a slow rebuild (see SlowName) pauses.
	sleepingPath = "var/lib/fake-semodule/sleeping"
	// SlowName: with /etc/selinux/T/active/SLOW present, a rebuild pauses
	// for SlowPause after writing the policy and before the rest, with
	// sleepingPath present meanwhile: a window for tests that kill the
	// caller in the middle of a rebuild (bwrap --die-with-parent then
	// ends semodule too).
	SlowName    = "SLOW"
	SlowPause   = 3 * time.Second
	selfPath    = "usr/bin/semodule"
	runPath     = "run"
	storeSuffix = "active/modules"
)

func main() {
	os.Exit(run("/", os.Args, os.Stdout, os.Stderr))
}

// run is the whole program with its root directory as a parameter (tests
// use a temporary root). args is the full argv, args[0] included.
func run(root string, args []string, stdout, stderr io.Writer) (rc int) {
	name := "semodule"
	if len(args) > 0 && args[0] != "" {
		name = path.Base(args[0])
	}
	var rest []string
	if len(args) > 1 {
		rest = args[1:]
	}
	line := strings.Join(append([]string{name}, rest...), " ") +
		" uid=" + strconv.Itoa(os.Getuid()) + " sandbox=" + sandbox(root) + "\n"
	w := &writer{root: root}
	defer func() {
		if err := w.done(); err != nil && rc == 0 {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			rc = 1
		}
	}()
	if err := appendLog(w, line); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}

	noFlag := exists(filepath.Join(root, noFlagPath))
	switch {
	case slices.Equal(rest, []string{"--help"}) || slices.Equal(rest, []string{"-h"}):
		io.WriteString(stdout, usage(name, noFlag))
		return 0
	case !noFlag && (slices.Equal(rest, []string{"-N", "--rebuild-if-modules-changed"}) ||
		slices.Equal(rest, []string{"-N", "--refresh"})):
		if err := rebuildIfChanged(w); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(stderr, "%s: unsupported arguments %q\n%s", name, rest, usage(name, noFlag))
		return 2
	}
}

func usage(name string, noFlag bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage:  %s [option]... MODE...\n", name)
	b.WriteString("Manage SELinux policy modules (fake for tests).\n")
	b.WriteString("Options:\n")
	b.WriteString("  -h,--help        print this message and quit\n")
	b.WriteString("  -N,--noreload    do not reload policy after commit\n")
	if !noFlag {
		b.WriteString("  --rebuild-if-modules-changed\n")
		b.WriteString("                   force policy rebuild if module content changed since\n")
		b.WriteString("                   last rebuild (based on checksum)\n")
		b.WriteString("  --refresh        like --rebuild-if-modules-changed\n")
	}
	return b.String()
}

// sandbox reports "yes" when the process runs in ostree's bwrap sandbox as
// far as it can tell: its own binary at /usr/bin/semodule and an empty /run
// (bwrap's --dir /run).
func sandbox(root string) string {
	if !exists(filepath.Join(root, selfPath)) {
		return "no"
	}
	ents, err := os.ReadDir(filepath.Join(root, runPath))
	if err != nil || len(ents) != 0 {
		return "no"
	}
	return "yes"
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func appendLog(w *writer, line string) error {
	p := filepath.Join(w.root, logPath)
	old, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return w.write(logPath, append(old, line...))
}

// policyType reads SELINUXTYPE from the config (the last assignment wins,
// as in libselinux). It must name a single directory.
func policyType(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, configPath))
	if err != nil {
		return "", fmt.Errorf("reading SELinux config: %w", err)
	}
	return parseType(b)
}

func parseType(b []byte) (string, error) {
	typ := ""
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "SELINUXTYPE="); ok {
			typ = strings.TrimSpace(v)
		}
	}
	if typ == "" {
		return "", fmt.Errorf("/%s: no SELINUXTYPE", configPath)
	}
	if typ == "." || typ == ".." || strings.ContainsAny(typ, "/\x00") {
		return "", fmt.Errorf("/%s: bad SELINUXTYPE %q", configPath, typ)
	}
	return typ, nil
}

// storeDigest hashes the module store: for every regular file and symlink
// in lexical order of its slash path relative to dir, a type letter, the
// path, and the content (length-prefixed) or link target. A missing store
// is an empty one. failed reports a regular file named FAIL.
func storeDigest(dir string) (digest string, failed bool, err error) {
	h := sha256.New()
	var rels []string
	kinds := map[string]byte{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		switch {
		case d.Type().IsRegular():
			if d.Name() == "FAIL" {
				failed = true
			}
			kinds[rel] = 'f'
		case d.Type()&fs.ModeSymlink != 0:
			kinds[rel] = 'l'
		default:
			return nil
		}
		rels = append(rels, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("reading module store: %w", err)
	}
	slices.Sort(rels)
	for _, rel := range rels {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		var data []byte
		if kinds[filepath.FromSlash(rel)] == 'l' {
			t, err := os.Readlink(p)
			if err != nil {
				return "", false, fmt.Errorf("reading module store: %w", err)
			}
			data = []byte(t)
		} else if data, err = os.ReadFile(p); err != nil {
			return "", false, fmt.Errorf("reading module store: %w", err)
		}
		fmt.Fprintf(h, "%c %d:%s %d:", kinds[filepath.FromSlash(rel)], len(rel), rel, len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), failed, nil
}

// homedirContexts is file_contexts.homedirs: one line per /etc/passwd user
// with uid >= 1000, in file order. A missing passwd has no users; a line
// that is not seven colon-separated fields with a numeric uid is an error.
func homedirContexts(root string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(root, passwdPath))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseHomedirs(b)
}

func parseHomedirs(b []byte) ([]byte, error) {
	var out bytes.Buffer
	for i, l := range strings.Split(string(b), "\n") {
		if l == "" {
			continue
		}
		f := strings.Split(l, ":")
		if len(f) != 7 {
			return nil, fmt.Errorf("/%s line %d: %d fields, want 7", passwdPath, i+1, len(f))
		}
		uid, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("/%s line %d: uid %q", passwdPath, i+1, f[2])
		}
		if uid >= 1000 {
			fmt.Fprintf(&out, "%s(/.*)? user_home_t\n", f[5])
		}
	}
	return out.Bytes(), nil
}

func rebuildIfChanged(w *writer) error {
	root := w.root
	typ, err := policyType(root)
	if err != nil {
		return err
	}
	base := "etc/selinux/" + typ
	digest, failed, err := storeDigest(filepath.Join(root, base, storeSuffix))
	if err != nil {
		return err
	}
	if failed {
		//lint:ignore ST1005 semodule's own message, which the tests expect verbatim
		return errors.New("Failed!")
	}
	old, err := os.ReadFile(filepath.Join(root, base, storeSuffix+".checksum"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err == nil && strings.TrimSpace(string(old)) == digest {
		return nil
	}
	homedirs, err := homedirContexts(root)
	if err != nil {
		return err
	}
	for _, f := range []struct {
		rel  string
		data []byte
	}{
		{base + "/policy/policy.33", []byte("policy from modules " + digest + "\n")},
		{base + "/contexts/files/file_contexts.homedirs", homedirs},
		{base + "/" + storeSuffix + ".checksum", []byte(digest)},
		{markerPath, []byte(digest)},
	} {
		if err := w.write(f.rel, f.data); err != nil {
			return err
		}
		if f.rel == base+"/policy/policy.33" && exists(filepath.Join(root, base, "active", SlowName)) {
			if err := w.write(sleepingPath, nil); err != nil {
				return err
			}
			// A modelled slow rebuild, not synchronisation.
			time.Sleep(SlowPause)
			if err := os.Remove(filepath.Join(root, sleepingPath)); err != nil {
				return err
			}
		}
	}
	return nil
}

// writer replaces files under root (mode 0644, mtime FixedTime), creating
// missing parent directories (0755). Every directory it created gets
// FixedTime at done, after all writes into it.
type writer struct {
	root string
	made []string
}

func (w *writer) write(rel string, data []byte) error {
	p := filepath.Join(w.root, filepath.FromSlash(rel))
	dir := filepath.Dir(p)
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil || d == w.root || d == filepath.Dir(d) {
			break
		}
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil {
			return err
		}
		w.made = append(w.made, missing[i])
		// Not subject to the umask.
		if err := os.Chmod(missing[i], 0o755); err != nil {
			return err
		}
	}
	f, err := os.CreateTemp(dir, ".fake-semodule-*")
	if err != nil {
		return fmt.Errorf("writing /%s: %w", rel, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chtimes(tmp, FixedTime, FixedTime)
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing /%s: %w", rel, err)
	}
	return nil
}

func (w *writer) done() error {
	for _, d := range w.made {
		if err := os.Chtimes(d, FixedTime, FixedTime); err != nil {
			return err
		}
	}
	return nil
}
