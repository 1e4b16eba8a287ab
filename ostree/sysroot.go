package ostree

// Longer than 500 lines on purpose: one port of ostree_sysroot_load
// (bootversion, BLS entries, booted and staged deployments); its steps
// share the loader's state.

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Sysroot is an ostree sysroot as ostree_sysroot_load sees it
// (ostree-sysroot.c: sysroot_load_from_bootloader_configs). It is a
// snapshot: nothing is held open.
type Sysroot struct {
	Path   string // the sysroot directory as given (cleaned)
	RunDir string // where ostree-booted and ostree/staged-deployment are looked up

	BootVersion    int // boot/loader → loader.N (0 when boot/loader is absent)
	SubBootVersion int // ostree/boot.N → boot.N.M (0 when absent)

	// Deployments in ostree's order: the staged deployment first when there
	// is one, then the bootloader entries by descending "version"; Index is
	// the position in this slice, and index 0 (after the staged one) is the
	// default boot entry.
	Deployments []*Deployment

	// Booted is the deployment whose directory is "/" (nil when not booted
	// into this sysroot, or with LoadOptions.NoBooted).
	Booted *Deployment
	// Staged is the staged deployment (only looked for when booted, as ostree
	// does); StagedState is the decoded <RunDir>/ostree/staged-deployment it
	// came from.
	Staged      *Deployment
	StagedState *StagedState
	// StagedErr is why the staged state could not be loaded, with
	// LoadOptions.TolerateStaged only.
	StagedErr error
	// StagedLocked: finalization is locked, i.e. <RunDir>/ostree/staged-deployment-locked
	// exists (what ostree 2022.7 checks) or the state's "locked" key is true
	// (newer ostree).
	StagedLocked bool
	// Merge is the staged state's "merge-deployment" found in Deployments by
	// ostree_deployment_equal; nil when the state has none or (a state ostree's
	// finalization refuses: "Failed to find merge deployment") when it names
	// a deployment not in the list. StagedState.Merge tells the two apart.
	Merge *Deployment

	Repo *Repo // <Path>/ostree/repo
}

// LoadOptions tune LoadSysroot.
type LoadOptions struct {
	// RunDir replaces "/run" (ostree-booted, ostree/staged-deployment,
	// ostree/staged-deployment-locked). Empty means "/run".
	RunDir string
	// BootedDevIno, when set, is taken as the device and inode of "/" and
	// the sysroot is treated as booted without checking <RunDir>/ostree-booted
	// or that the sysroot is "/" (for tests that look at a booted sysroot
	// from outside its namespace).
	BootedDevIno *[2]uint64
	// NoBooted looks for no booted deployment, and so (as ostree) loads no
	// staged deployment either.
	NoBooted bool
	// TolerateStaged loads the sysroot even when the staged state cannot
	// be read or decoded: Sysroot.StagedErr then says why and no staged
	// deployment is loaded. For reports (status); ostree itself fails.
	TolerateStaged bool
}

