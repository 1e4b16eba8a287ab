package ostree

import (
	"context"
	"errors"
	"os/exec"
	"testing"
)

const testFeatures = " Features:\n  - libcurl\n  - selinux\n  - systemd\n"

func versionOut(v string) []byte { return []byte("libostree:\n Version: '" + v + "'\n" + testFeatures) }

func TestParseVersion(t *testing.T) {
	for _, c := range []struct {
		name, out   string
		year, minor int
		selinux     bool
		fails       bool
	}{
		{"debian bookworm", "libostree:\n Version: '2022.7'\n Features:\n  - libcurl\n  - libsoup\n  - selinux\n  - p2p\n", 2022, 7, true, false},
		{"debian trixie", "libostree:\n Version: '2025.2'\n Features:\n  - inode64\n  - initial-var\n  - selinux\n  - release\n", 2025, 2, true, false},
		{"git line between", "libostree:\n Version: '2025.7'\n Git: abc\n" + testFeatures, 2025, 7, true, false},
		{"unquoted", "libostree:\n Version: 2024.1\n" + testFeatures, 2024, 1, true, false},
		{"suffix", "libostree:\n Version: '2026.4.dirty'\n" + testFeatures, 2026, 4, true, false},
		{"selinux-extra is not selinux", "libostree:\n Version: '2022.7'\n Features:\n  - libcurl\n  - selinux-extra\n", 2022, 7, false, false},
		{"a list item outside Features", "libostree:\n Version: '2022.7'\n Other:\n  - selinux\n", 2022, 7, false, false},
		{"no version", "libostree:\n Features:\n  - selinux\n", 0, 0, false, true},
		{"garbage version", "libostree:\n Version: 'x.y'\n" + testFeatures, 0, 0, false, true},
		{"empty", "", 0, 0, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := ParseVersion([]byte(c.out))
			if c.fails {
				if !errors.Is(err, ErrVersion) {
					t.Fatalf("want ErrVersion, got %+v, %v", v, err)
				}
				return
			}
			if err != nil || v.Year != c.year || v.Minor != c.minor || v.Has("selinux") != c.selinux {
				t.Fatalf("got %+v, %v; want %d.%d selinux=%v", v, err, c.year, c.minor, c.selinux)
			}
		})
	}
}

