package ostree

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Deployment is one entry of ostree's deployment list, as ostree_sysroot_load
// builds it (ostree-sysroot.c: parse_deployment, _ostree_sysroot_reload_staged).
type Deployment struct {
	OSName   string   // stateroot
	Checksum Checksum // the deployed commit
	Serial   int      // deployserial: ostree/deploy/OS/deploy/CSUM.SERIAL
	// BootCsum is the boot checksum from the ostree= argument (for the staged
	// deployment: the staged state's "bootcsum").
	BootCsum string
	// BootSerial is the tree boot serial of the ostree= argument; -1 for the
	// staged deployment, as ostree (it has no bootloader entry yet).
	BootSerial int
	Index      int  // position in Sysroot.Deployments; 0 is the default (or the staged one)
	Pinned     bool // origin has [libostree-transient] pinned=true (g_key_file_get_boolean)
	Staged     bool
	Booted     bool
	// Kargs is the "options" line of the bootloader entry split on single
	// spaces exactly as ostree (g_strsplit(options, " ")) does, so empty
	// strings appear where the line has double spaces; nil when there is no
	// options line. For the staged deployment: the staged state's "kargs"
	// (nil when it has none).
	Kargs []string
	// Origin is the raw content of ostree/deploy/OS/deploy/CSUM.SERIAL.origin;
	// nil when the file does not exist (ostree then has no origin, "origin: none").
	Origin []byte
	// OriginFile is Origin parsed as GKeyFile; nil when Origin is nil.
	OriginFile *KeyFile
	// Entry is the bootloader entry this deployment was read from; nil for
	// the staged deployment.
	Entry *BootEntry
	// OverlayInitrds are the checksums of the overlay initrds (the entry's
	// second and later "initrd" lines; for the staged deployment the staged
	// state's "overlay-initrds").
	OverlayInitrds []string
}

// DeployName is the deployment directory's name, "CSUM.SERIAL".
func (d *Deployment) DeployName() string {
	return fmt.Sprintf("%s.%d", d.Checksum, d.Serial)
}

// String names the deployment as ostree admin status does: "OS CSUM.SERIAL".
func (d *Deployment) String() string { return d.OSName + " " + d.DeployName() }

// Same is ostree_deployment_equal: same stateroot, checksum and deployserial
// (boot checksum and serial do not take part).
func (d *Deployment) Same(o *Deployment) bool {
	if d == nil || o == nil {
		return d == o
	}
	return d.OSName == o.OSName && d.Checksum == o.Checksum && d.Serial == o.Serial
}

// maxSysrootTextFile caps BLS entries and origin files: both are a few hundred
// bytes when ostree writes them; anything near this is not ostree's.
const maxSysrootTextFile = 1 << 20

// BootEntry is a Boot Loader Specification entry as ostree's
// OstreeBootconfigParser reads it (ostree-bootconfig-parser.c,
// ostree_bootconfig_parser_parse_at): every line starting with an ASCII
// letter is split at its first space or tab into key and value (the value
// keeps everything after that one separator, including further blanks and a
// trailing '\r'); a line without separator is ignored; a repeated key
// replaces the earlier value, except that the second and later "initrd"
// lines are overlay initrds.
type BootEntry struct {
	Name           string            // file name in boot/loader.N/entries (set by the loader)
	Options        map[string]string // key → value
	OverlayInitrds []string          // raw values of the extra initrd lines, in file order
}

// ParseBootEntry decodes a BLS entry file. ostree reads it with
// glnx_file_get_contents_utf8_at, which refuses invalid UTF-8 and NUL bytes;
// so does this. Errors wrap ErrCorrupt.
func ParseBootEntry(b []byte) (*BootEntry, error) {
	if len(b) > maxSysrootTextFile {
		return nil, fmt.Errorf("boot entry of %d bytes, over the %d-byte limit: %w", len(b), maxSysrootTextFile, ErrCorrupt)
	}
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("boot entry is not valid UTF-8: %w", ErrCorrupt)
	}
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return nil, fmt.Errorf("boot entry has a NUL byte at offset %d: %w", i, ErrCorrupt)
	}
	e := &BootEntry{Options: map[string]string{}}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || !(line[0] >= 'a' && line[0] <= 'z' || line[0] >= 'A' && line[0] <= 'Z') {
			continue
		}
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			continue
		}
		key, value := line[:i], line[i+1:]
		if _, ok := e.Options["initrd"]; key == "initrd" && ok {
			e.OverlayInitrds = append(e.OverlayInitrds, value)
			continue
		}
		e.Options[key] = value
	}
	return e, nil
}

