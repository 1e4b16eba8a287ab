package ostree

// The table of ostree-version-dependent choices. Every behaviour of ours
// that must follow a change in ostree is one row here, chosen from the
// installed ostree's `ostree --version` (its version and its build
// features), and nowhere else. Each row cites ostree's source (the file and
// function, src/libostree/ unless said otherwise) and the release tag where
// the behaviour changed, read in ostree's own history (git tags v2022.7,
// v2025.2, v2026.4).
//
// An ostree whose version cannot be read gets the zero Choices: the oldest
// behaviour of every row. For each row that is the side of doing less (a
// merge that fails where a newer ostree would skip an entry falls back to
// ostree's own merge; no SELinux refresh means no takeover when one is
// needed, see lifecycle/selinux.go).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// ErrVersion: `ostree --version` could not be run or read.
var ErrVersion = errors.New("cannot tell the installed ostree's version")

// Version is what `ostree --version` says.
type Version struct {
	Raw         string // as printed, e.g. "2025.2"
	Year, Minor int
	Features    []string // the build features, e.g. "selinux", "composefs"
}

// AtLeast: this ostree is release year.minor or newer.
func (v Version) AtLeast(year, minor int) bool {
	return v.Year > year || (v.Year == year && v.Minor >= minor)
}

// Has: ostree was built with feature.
func (v Version) Has(feature string) bool {
	for _, f := range v.Features {
		if f == feature {
			return true
		}
	}
	return false
}

// InstalledVersion runs `cmd --version`.
func InstalledVersion(ctx context.Context, cmd string) (Version, error) {
	out, err := exec.CommandContext(ctx, cmd, "--version").Output()
	if err != nil {
		return Version{}, fmt.Errorf("%w: %s --version: %v", ErrVersion, cmd, err)
	}
	return ParseVersion(out)
}

// ParseVersion reads ostree's --version output, a YAML document printed by
// ostree_option_context_parse (src/ostree/ot-main.c): "libostree:",
// " Version: '2022.7'", " Features:", "  - selinux", ...
func ParseVersion(out []byte) (Version, error) {
	var v Version
	inFeatures := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if s, ok := strings.CutPrefix(line, "Version:"); ok {
			v.Raw = strings.Trim(strings.TrimSpace(s), `'"`)
			inFeatures = false
			continue
		}
		if line == "Features:" {
			inFeatures = true
			continue
		}
		if f, ok := strings.CutPrefix(line, "- "); ok && inFeatures {
			v.Features = append(v.Features, strings.TrimSpace(f))
			continue
		}
		inFeatures = false
	}
	year, minor, ok := splitVersion(v.Raw)
	if !ok {
		return Version{}, fmt.Errorf("%w: no version in ostree --version (%q)", ErrVersion, firstLine(out))
	}
	v.Year, v.Minor = year, minor
	return v, nil
}