// LoadSysroot reads the sysroot at path as ostree_sysroot_load does.
// Without BootedDevIno, the sysroot counts as booted, as in ostree, when
// <RunDir>/ostree-booted exists and path is the same directory as "/".
// Every path is resolved inside path: a symlink that leads out of it (an
// absolute target or one climbing with "..") is an error, never followed.
// Errors name the file and wrap ErrCorrupt or ErrNotFound.
func LoadSysroot(path string, opts LoadOptions) (*Sysroot, error) {
	s := &Sysroot{Path: filepath.Clean(path), RunDir: opts.RunDir}
	if s.RunDir == "" {
		s.RunDir = "/run"
	}
	rootfd, err := unix.Open(s.Path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sysroot %s: %w", s.Path, srErr(err))
	}
	defer unix.Close(rootfd)
	l := &sysrootLoader{s: s, root: rootfd}

	if !opts.NoBooted {
		if opts.BootedDevIno != nil {
			l.booted, l.rootDev, l.rootIno = true, opts.BootedDevIno[0], opts.BootedDevIno[1]
		} else if l.booted, err = l.rootIsOstreeBooted(); err != nil {
			return nil, err
		}
	}

	// As ostree_sysroot_load_if_changed: the repository must open and
	// ostree/deploy must exist before anything else is read.
	if s.Repo, err = OpenRepo(filepath.Join(s.Path, "ostree/repo")); err != nil {
		return nil, fmt.Errorf("sysroot %s: %w", s.Path, err)
	}
	if _, err := l.stat("ostree/deploy", true); err != nil {
		return nil, err
	}
	if s.BootVersion, err = l.readBootVersion(); err != nil {
		return nil, err
	}
	if s.SubBootVersion, err = l.readSubBootVersion(s.BootVersion); err != nil {
		return nil, err
	}
	entries, err := l.readBootEntries(s.BootVersion)
	if err != nil {
		return nil, err
	}
	var deps []*Deployment
	for _, e := range entries {
		d, err := l.deploymentFromEntry(e)
		if err != nil {
			return nil, err
		}
		deps = append(deps, d)
	}
	if l.booted && s.Booted == nil {
		return nil, fmt.Errorf("sysroot %s: booted (ostree-booted present, or a booted root given) but no bootloader entry of boot/loader.%d is the root directory: %w", s.Path, s.BootVersion, ErrNotFound)
	}
	if l.booted {
		if err := l.loadStaged(); err != nil {
			if !opts.TolerateStaged {
				return nil, err
			}
			s.Staged, s.StagedState, s.StagedLocked, s.StagedErr = nil, nil, false, err
		}
	}
	// ostree sorts the configs, then sorts the deployments again with the
	// same comparator; both passes are reproduced because that comparator is
	// not a total order for entries without "version".
	glibMergeSort(deps, func(a, b *Deployment) int { return compareBootEntries(a.Entry, b.Entry) })
	if s.Staged != nil {
		deps = append([]*Deployment{s.Staged}, deps...)
	}
	for i, d := range deps {
		d.Index = i
	}
	s.Deployments = deps
	if s.StagedState != nil && s.StagedState.Merge != nil {
		s.Merge = s.Find(*s.StagedState.Merge)
	}
	return s, nil
}

// DeploymentDir is <sysroot>/ostree/deploy/OS/deploy/CSUM.SERIAL.
func (s *Sysroot) DeploymentDir(d *Deployment) string {
	return filepath.Join(s.Path, deploymentRelDir(d.OSName, d.Checksum, d.Serial))
}

// OriginPath is the deployment's origin file, DeploymentDir + ".origin".
func (s *Sysroot) OriginPath(d *Deployment) string { return s.DeploymentDir(d) + ".origin" }

// Find returns the deployment of the list equal to id in ostree's sense
// (stateroot, checksum, serial), or nil.
func (s *Sysroot) Find(id DeploymentID) *Deployment {
	for _, d := range s.Deployments {
		if d.OSName == id.OSName && d.Checksum == id.Checksum && d.Serial == id.Serial {
			return d
		}
	}
	return nil
}

// ID is the deployment's identity as the staged state records it.
func (d *Deployment) ID() DeploymentID {
	return DeploymentID{OSName: d.OSName, Checksum: d.Checksum, Serial: d.Serial, BootCsum: d.BootCsum}
}

func deploymentRelDir(osname string, c Checksum, serial int) string {
	return fmt.Sprintf("ostree/deploy/%s/deploy/%s.%d", osname, c, serial)
}

type sysrootLoader struct {
	s                *Sysroot
	root             int // O_PATH fd of the sysroot
	booted           bool
	rootDev, rootIno uint64
}

// rootIsOstreeBooted is ostree_sysroot_initialize's root_is_ostree_booted:
// <RunDir>/ostree-booted exists and the sysroot is "/".
func (l *sysrootLoader) rootIsOstreeBooted() (bool, error) {
	flag := filepath.Join(l.s.RunDir, "ostree-booted")
	if err := unix.Stat(flag, new(unix.Stat_t)); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("%s: %w", flag, srErr(err))
	}
	var root, self unix.Stat_t
	if err := unix.Stat("/", &root); err != nil {
		return false, fmt.Errorf("/: %w", srErr(err))
	}
	if err := unix.Fstat(l.root, &self); err != nil {
		return false, fmt.Errorf("sysroot %s: %w", l.s.Path, srErr(err))
	}
	l.rootDev, l.rootIno = uint64(root.Dev), root.Ino
	return root.Dev == self.Dev && root.Ino == self.Ino, nil
}