// Get is ostree_bootconfig_parser_get.
func (e *BootEntry) Get(key string) (string, bool) {
	v, ok := e.Options[key]
	return v, ok
}

// Kargs splits the "options" value as ostree does (g_strsplit on " ",
// empty pieces kept); nil when there is no options line or it is empty.
func (e *BootEntry) Kargs() []string {
	o, ok := e.Options["options"]
	if !ok || o == "" {
		return nil
	}
	return strings.Split(o, " ")
}

// OstreeArg is get_ostree_kernel_arg_from_config: the value of the first
// "ostree=" argument of the options line.
func (e *BootEntry) OstreeArg() (string, bool) {
	for _, a := range e.Kargs() {
		if v, ok := strings.CutPrefix(a, "ostree="); ok {
			return v, true
		}
	}
	return "", false
}

// OverlayInitrdChecksums is what list_deployments_process_one_boot_entry
// derives from the overlay initrd lines: each basename must be a
// 64-character checksum plus ".img". Errors wrap ErrCorrupt.
func (e *BootEntry) OverlayInitrdChecksums() ([]string, error) {
	var out []string
	for _, p := range e.OverlayInitrds {
		base := p[strings.LastIndexByte(p, '/')+1:]
		if len(base) != 64+len(".img") {
			return nil, fmt.Errorf("malformed overlay initrd filename %q: %w", truncate(base), ErrCorrupt)
		}
		out = append(out, base[:64])
	}
	return out, nil
}

// BootLink is a parsed ostree= kernel argument,
// /ostree/boot.BOOTVERSION/OSNAME/BOOTCSUM/TREESERIAL.
type BootLink struct {
	BootVersion int
	OSName      string
	BootCsum    string
	BootSerial  int
}

// RelPath is the link's path relative to the sysroot
// ("ostree/boot.N/OS/BOOTCSUM/SERIAL").
func (l BootLink) RelPath() string {
	return fmt.Sprintf("ostree/boot.%d/%s/%s/%d", l.BootVersion, l.OSName, l.BootCsum, l.BootSerial)
}

// ParseBootLink is ostree's parse_bootlink (the regex
// ^/ostree/boot.([01])/([^/]+)/([^/]+)/([0-9]+)$), stricter in ways that
// never reject what ostree writes: the "." after "boot" is literal, "." and
// ".." are refused as stateroot or boot checksum (they would make the link
// path climb), and the serial must fit an int32 and have no leading zero
// (ostree reads the link under the name as written, so "01" would be
// another file than the one RelPath names). Errors wrap ErrCorrupt.
func ParseBootLink(s string) (BootLink, error) {
	var l BootLink
	bad := func(why string) (BootLink, error) {
		return BootLink{}, fmt.Errorf("invalid ostree= argument %q (%s), expected /ostree/boot.BOOTVERSION/OSNAME/BOOTCSUM/TREESERIAL: %w", truncate(s), why, ErrCorrupt)
	}
	rest, ok := strings.CutPrefix(s, "/ostree/boot.")
	if !ok {
		return bad("no /ostree/boot. prefix")
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 {
		return bad("wrong number of path components")
	}
	switch parts[0] {
	case "0":
		l.BootVersion = 0
	case "1":
		l.BootVersion = 1
	default:
		return bad("boot version is not 0 or 1")
	}
	for _, p := range parts[1:3] {
		if p == "" || p == "." || p == ".." {
			return bad("empty, . or .. component")
		}
	}
	if strings.ContainsAny(s, "\n\x00") {
		return bad("control character")
	}
	l.OSName, l.BootCsum = parts[1], parts[2]
	n, err := parseBootlinkSerial(parts[3])
	if err != nil {
		return bad(err.Error())
	}
	if len(parts[3]) > 1 && parts[3][0] == '0' {
		return bad("serial with a leading zero")
	}
	l.BootSerial = n
	return l, nil
}

// parseBootlinkSerial accepts [0-9]+ that fits an int32 (ostree keeps serials in a
// C int).
func parseBootlinkSerial(s string) (int, error) {
	if s == "" {
		return 0, errors.New("empty serial")
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("serial %q is not decimal", truncate(s))
		}
		n = n*10 + int(c-'0')
		if n > math.MaxInt32 {
			return 0, fmt.Errorf("serial %q out of range", truncate(s))
		}
	}
	return n, nil
}

