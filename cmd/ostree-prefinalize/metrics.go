package main

import (
	"bytes"
	"fmt"
	"strconv"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/durable"
	"github.com/ostree-prefinalize/ostree-prefinalize/lifecycle"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
)

// The states `status` can report, so every one gets a series (one-hot: 1
// for the current state, 0 for the others). A state not listed here (a
// newer lifecycle) is added as one more series rather than dropped.
var (
	etcStates   = []string{"none", "precomputed", "dirty", "sealed", "fallback"}
	pruneStates = []string{"none", "planned", "invalid"}
)

// renderMetrics writes the status in the Prometheus text exposition format
// (version 0.0.4), as node_exporter's textfile collector reads it. ok false
// (st nil or not) writes only the success gauge (0) and the timestamp: the
// status could not be read, and stale numbers would be worse than none.
func renderMetrics(st *lifecycle.Status, ok bool, now time.Time) []byte {
	var b bytes.Buffer
	gauge := func(name, help string) {
		fmt.Fprintf(&b, "# HELP ostree_prefinalize_%s %s\n# TYPE ostree_prefinalize_%s gauge\n", name, help, name)
	}
	sample := func(name, labels string, v float64) {
		if labels != "" {
			labels = "{" + labels + "}"
		}
		fmt.Fprintf(&b, "ostree_prefinalize_%s%s %s\n", name, labels, strconv.FormatFloat(v, 'g', -1, 64))
	}
	one := func(name, help string, v float64) {
		gauge(name, help)
		sample(name, "", v)
	}
	oneHot := func(name, help string, states []string, cur string) {
		gauge(name, help)
		known := false
		for _, s := range states {
			known = known || s == cur
			sample(name, `state="`+s+`"`, b2f(s == cur))
		}
		if !known && cur != "" {
			sample(name, `state="`+escapeLabel(cur)+`"`, 1)
		}
	}

	one("status_success", "Whether ostree-prefinalize could read its status (1) or not (0).", b2f(ok && st != nil))
	one("status_timestamp_seconds", "When these metrics were written (Unix time).", float64(now.UnixMilli())/1000)
	if !ok || st == nil {
		return b.Bytes()
	}
	locked := st.Staged != nil && st.Staged.Locked
	one("staged", "Whether a deployment is staged for finalization at shutdown.", b2f(st.Staged != nil))
	one("staged_locked", "Whether the staged deployment's finalization is locked.", b2f(locked))
	oneHot("etc_state", "State of the precomputed /etc merge (one-hot).", etcStates, string(st.Etc.State))
	one("etc_pending_paths", "Changed /etc paths seen by the watcher and not applied yet.", float64(st.Etc.PendingPaths))
	one("etc_takeover", "Whether ostree's own /etc merge is taken over.", b2f(st.Etc.Takeover))
	oneHot("prune_state", "State of the prune plan for the staged transition (one-hot).", pruneStates, st.Prune.State)
	one("prune_objects", "Objects the staged transition will leave unreachable.", float64(st.Prune.Objects))
	one("prune_bytes", "Bytes the staged transition will leave unreachable.", float64(st.Prune.Bytes))
	var im prune.ImagesReport
	if st.Prune.Images != nil {
		im = *st.Prune.Images
	}
	one("prune_images_held_objects", "Objects that container images no deployment uses hold after finalization.", float64(im.HeldObjects))
	one("prune_images_held_bytes", "Bytes that container images no deployment uses hold after finalization.", float64(im.HeldBytes))
	one("prune_images_refs", "Undeployed container images (and orphan layers) that image GC would remove.", float64(len(im.Refs)))
	one("prune_images_gc", "Whether the plan includes image GC.", b2f(im.GC))
	one("cleanup_pending", "Whether a persisted plan waits for the next-boot cleanup.", b2f(st.Cleanup.Pending))
	one("cleanup_objects", "Objects the pending cleanup will delete.", float64(st.Cleanup.Objects))
	one("cleanup_bytes", "Bytes the pending cleanup will free.", float64(st.Cleanup.Bytes))
	one("watcher_running", "Whether the /etc watcher is running.", b2f(st.Watcher.Running))
	return b.Bytes()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func escapeLabel(s string) string {
	var b bytes.Buffer
	for _, c := range s {
		switch c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// writeMetricsFile replaces path atomically: the collector (or a person
// reading it) sees the old file or the new one, never a partial one. The
// temporary file is in the same directory (rename is atomic only within a
// filesystem) and its name does not end in .prom, so the collector never
// reads it. No fsync: metrics are rewritten every run, and after a crash a
// stale or missing file is harmless (durable.AtomicOnly). 0644: readable by
// node_exporter, which does not run as root.
func writeMetricsFile(path string, st *lifecycle.Status, ok bool) error {
	return metricsFS.WriteFile(path, 0o644, durable.AtomicOnly, durable.Bytes(renderMetrics(st, ok, time.Now())))
}

// metricsFS is the filesystem of the metrics writer; tests make one step fail.
var metricsFS = durable.Real()