// open opens rel below the sysroot. Symlinks are followed only while they
// stay below it (RESOLVE_BENEATH: an absolute or climbing target fails with
// EXDEV); the final component is followed too unless flags has O_NOFOLLOW.
func (l *sysrootLoader) open(rel string, flags int) (int, error) {
	flags |= unix.O_CLOEXEC
	if flags&unix.O_PATH == 0 {
		flags |= unix.O_NOCTTY // openat2 refuses it together with O_PATH
	}
	how := &unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS}
	fd, err := unix.Openat2(l.root, rel, how)
	// openat2 with RESOLVE_BENEATH may fail with EAGAIN when a rename races
	// the lookup; retrying is what the man page asks for.
	for i := 0; i < 16 && (errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN)); i++ {
		fd, err = unix.Openat2(l.root, rel, how)
	}
	if err != nil {
		return -1, fmt.Errorf("%s: %w", filepath.Join(l.s.Path, rel), srErr(err))
	}
	return fd, nil
}

// stat stats rel below the sysroot (following symlinks that stay inside).
func (l *sysrootLoader) stat(rel string, dir bool) (*unix.Stat_t, error) {
	flags := unix.O_PATH
	if dir {
		flags |= unix.O_DIRECTORY
	}
	fd, err := l.open(rel, flags)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(l.s.Path, rel), srErr(err))
	}
	return &st, nil
}

// readLink reads the symlink rel (its parent resolved below the sysroot).
// ok is false when it does not exist.
func (l *sysrootLoader) readLink(rel string) (target string, ok bool, err error) {
	full := filepath.Join(l.s.Path, rel)
	dir, name := filepath.Split(rel)
	pfd := l.root
	if dir != "" {
		if pfd, err = l.open(strings.TrimSuffix(dir, "/"), unix.O_PATH|unix.O_DIRECTORY); err != nil {
			if errors.Is(err, ErrNotFound) {
				return "", false, nil
			}
			return "", false, err
		}
		defer unix.Close(pfd)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("%s: %w", full, srErr(err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return "", false, fmt.Errorf("%s: not a symbolic link (mode %o): %w", full, st.Mode, ErrCorrupt)
	}
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(pfd, name, buf)
	if err != nil {
		return "", false, fmt.Errorf("%s: %w", full, srErr(err))
	}
	return string(buf[:n]), true, nil
}

// readFile reads rel below the sysroot, at most limit bytes; ok is false
// when it does not exist. A non-regular file is an error.
func (l *sysrootLoader) readFile(rel string, limit int64) (data []byte, ok bool, err error) {
	fd, regular, err := l.openRegular(rel)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, false, nil
		}
		return nil, false, err
	}
	if !regular {
		return nil, false, fmt.Errorf("%s: not a regular file: %w", filepath.Join(l.s.Path, rel), ErrCorrupt)
	}
	data, err = srReadFD(fd, filepath.Join(l.s.Path, rel), limit)
	return data, err == nil, err
}

// openRegular opens rel for reading when it is a regular file (regular
// true, fd open); anything else is only looked at through O_PATH, so that
// a FIFO or device where a text file belongs is never opened.
func (l *sysrootLoader) openRegular(rel string) (fd int, regular bool, err error) {
	pfd, err := l.open(rel, unix.O_PATH)
	if err != nil {
		return -1, false, err
	}
	var st unix.Stat_t
	err = unix.Fstat(pfd, &st)
	unix.Close(pfd)
	if err != nil {
		return -1, false, fmt.Errorf("%s: %w", filepath.Join(l.s.Path, rel), srErr(err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, false, nil
	}
	if fd, err = l.open(rel, unix.O_RDONLY|unix.O_NONBLOCK); err != nil {
		return -1, false, err
	}
	return fd, true, nil
}

// srReadFD reads a regular file from fd (closing it), failing past limit.
func srReadFD(fd int, name string, limit int64) ([]byte, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s): %w", name, fi.Mode().Type(), ErrCorrupt)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", name, limit, ErrCorrupt)
	}
	return b, nil
}