func splitVersion(s string) (year, minor int, ok bool) {
	ys, ms, found := strings.Cut(s, ".")
	if !found {
		return 0, 0, false
	}
	if i := strings.IndexFunc(ms, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		ms = ms[:i]
	}
	y, err1 := strconv.Atoi(ys)
	m, err2 := strconv.Atoi(ms)
	if err1 != nil || err2 != nil || y < 2000 {
		return 0, 0, false
	}
	return y, m, true
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// SELinux policy refresh options (Choices.SELinuxRefresh).
const (
	SELinuxRebuildIfModulesChanged = "--rebuild-if-modules-changed"
	SELinuxRefreshFlag             = "--refresh"
)

// Auto early prune modes (Choices.AutoEarlyPrune).
const (
	EarlyPruneNone   = ""        // ostree never prunes deployments early
	EarlyPruneOptIn  = "opt-in"  // only with OSTREE_SYSROOT_OPTS=early-prune
	EarlyPruneAlways = "default" // unless OSTREE_SYSROOT_OPTS=no-early-prune
)

// Choices are the version-dependent behaviours of the installed ostree that
// our code follows. The zero value is the oldest behaviour of every row.
// It is shown by `status --json` as ostree.choices.
type Choices struct {
	// Version is ostree's version as printed ("" when unknown).
	Version string `json:"version"`
	// SELinuxRefresh is the semodule option ostree's finalization passes
	// after its /etc merge ("" = no refresh: older than 2022.3 or built
	// without SELinux).
	SELinuxRefresh string `json:"selinux_refresh"`
	// EtcMergeSkipsSpecialInDirs: a fifo, socket or device inside a
	// directory that the /etc merge copies whole is skipped (logged);
	// false: ostree's finalization fails on it.
	EtcMergeSkipsSpecialInDirs bool `json:"etc_merge_skips_special_in_dirs"`
	// DeploymentBacking: finalization creates
	// ostree/deploy/OS/backing/CSUM.SERIAL/ and deployment removal deletes
	// it (not repository objects: the prune plan is unaffected).
	DeploymentBacking bool `json:"deployment_backing"`
	// AutoEarlyPrune: with a separate /boot short of space, ostree first
	// writes the deployments whose boot checksum survives, then the new
	// list (EarlyPrune*).
	AutoEarlyPrune string `json:"auto_early_prune"`
	// StagingStartsFinalizeService: staging runs `systemctl start
	// ostree-finalize-staged.service` itself.
	StagingStartsFinalizeService bool `json:"staging_starts_finalize_service"`
	// FinalizeRequiresEtcMount: ostree-finalize-staged.service has
	// RequiresMountsFor=/etc, so it stops before /etc is unmounted.
	FinalizeRequiresEtcMount bool `json:"finalize_requires_etc_mount"`
	// SoftReboot: `ostree admin prepare-soft-reboot` exists; "next boot"
	// may keep /run and the kernel.
	SoftReboot bool `json:"soft_reboot"`
	// ComposefsAtDeploy: every deployment checked out gets a
	// .ostree.cfs (composefs image) beside its files. Nothing changes
	// for us: the files, and the etc ostree merges, are still there.
	ComposefsAtDeploy bool `json:"composefs_at_deploy"`
	// MissingDeploymentDirFailsLoad: a deployment named by the staged
	// state (target or merge) whose directory is missing fails the
	// sysroot load instead of being a stub.
	MissingDeploymentDirFailsLoad bool `json:"missing_deployment_dir_fails_load"`
}

// Row is one version-dependent choice: since which release (and with which
// build feature) it holds, where ostree does it, and what it sets.
type Row struct {
	Name        string // the JSON key in Choices
	Year, Minor int    // the first release tag with the behaviour
	Feature     string // a build feature it also needs ("" = none)
	Where       string // ostree's source: file, function (commit)
	set         func(*Choices)
}

// Rows is the table, in order: a later row of the same Name overrides an
// earlier one (SELinux has two).
var Rows = []Row{
	{Name: "selinux_refresh", Year: 2022, Minor: 3, Feature: "selinux",
		Where: "ostree-sysroot-deploy.c sysroot_finalize_selinux_policy: semodule -N --rebuild-if-modules-changed",
		set:   func(c *Choices) { c.SELinuxRefresh = SELinuxRebuildIfModulesChanged }},
	{Name: "selinux_refresh", Year: 2023, Minor: 2, Feature: "selinux",
		Where: "ostree-sysroot-deploy.c sysroot_finalize_selinux_policy: semodule -N --refresh",
		set:   func(c *Choices) { c.SELinuxRefresh = SELinuxRefreshFlag }},
	{Name: "auto_early_prune", Year: 2023, Minor: 3,
		Where: "ostree-sysroot-deploy.c auto_early_prune_old_deployments (OSTREE_SYSROOT_OPTS=early-prune)",
		set:   func(c *Choices) { c.AutoEarlyPrune = EarlyPruneOptIn }},
	{Name: "auto_early_prune", Year: 2023, Minor: 7,
		Where: "ostree-sysroot-deploy.c ostree_sysroot_write_deployments_with_options (OSTREE_SYSROOT_OPTS=no-early-prune)",
		set:   func(c *Choices) { c.AutoEarlyPrune = EarlyPruneAlways }},
	{Name: "composefs_at_deploy", Year: 2023, Minor: 4, Feature: "composefs",
		Where: "ostree-sysroot-deploy.c checkout_deployment_tree: ostree_repo_checkout_composefs (OSTREE_COMPOSEFS_NAME); before 2024.x only unless the repo config ex-integrity.composefs is false",
		set:   func(c *Choices) { c.ComposefsAtDeploy = true }},
	{Name: "deployment_backing", Year: 2024, Minor: 1,
		Where: "ostree-sysroot-deploy.c sysroot_initialize_deployment_backing; ostree-sysroot-cleanup.c cleanup_old_deployments",
		set:   func(c *Choices) { c.DeploymentBacking = true }},
	{Name: "etc_merge_skips_special_in_dirs", Year: 2024, Minor: 2,
		Where: "ostree-sysroot-deploy.c copy_dir_recurse (eb1e9cf7)",
		set:   func(c *Choices) { c.EtcMergeSkipsSpecialInDirs = true }},
	{Name: "staging_starts_finalize_service", Year: 2025, Minor: 2,
		Where: "ostree-sysroot-deploy.c ostree_sysroot_stage_tree_with_options: systemctl start ostree-finalize-staged.service (_ostree_sysroot_ensure_finalize_staged_service from 2025.3)",
		set:   func(c *Choices) { c.StagingStartsFinalizeService = true }},
	{Name: "soft_reboot", Year: 2025, Minor: 3,
		Where: "ostree-sysroot.c _ostree_sysroot_reload_soft_reboot; src/ostree/ot-admin-builtin-prepare-soft-reboot.c",
		set:   func(c *Choices) { c.SoftReboot = true }},
	{Name: "missing_deployment_dir_fails_load", Year: 2025, Minor: 3,
		Where: "ostree-sysroot.c _ostree_sysroot_new_deployment_object (fstatat of the deployment dir), from _ostree_sysroot_deserialize_deployment_from_variant",
		set:   func(c *Choices) { c.MissingDeploymentDirFailsLoad = true }},
	{Name: "finalize_requires_etc_mount", Year: 2025, Minor: 6,
		Where: "src/boot/ostree-finalize-staged.service: RequiresMountsFor=/sysroot /boot /etc",
		set:   func(c *Choices) { c.FinalizeRequiresEtcMount = true }},
}

// ChoicesFor applies the table to v.
func ChoicesFor(v Version) Choices {
	c := Choices{Version: v.Raw}
	if v.Raw == "" {
		return c
	}
	for _, r := range Rows {
		if v.AtLeast(r.Year, r.Minor) && (r.Feature == "" || v.Has(r.Feature)) {
			r.set(&c)
		}
	}
	return c
}

// InstalledChoices is ChoicesFor(InstalledVersion(cmd)); on an error the
// zero Choices (the oldest behaviour of every row) come with it.
func InstalledChoices(ctx context.Context, cmd string) (Choices, error) {
	v, err := InstalledVersion(ctx, cmd)
	if err != nil {
		return Choices{}, err
	}
	return ChoicesFor(v), nil
}
