package ostree

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRepoConfigSeeds(t *testing.T) {
	for _, tc := range []struct {
		file      string
		mode      RepoMode
		tombstone bool
		locking   bool
		coll      string
	}{
		{"bare.config", ModeBare, false, true, ""},
		{"archive.config", ModeArchive, false, true, ""},
		{"bare-user.config", ModeBareUser, false, true, ""},
		{"split-noeol.config", ModeBareSplitXattrs, false, true, ""},
		{"full.config", ModeBareUserOnly, true, false, "org.example.Os"},
	} {
		b, err := os.ReadFile(filepath.Join("testdata", "repo", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := ParseRepoConfig(b)
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		if cfg.Mode != tc.mode || cfg.TombstoneCommits != tc.tombstone || cfg.Locking != tc.locking || cfg.CollectionID != tc.coll {
			t.Errorf("%s: got %+v", tc.file, cfg)
		}
	}
	bad, _ := filepath.Glob(filepath.Join("testdata", "repo", "bad-*.config"))
	if len(bad) == 0 {
		t.Fatal("no bad config seeds")
	}
	for _, f := range bad {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseRepoConfig(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: want ErrCorrupt, got %v", f, err)
		}
	}
}

// The expectations below were checked against GLib 2.74's GKeyFile (via
// PyGObject) when this table was written; TestKeyFileMatchesGLib re-checks
// them whenever PyGObject is available.
var keyFileCases = []struct {
	in   string
	ok   bool
	mode string // raw [core] mode, "-" when absent
}{
	{"[core]\nmode=a\nmode=b\n", true, "b"},
	{"[core]\n\vmode=a\n", true, "-"},
	{"[core]\nmode=\va\n", true, "\va"},
	{"\v[core]\nmode=x", false, ""},
	{"[core]\r\nmode=x\r\r\n", true, "x\r"},
	{"[core]\nmode =x\n", true, "x"},
	{"[core]\n mode\t= \tx \n", true, "x "},
	{"[co re]\nmode=x", true, "-"},
	{"[core] x\nmode=1", false, ""},
	{"[core]\t \nmode=1", true, "1"},
	{"mode=1\n[core]", false, ""},
	{"[core]\nmode[de]=x\n", true, "-"},
	{"[core]\n=x", false, ""},
	{"[core]\nx", false, ""},
	{"[core]\n#c\n  # c2\nmode=y", true, "y"},
	{"[core]\n[]\n", false, ""},
	{"[co\x01re]\n", false, ""},
	{"[core]\nmo\x01de=1\n", true, "-"},
	{"[core]\nmode= x\n[other]\nmode=z\n[core]\nmode2=0\n", true, "x"},
	{"[core]\nmode[=1", false, ""},
	{"[core]\nmode]=1", false, ""},
	{"[core]\nmo[de]=1", true, "-"},
	{"[core]\nmode[]=1", true, "-"},
	{"[core\n", false, ""},
	{"[core]]\n", false, ""},
	{"[[core]\n", false, ""},
	{"[core]\nmode=a\rb\n", true, "a\rb"},
	{"[core]\rmode=1\n", false, ""},
	{"[core]\nmode=\xff\n", false, ""},
	{"[core]\nmode=a\x00\n", false, ""},
	{"", true, "-"},
	{"[core]\nmo de=1\n", true, "-"},
	{"[core]\nmode[d e]=1\n", false, ""},
}

func TestParseKeyFile(t *testing.T) {
	for _, tc := range keyFileCases {
		kf, err := ParseKeyFile([]byte(tc.in))
		if (err == nil) != tc.ok {
			t.Errorf("%q: ok=%v, err=%v", tc.in, tc.ok, err)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("%q: error does not wrap ErrCorrupt: %v", tc.in, err)
			}
			continue
		}
		v, ok := kf.Value("core", "mode")
		if !ok {
			v = "-"
		}
		if v != tc.mode {
			t.Errorf("%q: mode %q, want %q", tc.in, v, tc.mode)
		}
	}
}

func TestKeyFileBool(t *testing.T) {
	for in, want := range map[string]int{ // 1 true, 0 false, -1 error
		"true": 1, "1": 1, "false": 0, "0": 0, "true \t": 1, "true\v": -1,
		"True": -1, "yes": -1, "": -1, "tr ue": -1, "false\r": 0,
	} {
		kf, err := ParseKeyFile([]byte("[core]\nk=" + in))
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		got, err := kf.Bool("core", "k", false)
		switch {
		case want == -1 && !errors.Is(err, ErrCorrupt):
			t.Errorf("%q: want error, got %v %v", in, got, err)
		case want != -1 && (err != nil || got != (want == 1)):
			t.Errorf("%q: got %v %v, want %v", in, got, err, want == 1)
		}
	}
}

func TestParseRef(t *testing.T) {
	const h = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for in, ok := range map[string]bool{
		h: true, h + "\n": true, h + " \r\n\t\f": true, h + "\v": false,
		" " + h: false, h[:63] + "\n": false, strings.ToUpper(h): false,
		"ref: refs/heads/main\n": false, "": false, h + "\n" + h: false,
		h + "\x00": false, h + "\n\xff": false,
	} {
		c, err := ParseRef([]byte(in))
		if ok != (err == nil) {
			t.Errorf("%q: ok=%v err=%v", in, ok, err)
			continue
		}
		if err == nil && c.String() != h {
			t.Errorf("%q: got %s", in, c)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Errorf("%q: error does not wrap ErrCorrupt: %v", in, err)
		}
	}
}

func TestValidRefFragment(t *testing.T) {
	// Checked against GLib 2.74 GRegex with ostree's pattern.
	for in, want := range map[string]bool{
		"abc": true, "é": true, "a\n": true, "a\nb": false, "٣x": true,
		"-a": false, "_a": true, "a b": false, ".a": false, "a.b": true,
		"\u0301a": false, "a\u0301": false, "x\u200d": false, "": false,
		".rsync_info": false, "a-b_c.d": true, "\xff": false, "\n": false,
	} {
		if got := ValidRefFragment(in); got != want {
			t.Errorf("ValidRefFragment(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestDecodeHeaderSeeds(t *testing.T) {
	hs, _ := filepath.Glob(filepath.Join("testdata", "repo", "filez-header-*.bin"))
	ms, _ := filepath.Glob(filepath.Join("testdata", "repo", "ostreemeta-*.bin"))
	if len(hs) == 0 || len(ms) == 0 {
		t.Fatal("missing header seeds")
	}
	for _, f := range hs {
		b, _ := os.ReadFile(f)
		fo, err := DecodeZlibFileHeader(b)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if !fo.IsSymlink() && fo.Size != 6 || fo.IsSymlink() && fo.Symlink != "a" {
			t.Errorf("%s: %+v", f, fo)
		}
	}
	for _, f := range ms {
		b, _ := os.ReadFile(f)
		if _, _, mode, _, err := DecodeFileMeta(b); err != nil || mode == 0 {
			t.Errorf("%s: mode %o, %v", f, mode, err)
		}
	}
}

func addSeeds(f *testing.F, pattern string) {
	files, err := filepath.Glob(filepath.Join("testdata", "repo", pattern))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seeds %s: %v", pattern, err)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzRepoConfig checks that the config parser never panics, that every
// failure wraps ErrCorrupt, and that what it accepts is stable: a config
// rebuilt from the parsed values parses to the same values.
func FuzzRepoConfig(f *testing.F) {
	addSeeds(f, "*.config")
	for _, tc := range keyFileCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseRepoConfig(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		kf, err := ParseKeyFile(b)
		if err != nil {
			t.Fatalf("config accepted but key file not: %v", err)
		}
		m, ok := kf.Value("core", "mode")
		if ok && m != cfg.Mode.String() && !(m == "archive" && cfg.Mode == ModeArchive) {
			t.Fatalf("mode %q parsed as %v", m, cfg.Mode)
		}
		var sb strings.Builder
		sb.WriteString("[core]\nrepo_version=1\nmode=" + cfg.Mode.String() + "\n")
		if cfg.TombstoneCommits {
			sb.WriteString("tombstone-commits=true\n")
		}
		if !cfg.Locking {
			sb.WriteString("locking=false\n")
		}
		want := *cfg
		if cfg.CollectionID != "" && !strings.ContainsAny(cfg.CollectionID, "\r\n") {
			sb.WriteString("collection-id=" + cfg.CollectionID + "\n")
		} else {
			want.CollectionID = ""
		}
		cfg2, err := ParseRepoConfig([]byte(sb.String()))
		if err != nil || *cfg2 != want {
			t.Fatalf("round trip: %+v -> %+v, %v", want, cfg2, err)
		}
	})
}

// FuzzParseRef checks the ref-file parser: no panics, ErrCorrupt on every
// failure, and acceptance exactly of 64 lower-case hex digits followed by
// GLib ASCII whitespace.
func FuzzParseRef(f *testing.F) {
	addSeeds(f, "*.ref")
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseRef(b)
		trimmed := strings.TrimRight(string(b), " \t\n\f\r")
		_, perr := ParseChecksum(trimmed)
		if (err == nil) != (perr == nil) {
			t.Fatalf("%q: ParseRef err=%v, checksum check err=%v", b, err, perr)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		if c.String() != trimmed {
			t.Fatalf("%q parsed as %s", b, c)
		}
	})
}

// FuzzFileHeader fuzzes the two content-object header decoders (archive
// .filez header, bare-user user.ostreemeta).
func FuzzFileHeader(f *testing.F) {
	addSeeds(f, "*.bin")
	f.Fuzz(func(t *testing.T, b []byte) {
		if fo, err := DecodeZlibFileHeader(b); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("header error does not wrap ErrCorrupt: %v", err)
			}
		} else if fo.Size < 0 || (fo.IsSymlink() && fo.Size != 0) {
			t.Fatalf("bad result %+v", fo)
		}
		if _, _, _, _, err := DecodeFileMeta(b); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("filemeta error does not wrap ErrCorrupt: %v", err)
		}
	})
}