// readBootVersion is read_current_bootversion: boot/loader must be absent
// (bootversion 0) or a symlink to exactly "loader.0" or "loader.1".
func (l *sysrootLoader) readBootVersion() (int, error) {
	t, ok, err := l.readLink("boot/loader")
	if err != nil || !ok {
		return 0, err
	}
	switch t {
	case "loader.0":
		return 0, nil
	case "loader.1":
		return 1, nil
	}
	return 0, fmt.Errorf("%s: invalid target %q, want loader.0 or loader.1: %w", filepath.Join(l.s.Path, "boot/loader"), truncate(t), ErrCorrupt)
}

// readSubBootVersion is _ostree_sysroot_read_current_subbootversion:
// ostree/boot.N absent (0) or a symlink to boot.N.0 / boot.N.1 (ostree only
// checks the ".0"/".1" suffix; it only ever writes these exact names).
func (l *sysrootLoader) readSubBootVersion(bootversion int) (int, error) {
	rel := fmt.Sprintf("ostree/boot.%d", bootversion)
	t, ok, err := l.readLink(rel)
	if err != nil || !ok {
		return 0, err
	}
	switch t {
	case fmt.Sprintf("boot.%d.0", bootversion):
		return 0, nil
	case fmt.Sprintf("boot.%d.1", bootversion):
		return 1, nil
	}
	return 0, fmt.Errorf("%s: invalid target %q, want boot.%d.0 or boot.%d.1: %w", filepath.Join(l.s.Path, rel), truncate(t), bootversion, bootversion, ErrCorrupt)
}

// readBootEntries is _ostree_sysroot_read_boot_loader_configs: every
// regular file (symlinks followed) named ostree-*.conf in
// boot/loader.N/entries, in directory order, then sorted as ostree sorts.
func (l *sysrootLoader) readBootEntries(bootversion int) ([]*BootEntry, error) {
	dirRel := fmt.Sprintf("boot/loader.%d/entries", bootversion)
	fd, err := l.open(dirRel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	dir := os.NewFile(uintptr(fd), filepath.Join(l.s.Path, dirRel))
	// Readdirnames keeps the kernel's order (readdir's, as ostree sees it);
	// it matters only for entries that compare as equal.
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(l.s.Path, dirRel), err)
	}
	var out []*BootEntry
	for _, name := range names {
		if !strings.HasPrefix(name, "ostree-") || !strings.HasSuffix(name, ".conf") {
			continue
		}
		rel := dirRel + "/" + name
		full := filepath.Join(l.s.Path, rel)
		efd, regular, err := l.openRegular(rel)
		if err != nil {
			return nil, err
		}
		if !regular {
			continue // ostree skips what is not a regular file
		}
		b, err := srReadFD(efd, full, maxSysrootTextFile)
		if err != nil {
			return nil, err
		}
		e, err := ParseBootEntry(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", full, err)
		}
		e.Name = name
		out = append(out, e)
	}
	glibMergeSort(out, compareBootEntries)
	return out, nil
}

