package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// TestImageGCBench (`make bench BENCH_ONLY=images`): the prune benchmark's
// workload laid out as ostree-rs-ext's image store. Each of the three
// commits is an image: a merge commit of the whole tree with its manifest
// in the metadata, under ostree/container/image/, and its layers (the
// bootable skeleton, shared by all three, and one layer per copied source
// directory) as commits under ostree/container/blob/. Image 1 is deployed
// as the rollback, 2 booted, 3 staged with the real command; finalization
// drops the rollback.
//
// Reported: what the next-boot cleanup frees without image GC (ostree's own
// prune: the image and layer refs keep the rollback) and with it; and,
// cold cache, our cleanup with image GC (ref removal and deletion,
// in-process, as in TestPruneBench) against removing the same refs by hand
// (`ostree refs --delete`, one process per ref) and `ostree admin cleanup`.
// Every timed run checks that both leave the same objects and refs.
//
// OSTREE_PREFINALIZE_BENCH_SOURCES (comma-separated directories) replaces
// the prune benchmark's sources, for a shorter run.
func TestImageGCBench(t *testing.T) {
	requireBench(t)
	runs := benchRuns(t)
	ctx := context.Background()
	sources := fixtureSources
	if v := os.Getenv("OSTREE_PREFINALIZE_BENCH_SOURCES"); v != "" {
		sources = strings.Split(v, ",")
	}
	start := time.Now()
	bin := buildBinary(t)
	s := harness.NewSysroot(t, harness.Options{})
	work, roots, used := benchWorkTree(t, sources)

	// The skeleton layer: the tree without the copied sources.
	skel := filepath.Join(t.TempDir(), "skel")
	empty := harness.Shape{}
	if err := os.Mkdir(skel, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := harness.NewTree(harness.TreeOptions{Seed: 1, Usr: &empty}).Write(skel); err != nil {
		t.Fatal(err)
	}
	layerRefs := map[string]string{} // digest -> ref
	layer := func(dir, name string) string {
		c := strings.TrimSpace(s.RepoCmd("commit", "--orphan", "--tree=dir="+dir, "--subject=layer "+name, "--timestamp=2024-01-01 00:00:00 +0000"))
		sum := sha256.Sum256([]byte(c))
		h := hex.EncodeToString(sum[:])
		if _, ok := layerRefs["sha256:"+h]; !ok {
			ref := "ostree/container/blob/sha256_3A_" + h
			s.CreateRef(ref, c)
			layerRefs["sha256:"+h] = ref
		}
		return "sha256:" + h
	}
	type image struct {
		ref, origin, commit string
		layers              []string
	}
	var images [3]image
	mkImage := func(k int) image {
		im := image{
			ref:    fmt.Sprintf("ostree/container/image/docker_3A__2F__2F_bench_2E_example/os_3A_%d", k),
			origin: fmt.Sprintf("ostree-unverified-registry:bench.example/os:%d", k),
		}
		im.layers = append(im.layers, layer(skel, "skeleton"))
		var descs []string
		for _, r := range roots {
			im.layers = append(im.layers, layer(filepath.Join(work, r), r))
		}
		for _, l := range im.layers {
			descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":1}`, l))
		}
		manifest := fmt.Sprintf(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%x","size":1},"layers":[%s]}`,
			sha256.Sum256([]byte(im.origin)), strings.Join(descs, ","))
		im.commit = strings.TrimSpace(s.RepoCmd("commit", "--orphan", "--tree=dir="+work, fmt.Sprintf("--subject=image %d", k),
			fmt.Sprintf("--timestamp=2024-01-0%d 00:00:00 +0000", k),
			fmt.Sprintf("--add-metadata-string=ostree.manifest-digest=sha256:%x", sha256.Sum256([]byte(manifest))),
			"--add-metadata-string=ostree.manifest="+manifest))
		s.CreateRef(im.ref, im.commit)
		origin := filepath.Join(s.Path, fmt.Sprintf("origin-%d", k))
		if err := os.WriteFile(origin, []byte("[origin]\ncontainer-image-reference="+im.origin+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return im
	}
	deploy := func(k int) harness.Deployment {
		return s.DeployArgs(images[k-1].commit, "--os="+s.OS, "--karg=root=LABEL=bench", fmt.Sprintf("--origin-file=%s/origin-%d", s.Path, k))
	}
	images[0] = mkImage(1)
	deploy(1)
	for k := 2; k <= 3; k++ {
		if _, err := realChurn(work, roots, 0.2, defaultChurnSeed, k); err != nil {
			t.Fatal(err)
		}
		images[k-1] = mkImage(k)
		if k == 2 {
			deploy(2)
		}
	}
	ds := s.Deployments()
	if len(ds) != 2 || ds[0].Checksum != images[1].commit {
		t.Fatalf("deployments:\n%s", s.Status())
	}
	fx := &fixture{s: s, bin: bin}
	fx.booted = s.Boot(t, ds[0], harness.BootOptions{Binds: []harness.Bind{harness.OnPath(bin)}})
	if st := fx.booted.Stage(images[2].commit, "--origin-file=/sysroot/origin-3"); st.Checksum != images[2].commit {
		t.Fatalf("staged %s", st.Checksum)
	}

	// The refs ostree-ext's GC removes after finalization, from what was
	// built: image 1, and its layers that images 2 and 3 do not list.
	removed := []string{images[0].ref}
	for _, l := range images[0].layers {
		if !slices.Contains(images[1].layers, l) && !slices.Contains(images[2].layers, l) {
			removed = append(removed, layerRefs[l])
		}
	}
	slices.Sort(removed)

	sys := loadBooted(t, fx)
	base, _, err := prune.PlanSysroot(ctx, sys, prune.PredictOptions{}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	gc, _, err := prune.PlanSysroot(ctx, sys, prune.PredictOptions{ImageGC: true}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var gcRefs []string
	for _, r := range gc.ImageRefs {
		gcRefs = append(gcRefs, r.Name)
	}
	if !slices.Equal(gcRefs, removed) {
		t.Fatalf("plan removes refs %q, want %q", gcRefs, removed)
	}
	encoded, err := gc.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.booted.FinalizeStaged(ctx); err != nil {
		t.Fatal(err)
	}
	before := parityObjects(t, s.Repo)
	var list strings.Builder
	gc.WriteList(&list)
	want := map[string]bool{}
	for o := range before {
		want[o] = true
	}
	for _, l := range lines(list.String()) {
		if !want[l] {
			t.Fatalf("planned %s is not in the repository", l)
		}
		delete(want, l)
	}
	wantRefs := slices.DeleteFunc(s.Refs(), func(r string) bool { return slices.Contains(removed, r) })
	check := func(t testing.TB, dst, side string) {
		c := &harness.Sysroot{Path: dst, Repo: filepath.Join(dst, "ostree", "repo")}
		got := parityObjects(t, c.Repo)
		if a, b := setMinus(got, want), setMinus(want, got); len(a)+len(b) > 0 {
			t.Fatalf("%s: %d objects left that ostree deletes (%.3q), %d deleted that it keeps (%.3q)", side, len(a), a, len(b), b)
		}
		out, _, err := harness.RunOstree(context.Background(), "refs", "--repo="+c.Repo)
		if err != nil {
			t.Fatal(err)
		}
		if got := slices.Sorted(slices.Values(lines(out))); !slices.Equal(got, wantRefs) {
			t.Fatalf("%s: refs %q, want %q", side, got, wantRefs)
		}
	}
	objs := len(before)
	t.Logf("workload built in %s: %d objects, %d layer refs; removed refs %q", time.Since(start).Round(time.Second), objs, len(layerRefs), removed)

	rep := &table{}
	rep.title = append(rep.title, "## image GC benchmark",
		fmt.Sprintf("machine: %d CPUs, shared; %s; %d runs per cell, median (min–max)", runtime.NumCPU(), ostreeVersion(t), runs),
		fmt.Sprintf("workload: bare repo of %d loose objects; 3 images of %d layers (sources %v, churn 20%%, seed %d), rollback 1, booted 2, staged 3; image GC removes %d refs",
			objs, len(images[0].layers), used, defaultChurnSeed, len(removed)))
	rep.add("measurement", "ours", "theirs", "ratio", "ours min–max", "theirs min–max", "notes")
	rep.add("freed at next boot without image GC (ostree's own prune)", fmt.Sprintf("%d objects, %.1f MB", base.Stats.Objects, float64(base.Stats.Bytes)/1e6), "-", "-", "-", "-", "the image and layer refs keep the rollback")
	rep.add("freed at next boot with image GC", fmt.Sprintf("%d objects, %.1f MB", gc.Stats.Objects, float64(gc.Stats.Bytes)/1e6), "-", "-", "-", "-",
		fmt.Sprintf("held by undeployed images: %d objects, %.1f MB", gc.Images.HeldObjects, float64(gc.Images.HeldBytes)/1e6))

	var ours, theirs sample
	for i := 0; i < runs; i++ {
		for k := 0; k < 2; k++ {
			side := (i + k) % 2
			t.Run(fmt.Sprintf("cold/%d/%d", side, i), func(t *testing.T) {
				dst := harness.CopyTree(t, s.Path)
				var run func() error
				if side == 0 {
					runDir := t.TempDir()
					run = func() error {
						sr, err := ostree.LoadSysroot(dst, ostree.LoadOptions{RunDir: runDir, NoBooted: true})
						if err != nil {
							return err
						}
						p, err := prune.UnmarshalPlan(encoded)
						if err != nil {
							return err
						}
						res, err := prune.ExecuteSysroot(ctx, sr, p, time.Minute, nil)
						if err == nil && (res.RefsRemoved != len(removed) || res.Deleted != p.Len() || res.RootsChanged) {
							err = fmt.Errorf("execute: %+v", res)
						}
						return err
					}
				} else {
					run = func() error {
						for _, r := range removed {
							if _, _, err := harness.RunOstree(ctx, "refs", "--repo="+filepath.Join(dst, "ostree", "repo"), "--delete", r); err != nil {
								return err
							}
						}
						_, _, err := harness.RunOstree(ctx, "admin", "cleanup", "--sysroot="+dst)
						return err
					}
				}
				settle(t, true)
				t0 := time.Now()
				err := run()
				el := time.Since(t0)
				if err != nil {
					t.Fatal(err)
				}
				check(t, dst, []string{"ours", "refs --delete + admin cleanup"}[side])
				if side == 0 {
					ours = append(ours, el)
				} else {
					theirs = append(theirs, el)
				}
			})
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	rep.add("cleanup with image GC, cold: ours vs refs --delete + ostree admin cleanup", fmtDur(ours.median()), fmtDur(theirs.median()),
		fmt.Sprintf("%.2f× (paired %.2f×)", ratio(ours, theirs), pairedRatio(ours, theirs)), ours.spread(), theirs.spread(), "same objects and refs left (checked every run)")
	fmt.Printf("\n%s\n", rep)
}
