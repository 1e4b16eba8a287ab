package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
)

var (
	metricNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelRE      = regexp.MustCompile(`^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"$`)
)

// parseExposition checks text against the Prometheus text format 0.0.4
// as node_exporter's textfile collector parses it (promtool is not
// available here): HELP/TYPE once per family and before its samples,
// valid names and labels, float values, no duplicate series. It returns
// series (name{labels}) to value.
func parseExposition(t *testing.T, text []byte) map[string]float64 {
	t.Helper()
	series := map[string]float64{}
	typed, helped := map[string]bool{}, map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	n := 0
	for sc.Scan() {
		n++
		l := sc.Text()
		where := fmt.Sprintf("line %d %q", n, l)
		switch {
		case l == "":
			t.Errorf("%s: empty line", where)
		case strings.HasPrefix(l, "# HELP "):
			f := strings.SplitN(l[len("# HELP "):], " ", 2)
			if len(f) != 2 || !metricNameRE.MatchString(f[0]) || helped[f[0]] {
				t.Errorf("%s: bad or repeated HELP", where)
			}
			helped[f[0]] = true
		case strings.HasPrefix(l, "# TYPE "):
			f := strings.Fields(l[len("# TYPE "):])
			if len(f) != 2 || !metricNameRE.MatchString(f[0]) || typed[f[0]] || f[1] != "gauge" {
				t.Errorf("%s: bad or repeated TYPE", where)
			}
			typed[f[0]] = true
		case strings.HasPrefix(l, "#"):
			t.Errorf("%s: stray comment", where)
		default:
			sp := strings.LastIndexByte(l, ' ')
			if sp < 0 {
				t.Errorf("%s: no value", where)
				continue
			}
			key, val := l[:sp], l[sp+1:]
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Errorf("%s: value: %v", where, err)
			}
			name := key
			if i := strings.IndexByte(key, '{'); i >= 0 {
				name = key[:i]
				if !strings.HasSuffix(key, "}") {
					t.Errorf("%s: unterminated labels", where)
				}
				for _, lab := range strings.Split(key[i+1:len(key)-1], ",") {
					if !labelRE.MatchString(lab) {
						t.Errorf("%s: bad label %q", where, lab)
					}
				}
			}
			if !metricNameRE.MatchString(name) || !typed[name] || !helped[name] {
				t.Errorf("%s: sample of %q before its HELP/TYPE", where, name)
			}
			if _, dup := series[key]; dup {
				t.Errorf("%s: duplicate series", where)
			}
			series[key] = v
		}
	}
	if len(text) > 0 && text[len(text)-1] != '\n' {
		t.Errorf("no final newline")
	}
	return series
}

func fullStatus() *lifecycle.Status {
	return &lifecycle.Status{
		Staged:  &lifecycle.StagedStatus{OSName: "testos", Checksum: strings.Repeat("ab", 32), Serial: 0, Locked: false},
		Etc:     lifecycle.EtcStatus{State: "dirty", PendingPaths: 3, Takeover: true},
		Prune:   lifecycle.PruneStatus{State: "planned", Objects: 1234, Bytes: 5 << 30},
		Cleanup: lifecycle.CleanupStatus{Pending: true, Objects: 7, Bytes: 4096},
		Watcher: lifecycle.WatcherStatus{Running: true},
	}
}

func TestMetricsFormat(t *testing.T) {
	now := time.Unix(1700000000, 250e6)
	got := parseExposition(t, renderMetrics(fullStatus(), true, now))
	want := map[string]float64{
		"ostree_prefinalize_status_success":               1,
		"ostree_prefinalize_status_timestamp_seconds":     1700000000.25,
		"ostree_prefinalize_staged":                       1,
		"ostree_prefinalize_staged_locked":                0,
		`ostree_prefinalize_etc_state{state="dirty"}`:     1,
		`ostree_prefinalize_etc_state{state="sealed"}`:    0,
		`ostree_prefinalize_etc_state{state="none"}`:      0,
		"ostree_prefinalize_etc_pending_paths":            3,
		"ostree_prefinalize_etc_takeover":                 1,
		`ostree_prefinalize_prune_state{state="planned"}`: 1,
		`ostree_prefinalize_prune_state{state="invalid"}`: 0,
		"ostree_prefinalize_prune_objects":                1234,
		"ostree_prefinalize_prune_bytes":                  5 << 30,
		"ostree_prefinalize_cleanup_pending":              1,
		"ostree_prefinalize_cleanup_objects":              7,
		"ostree_prefinalize_cleanup_bytes":                4096,
		"ostree_prefinalize_watcher_running":              1,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	// One-hot: exactly one state per family is 1.
	for _, fam := range []string{"etc_state", "prune_state"} {
		sum := 0.0
		for k, v := range got {
			if strings.HasPrefix(k, "ostree_prefinalize_"+fam+"{") {
				sum += v
			}
		}
		if sum != 1 {
			t.Errorf("%s: %v states set", fam, sum)
		}
	}

	// An unknown state still shows, escaped.
	st := fullStatus()
	st.Etc.State = `new"state`
	got = parseExposition(t, renderMetrics(st, true, now))
	if got[`ostree_prefinalize_etc_state{state="new\"state"}`] != 1 {
		t.Errorf("unknown state missing: %v", got)
	}

	// A failed status: success 0 and nothing stale.
	got = parseExposition(t, renderMetrics(nil, false, now))
	if len(got) != 2 || got["ostree_prefinalize_status_success"] != 0 {
		t.Errorf("failed status metrics: %v", got)
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestMetricsFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, textfileName)
	if err := writeMetricsFile(p, fullStatus(), true); err != nil {
		t.Fatal(err)
	}
	ino1 := inode(t, p)
	st := fullStatus()
	st.Prune.Objects = 99
	if err := writeMetricsFile(p, st, true); err != nil {
		t.Fatal(err)
	}
	// Replaced by rename (a new inode), never rewritten in place: a
	// concurrent reader holds the old file whole or opens the new one.
	if ino2 := inode(t, p); ino2 == ino1 {
		t.Errorf("metrics file rewritten in place (inode %d kept)", ino1)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := parseExposition(t, b); got["ostree_prefinalize_prune_objects"] != 99 {
		t.Errorf("second write not visible: %v", got)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644 (node_exporter reads it)", fi.Mode())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("leftover files: %v", ents)
	}

	// A rename that fails (the target is a directory) leaves no temporary
	// file, and the collector never sees a partial *.prom.
	bad := filepath.Join(dir, "sub.prom")
	if err := os.Mkdir(filepath.Join(bad), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeMetricsFile(bad, fullStatus(), true); err == nil {
		t.Fatal("writing over a directory succeeded")
	}
	ents, _ = os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".tmp") {
			t.Errorf("temporary file left: %s", e.Name())
		}
	}
}

// TestMetricsWriteFault makes the shared writer's chmod fail: the old
// textfile stays whole and no temporary is left (the writer goes through
// internal/durable, whose every step is fault-tested there).
func TestMetricsWriteFault(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ostree-prefinalize.prom")
	if err := writeMetricsFile(p, fullStatus(), true); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(p)
	saved := metricsFS
	t.Cleanup(func() { metricsFS = saved })
	injected := errors.New("injected")
	metricsFS.Chmod = func(*os.File, uint32) error { return injected }
	if err := writeMetricsFile(p, fullStatus(), false); !errors.Is(err, injected) {
		t.Fatalf("error %v, want the injected one", err)
	}
	if now, _ := os.ReadFile(p); string(now) != string(old) {
		t.Error("the old textfile changed")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("leftover files: %v", ents)
	}
}