// compareBootEntries is compare_boot_loader_configs: by "version" with
// strverscmp, highest first; an entry without version sorts after one with;
// two without both report "after" (ostree's comparator is not symmetric
// there, which is why the sort below must be GLib's own merge sort).
func compareBootEntries(a, b *BootEntry) int {
	av, aok := a.Options["version"]
	bv, bok := b.Options["version"]
	switch {
	case aok && bok:
		return -Strverscmp(av, bv)
	case aok:
		return -1
	default:
		return 1
	}
}

// glibMergeSort is g_ptr_array_sort as GLib 2.74 implements it (g_qsort_with_data,
// the glibc msort: split at n/2, sort both halves, merge taking the left
// element when cmp <= 0). Reproducing it exactly matters for entries that
// compare as ties, and for the asymmetric "no version" case.
func glibMergeSort[T any](s []T, cmp func(a, b T) int) {
	if len(s) <= 1 {
		return
	}
	n1 := len(s) / 2
	glibMergeSort(s[:n1], cmp)
	glibMergeSort(s[n1:], cmp)
	tmp := make([]T, 0, len(s))
	l, r := s[:n1], s[n1:]
	for len(l) > 0 && len(r) > 0 {
		if cmp(l[0], r[0]) <= 0 {
			tmp = append(tmp, l[0])
			l = l[1:]
		} else {
			tmp = append(tmp, r[0])
			r = r[1:]
		}
	}
	tmp = append(tmp, l...)
	tmp = append(tmp, r...)
	copy(s, tmp)
}

// Strverscmp is glibc's strverscmp(3): strings compare byte-wise, except
// that digit runs compare numerically, and runs with leading zeros as
// fractional parts. The result's sign is what matters.
func Strverscmp(s1, s2 string) int {
	// States of glibc's automaton: normal, integral part, fractional part,
	// leading zeros of a fractional part. Each is offset by the class of
	// the current character (0: other, 1: digit 1-9, 2: '0').
	const (
		sN = 0
		sI = 3
		sF = 6
		sZ = 9
	)
	const (
		rCMP = 2
		rLEN = 3
	)
	nextState := [12]int{
		sN, sI, sZ,
		sN, sI, sI,
		sN, sF, sF,
		sN, sF, sZ,
	}
	resultType := [36]int{
		rCMP, rCMP, rCMP, rCMP, rLEN, rCMP, rCMP, rCMP, rCMP,
		rCMP, -1, -1, +1, rLEN, rLEN, +1, rLEN, rLEN,
		rCMP, rCMP, rCMP, rCMP, rCMP, rCMP, rCMP, rCMP, rCMP,
		rCMP, +1, +1, -1, rCMP, rCMP, -1, rCMP, rCMP,
	}
	at := func(s string, i int) byte { // C strings end in NUL
		if i < len(s) {
			return s[i]
		}
		return 0
	}
	isDigit := func(c byte) bool { return c >= '0' && c <= '9' }
	class := func(c byte) int {
		n := 0
		if c == '0' {
			n++
		}
		if isDigit(c) {
			n++
		}
		return n
	}
	i := 0
	c1, c2 := at(s1, i), at(s2, i)
	state := sN + class(c1)
	for c1 == c2 {
		if c1 == 0 {
			return 0
		}
		state = nextState[state]
		i++
		c1, c2 = at(s1, i), at(s2, i)
		state += class(c1)
	}
	diff := int(c1) - int(c2)
	switch r := resultType[state*3+class(c2)]; r {
	case rCMP:
		return diff
	case rLEN:
		// glibc: while (isdigit (*p1++)) if (!isdigit (*p2++)) return 1;
		//        return isdigit (*p2) ? -1 : diff;
		j := i + 1
		for isDigit(at(s1, j)) {
			if !isDigit(at(s2, j)) {
				return 1
			}
			j++
		}
		if isDigit(at(s2, j)) {
			return -1
		}
		return diff
	default:
		return r
	}
}