// deploymentFromEntry is list_deployments_process_one_boot_entry and
// parse_deployment: the entry's ostree= argument names a boot link
// ostree/boot.N/OS/BOOTCSUM/SERIAL, a symlink whose target's basename is the
// deployment's CSUM.SERIAL. The link must resolve (inside the sysroot) to
// the very directory ostree/deploy/OS/deploy/CSUM.SERIAL.
func (l *sysrootLoader) deploymentFromEntry(e *BootEntry) (*Deployment, error) {
	entryPath := filepath.Join(l.s.Path, fmt.Sprintf("boot/loader.%d/entries", l.s.BootVersion), e.Name)
	arg, ok := e.OstreeArg()
	if !ok {
		return nil, fmt.Errorf("%s: no ostree= kernel argument: %w", entryPath, ErrCorrupt)
	}
	link, err := ParseBootLink(arg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", entryPath, err)
	}
	linkRel := link.RelPath()
	target, ok, err := l.readLink(linkRel)
	if err != nil {
		return nil, fmt.Errorf("%s: boot link: %w", entryPath, err)
	}
	if !ok {
		return nil, fmt.Errorf("%s: boot link %s does not exist: %w", entryPath, filepath.Join(l.s.Path, linkRel), ErrNotFound)
	}
	csum, serial, err := ParseDeployName(target[strings.LastIndexByte(target, '/')+1:])
	if err != nil {
		return nil, fmt.Errorf("%s: boot link %s → %q: %w", entryPath, filepath.Join(l.s.Path, linkRel), truncate(target), err)
	}
	d := &Deployment{
		OSName:     link.OSName,
		Checksum:   csum,
		Serial:     serial,
		BootCsum:   link.BootCsum,
		BootSerial: link.BootSerial,
		Kargs:      e.Kargs(),
		Entry:      e,
	}
	if strings.Contains(d.OSName, "/") { // excluded by ParseBootLink; the path below relies on it
		return nil, fmt.Errorf("%s: stateroot %q: %w", entryPath, truncate(d.OSName), ErrCorrupt)
	}
	viaLink, err := l.stat(linkRel, true)
	if err != nil {
		return nil, fmt.Errorf("%s: deployment directory through boot link: %w", entryPath, err)
	}
	dirRel := deploymentRelDir(d.OSName, d.Checksum, d.Serial)
	direct, err := l.stat(dirRel, true)
	if err != nil {
		return nil, fmt.Errorf("%s: deployment directory: %w", entryPath, err)
	}
	if viaLink.Dev != direct.Dev || viaLink.Ino != direct.Ino {
		return nil, fmt.Errorf("%s: boot link %s → %q is not the directory %s: %w", entryPath, filepath.Join(l.s.Path, linkRel), truncate(target), filepath.Join(l.s.Path, dirRel), ErrCorrupt)
	}
	if l.booted && l.s.Booted == nil && uint64(viaLink.Dev) == l.rootDev && viaLink.Ino == l.rootIno {
		d.Booted = true
		l.s.Booted = d
	}
	if err := l.loadOrigin(d); err != nil {
		return nil, err
	}
	if d.OverlayInitrds, err = e.OverlayInitrdChecksums(); err != nil {
		return nil, fmt.Errorf("%s: %w", entryPath, err)
	}
	return d, nil
}

// loadOrigin is load_origin: the origin file is optional; when present it
// must parse as a GKeyFile.
func (l *sysrootLoader) loadOrigin(d *Deployment) error {
	rel := deploymentRelDir(d.OSName, d.Checksum, d.Serial) + ".origin"
	b, ok, err := l.readFile(rel, maxSysrootTextFile)
	if err != nil || !ok {
		return err
	}
	kf, err := parseOrigin(b)
	if err != nil {
		return fmt.Errorf("origin %s: %w", filepath.Join(l.s.Path, rel), err)
	}
	d.Origin, d.OriginFile = b, kf
	d.Pinned = originPinned(kf)
	return nil
}

// parseOrigin decodes an origin file as load_origin does
// (glnx_fd_readall_utf8 + g_key_file_load_from_data).
func parseOrigin(b []byte) (*KeyFile, error) {
	if len(b) > maxSysrootTextFile {
		return nil, fmt.Errorf("origin of %d bytes, over the %d-byte limit: %w", len(b), maxSysrootTextFile, ErrCorrupt)
	}
	kf, err := ParseKeyFile(b)
	if err != nil {
		return nil, err
	}
	if err := checkKeyFileEncoding(string(b)); err != nil {
		return nil, err
	}
	return kf, nil
}

// checkKeyFileEncoding adds the one GKeyFile rule ParseKeyFile leaves out
// (g_key_file_parse_key_value_pair): an "Encoding" key in the file's first
// group, wherever that group appears, must be "UTF-8" (any case, nothing
// after it), or GLib refuses the file and ostree the sysroot. b has already
// parsed, so every non-blank, non-comment line is a group or key=value.
func checkKeyFileEncoding(b string) error {
	isSpace := func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\f' || r == '\r' } // g_ascii_isspace
	var first, cur string
	lines := strings.Split(b, "\n")
	for i, line := range lines {
		if i < len(lines)-1 { // GLib drops a '\r' only right before a '\n'
			line = strings.TrimSuffix(line, "\r")
		}
		line = strings.TrimLeftFunc(line, isSpace)
		if line == "" || line[0] == '#' {
			continue
		}
		if line[0] == '[' {
			if end := strings.IndexByte(line, ']'); end > 0 {
				cur = line[1:end]
				if first == "" {
					first = cur
				}
				continue
			}
		}
		eq := strings.IndexByte(line, '=')
		if eq < 0 || cur != first || strings.TrimRightFunc(line[:eq], isSpace) != "Encoding" {
			continue
		}
		v := strings.TrimLeftFunc(line[eq+1:], isSpace)
		if !strings.EqualFold(v, "UTF-8") || len(v) != len("UTF-8") {
			return fmt.Errorf("key file contains unsupported encoding %q: %w", truncate(v), ErrCorrupt)
		}
	}
	return nil
}