// TestChoicesFor pins every row of the table at the release before and the
// release where it changed.
func TestChoicesFor(t *testing.T) {
	choices := func(v string) Choices {
		t.Helper()
		pv, err := ParseVersion(versionOut(v))
		if err != nil {
			t.Fatal(err)
		}
		return ChoicesFor(pv)
	}
	type row struct {
		before, since string
		get           func(Choices) any
		old, new      any
	}
	for name, r := range map[string]row{
		"selinux first":    {"2022.2", "2022.3", func(c Choices) any { return c.SELinuxRefresh }, "", SELinuxRebuildIfModulesChanged},
		"selinux refresh":  {"2023.1", "2023.2", func(c Choices) any { return c.SELinuxRefresh }, SELinuxRebuildIfModulesChanged, SELinuxRefreshFlag},
		"early prune":      {"2023.2", "2023.3", func(c Choices) any { return c.AutoEarlyPrune }, EarlyPruneNone, EarlyPruneOptIn},
		"early by default": {"2023.6", "2023.7", func(c Choices) any { return c.AutoEarlyPrune }, EarlyPruneOptIn, EarlyPruneAlways},
		"backing":          {"2023.8", "2024.1", func(c Choices) any { return c.DeploymentBacking }, false, true},
		"special in dirs":  {"2024.1", "2024.2", func(c Choices) any { return c.EtcMergeSkipsSpecialInDirs }, false, true},
		"stage starts":     {"2025.1", "2025.2", func(c Choices) any { return c.StagingStartsFinalizeService }, false, true},
		"soft reboot":      {"2025.2", "2025.3", func(c Choices) any { return c.SoftReboot }, false, true},
		"missing dir":      {"2025.2", "2025.3", func(c Choices) any { return c.MissingDeploymentDirFailsLoad }, false, true},
		"etc mount":        {"2025.5", "2025.6", func(c Choices) any { return c.FinalizeRequiresEtcMount }, false, true},
	} {
		if got := r.get(choices(r.before)); got != r.old {
			t.Errorf("%s: %s gives %v, want %v", name, r.before, got, r.old)
		}
		if got := r.get(choices(r.since)); got != r.new {
			t.Errorf("%s: %s gives %v, want %v", name, r.since, got, r.new)
		}
		// A new year keeps it (2025.10 > 2025.9, not a string compare),
		// unless a later row replaces it.
		if name == "selinux first" || name == "early prune" {
			continue
		}
		if got := r.get(choices("2030.10")); got != r.new {
			t.Errorf("%s: 2030.10 gives %v, want %v", name, got, r.new)
		}
	}
	// composefs needs the build feature.
	if choices("2026.4").ComposefsAtDeploy {
		t.Error("composefs without the feature")
	}
	if v, _ := ParseVersion([]byte("libostree:\n Version: '2023.4'\n Features:\n  - composefs\n")); !ChoicesFor(v).ComposefsAtDeploy {
		t.Error("2023.4 with composefs")
	}
	if v, _ := ParseVersion([]byte("libostree:\n Version: '2023.3'\n Features:\n  - composefs\n")); ChoicesFor(v).ComposefsAtDeploy {
		t.Error("2023.3 with composefs")
	}
	// Without the selinux build feature no version refreshes.
	v, _ := ParseVersion([]byte("libostree:\n Version: '2025.2'\n Features:\n  - libcurl\n"))
	if c := ChoicesFor(v); c.SELinuxRefresh != "" || !c.EtcMergeSkipsSpecialInDirs {
		t.Errorf("2025.2 without selinux: %+v", c)
	}
	// Unknown version: the oldest behaviour of every row.
	if c := ChoicesFor(Version{}); c != (Choices{}) {
		t.Errorf("unknown version: %+v", c)
	}
	// The two real oracles.
	if c := choices("2022.7"); c.EtcMergeSkipsSpecialInDirs || c.DeploymentBacking || c.SELinuxRefresh != SELinuxRebuildIfModulesChanged {
		t.Errorf("2022.7: %+v", c)
	}
	if c := choices("2025.2"); !c.EtcMergeSkipsSpecialInDirs || !c.DeploymentBacking || c.SoftReboot || c.SELinuxRefresh != SELinuxRefreshFlag {
		t.Errorf("2025.2: %+v", c)
	}
}

func TestInstalledVersionFails(t *testing.T) {
	c, err := InstalledChoices(context.Background(), "/nonexistent/ostree")
	if !errors.Is(err, ErrVersion) || c != (Choices{}) {
		t.Fatalf("got %+v, %v", c, err)
	}
	if _, err := exec.LookPath("ostree"); err != nil {
		return
	}
	if _, err := InstalledVersion(context.Background(), "ostree"); err != nil {
		t.Fatalf("the installed ostree: %v", err)
	}
}

// FuzzParseVersion: any output of `ostree --version` gives a version and
// known choices or an ErrVersion error, never a guess.
func FuzzParseVersion(f *testing.F) {
	f.Add(versionOut("2023.8"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseVersion(b)
		if err != nil {
			if !errors.Is(err, ErrVersion) {
				t.Fatalf("error without ErrVersion: %v", err)
			}
			return
		}
		if v.Year < 2000 || v.Minor < 0 {
			t.Fatalf("version %+v", v)
		}
		switch c := ChoicesFor(v); c.SELinuxRefresh {
		case "", SELinuxRebuildIfModulesChanged, SELinuxRefreshFlag:
		default:
			t.Fatalf("flag %q", c.SELinuxRefresh)
		}
	})
}