// originPinned is ostree_deployment_is_pinned: g_key_file_get_boolean on
// [libostree-transient] pinned, whose errors (missing, not a boolean) mean
// false.
func originPinned(kf *KeyFile) bool {
	p, err := kf.Bool("libostree-transient", "pinned", false)
	return err == nil && p
}

// OriginRefspec is what ostree admin status prints as "origin refspec":
// g_key_file_get_string(origin, "origin", "refspec"). GLib decodes \s \n \t
// \r \\, keeps any other escape as written and drops a trailing lone
// backslash (it reports an error but still returns the string, which ostree
// uses). ok is false when there is no origin or no such key.
func (d *Deployment) OriginRefspec() (string, bool) {
	if d.OriginFile == nil {
		return "", false
	}
	v, ok := d.OriginFile.Value("origin", "refspec")
	if !ok {
		return "", false
	}
	return keyFileUnescape(v), true
}

func keyFileUnescape(v string) string {
	if !strings.Contains(v, `\`) {
		return v
	}
	var sb strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '\\' {
			sb.WriteByte(v[i])
			continue
		}
		i++
		if i == len(v) {
			break
		}
		switch c := v[i]; c {
		case 's':
			sb.WriteByte(' ')
		case 'n':
			sb.WriteByte('\n')
		case 't':
			sb.WriteByte('\t')
		case 'r':
			sb.WriteByte('\r')
		case '\\':
			sb.WriteByte('\\')
		default:
			sb.WriteByte('\\')
			sb.WriteByte(c)
		}
	}
	return sb.String()
}

// loadStaged is _ostree_sysroot_reload_staged (called only when booted):
// <RunDir>/ostree/staged-deployment, when present and holding a "target",
// is the staged deployment; its origin is read like any other.
func (l *sysrootLoader) loadStaged() error {
	s := l.s
	path := filepath.Join(s.RunDir, "ostree/staged-deployment")
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("staged deployment %s: %w", path, srErr(err))
	}
	b, err := srReadFD(fd, path, MaxMetadataSize)
	if err != nil {
		return fmt.Errorf("staged deployment: %w", err)
	}
	st, err := DecodeStagedState(b)
	if errors.Is(err, ErrNoStagedTarget) {
		return nil // ostree ignores a state without target
	}
	if err != nil {
		return fmt.Errorf("staged deployment %s: %w", path, err)
	}
	d := &Deployment{
		OSName:         st.Target.OSName,
		Checksum:       st.Target.Checksum,
		Serial:         st.Target.Serial,
		BootCsum:       st.Target.BootCsum,
		BootSerial:     -1,
		Staged:         true,
		OverlayInitrds: st.OverlayInitrds,
	}
	if st.HasKargs {
		d.Kargs = st.Kargs
	}
	if strings.Contains(d.OSName, "/") || d.OSName == "" || d.OSName == "." || d.OSName == ".." {
		return fmt.Errorf("staged deployment %s: stateroot %q: %w", path, truncate(d.OSName), ErrCorrupt)
	}
	if err := l.loadOrigin(d); err != nil {
		return fmt.Errorf("staged deployment: %w", err)
	}
	locked := filepath.Join(s.RunDir, "ostree/staged-deployment-locked")
	switch err := unix.Stat(locked, new(unix.Stat_t)); {
	case err == nil:
		s.StagedLocked = true
	case errors.Is(err, unix.ENOENT):
	default:
		return fmt.Errorf("%s: %w", locked, srErr(err))
	}
	s.StagedLocked = s.StagedLocked || st.Locked
	s.Staged, s.StagedState = d, st
	return nil
}

// srErr adds the package's sentinels to a system call error: ENOENT is
// ErrNotFound; EXDEV (a symlink leading out of the sysroot), ELOOP and
// ENOTDIR are ErrCorrupt.
func srErr(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", err, ErrNotFound)
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("path leads out of the sysroot (absolute or climbing symlink): %w", ErrCorrupt)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%w: %w", err, ErrCorrupt)
	}
	return err
}
