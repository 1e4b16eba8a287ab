package test

// Container-native hosts: the image store of ostree-rs-ext, built with the
// real `ostree commit` exactly as container/store.rs lays it out (layer
// commits under ostree/container/blob/<escaped digest>, an image merge
// commit carrying ostree.manifest-digest and ostree.manifest under
// ostree/container/image/<escaped image reference>), deployments whose
// origins name their image (container-image-reference). The ref names are
// written out by hand here, from refescape.rs's rules, not computed by our
// escaper.
//
// The oracle: on a copy, the real finalization, then the refs that
// ostree-ext's GC would remove deleted by hand with `ostree refs --delete`,
// then the real `ostree admin cleanup`: what it deletes must be exactly
// what `plan --list --image-gc` named, and our next-boot cleanup must leave
// exactly the objects and refs it leaves.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

type imgLayer struct {
	digest, ref, commit string
	files               map[string]harness.File
}

type imgImage struct {
	tag, ref, origin, commit string
	layers                   []string // layer names
}

// imgStore builds an image store in a parity sysroot.
type imgStore struct {
	e      *parityEnv
	layers map[string]*imgLayer
	images map[string]*imgImage
}

func newImgStore(e *parityEnv) *imgStore {
	return &imgStore{e: e, layers: map[string]*imgLayer{}, images: map[string]*imgImage{}}
}

// layer commits a layer of n files under its blob ref (digest: sha256 of
// the name, as a registry would name a blob by its content).
func (is *imgStore) layer(name string, n int) *imgLayer {
	is.e.t.Helper()
	sum := sha256.Sum256([]byte("layer " + name))
	h := hex.EncodeToString(sum[:])
	l := &imgLayer{digest: "sha256:" + h, ref: "ostree/container/blob/sha256_3A_" + h, files: map[string]harness.File{}}
	t := &harness.Tree{Entries: map[string]harness.File{}}
	for i := 0; i < n; i++ {
		f := harness.Text(fmt.Sprintf("layer %s file %d\n%s\n", name, i, strings.Repeat(name, 50+i)))
		p := fmt.Sprintf("usr/share/layers/%s/f%03d", name, i)
		l.files[p] = f
		t.Set(p, f)
	}
	l.commit = is.e.commit(l.ref, t)
	is.layers[name] = l
	return l
}

// image commits an image merge commit: a bootable tree (seed) overlaid with
// its layers' files, the manifest listing the layers in its metadata, under
// the image ref of docker://quay.io/testos/os:<tag>.
func (is *imgStore) image(tag string, seed int64, layers ...string) *imgImage {
	is.e.t.Helper()
	im := &imgImage{
		tag:    tag,
		ref:    "ostree/container/image/docker_3A__2F__2F_quay_2E_io/testos/os_3A_" + tag,
		origin: "ostree-unverified-registry:quay.io/testos/os:" + tag,
		layers: layers,
	}
	tree := harness.NewTree(harness.TreeOptions{Seed: seed})
	var descs []string
	for _, n := range layers {
		l := is.layers[n]
		for p, f := range l.files {
			tree.Set(p, f)
		}
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":1000}`, l.digest))
	}
	cfg := sha256.Sum256([]byte("config " + tag))
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%x","size":500},"layers":[%s]}`, cfg, strings.Join(descs, ","))
	md := sha256.Sum256([]byte(manifest))
	im.commit = is.e.s.CommitWith(im.ref, tree, harness.CommitOptions{Timestamp: parityTime, Metadata: map[string]string{
		"ostree.manifest-digest": fmt.Sprintf("sha256:%x", md),
		"ostree.manifest":        manifest,
	}})
	is.images[tag] = im
	return im
}

// originFile writes an origin naming the image into the sysroot (visible
// as /sysroot/<name> inside a booted namespace) and returns both paths.
func (is *imgStore) originFile(im *imgImage) (host, inside string) {
	is.e.t.Helper()
	name := "origin-" + im.tag
	host = filepath.Join(is.e.s.Path, name)
	if err := os.WriteFile(host, []byte("[origin]\ncontainer-image-reference="+im.origin+"\n"), 0o644); err != nil {
		is.e.t.Fatal(err)
	}
	return host, "/sysroot/" + name
}

// deploy deploys the image's commit with its origin (not booted: finalized
// at once).
func (is *imgStore) deploy(im *imgImage) harness.Deployment {
	is.e.t.Helper()
	host, _ := is.originFile(im)
	return is.e.s.DeployArgs(im.commit, "--os=testos", "--karg=root=LABEL=img", "--origin-file="+host)
}

// imgScenario is the baseline of every test here: layers base (in every
// image), a, b, c, d and an orphan no image lists; images A (rollback), B
// (booted), C (staged by the real command), D (pulled, never deployed).
// After finalization ostree-ext's GC removes images A and D and layers a,
// d and orphan.
type imgScenario struct {
	e  *parityEnv
	is *imgStore
	h  *harness.BootedHost
	// removed are the refs ostree-ext's GC removes after finalization,
	// written out from the scenario.
	removed []string
}

func newImgScenario(t *testing.T, before func(is *imgStore)) *imgScenario {
	t.Helper()
	e := newParityEnv(t)
	is := newImgStore(e)
	for _, n := range []string{"base", "a", "b", "c", "d"} {
		is.layer(n, 40)
	}
	is.layer("orphan", 10)
	a := is.image("a", 1, "base", "a")
	b := is.image("b", 2, "base", "b")
	c := is.image("c", 3, "base", "c")
	is.image("d", 4, "base", "d")
	if before != nil {
		before(is)
	}
	is.deploy(a)
	db := is.deploy(b)
	h := e.boot(db)
	_, inside := is.originFile(c)
	if st := h.Stage(c.commit, "--origin-file="+inside); st.Checksum != c.commit {
		t.Fatalf("staged %s, want %s", st.Checksum, c.commit)
	}
	return &imgScenario{e: e, is: is, h: h, removed: []string{
		is.images["a"].ref, is.images["d"].ref,
		is.layers["a"].ref, is.layers["d"].ref, is.layers["orphan"].ref,
	}}
}

// planJSON runs `plan --json ARGS` inside h.
func imgPlanJSON(t *testing.T, h *harness.BootedHost, args ...string) prune.Summary {
	t.Helper()
	out := h.MustRun(append([]string{"ostree-prefinalize", "plan", "--json"}, args...)...)
	var s prune.Summary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("plan --json: %v\n%s", err, out)
	}
	return s
}

// oracle finalizes a copy of h for real, deletes the given refs with
// `ostree refs --delete` and runs the real `ostree admin cleanup` in the
// next boot; it returns the copy (next boot), the objects it deleted and
// the objects and refs it left.
func (sc *imgScenario) oracle(t *testing.T, h *harness.BootedHost, refs []string, mutate func(s *harness.Sysroot)) (deleted []string, after map[string]bool, afterRefs []string) {
	t.Helper()
	b := h.Copy(t)
	before := parityObjects(t, b.Sysroot.Repo)
	if _, err := b.FinalizeStaged(sc.e.ctx); err != nil {
		t.Fatalf("real finalize-staged: %v", err)
	}
	if mutate != nil {
		mutate(b.Sysroot)
		before = parityObjects(t, b.Sysroot.Repo)
	}
	for _, r := range refs {
		b.Sysroot.DeleteRef(r)
	}
	fsck(t, b.Sysroot.Repo)
	nb := b.Sysroot.NextBoot(t, sc.e.opts)
	nb.MustRun("ostree", "admin", "cleanup")
	fsck(t, b.Sysroot.Repo)
	after = parityObjects(t, b.Sysroot.Repo)
	return setMinus(before, after), after, b.Sysroot.Refs()
}

// lifecycle runs our service on h as deployed with image GC on: stage
// --image-gc, the real finalize-staged, finalize --post; mutate then
// changes the repository (between staging and the next boot), and run
// executes the persisted plan (nil: `cleanup --foreground` in the next
// boot).
func (sc *imgScenario) lifecycle(t *testing.T, h *harness.BootedHost, mutate func(s *harness.Sysroot)) {
	t.Helper()
	if out := h.MustRun("env", "OSTREE_PREFINALIZE_IMAGE_GC=true", "ostree-prefinalize", "stage"); !strings.Contains(out, "prune:  planned") {
		t.Fatalf("stage: %s", out)
	}
	st := h.MustRun("ostree-prefinalize", "status", "--json")
	if !strings.Contains(st, `"gc": true`) || !strings.Contains(st, `"held_objects"`) {
		t.Errorf("status --json shows no images report with gc on:\n%s", st)
	}
	if _, err := h.FinalizeStaged(sc.e.ctx); err != nil {
		t.Fatalf("real finalize-staged: %v", err)
	}
	if out := h.MustRun("ostree-prefinalize", "finalize", "--post"); !strings.Contains(out, "Plan persisted") {
		t.Fatalf("finalize --post: %s", out)
	}
	if p := readPersistedPlan(t, h.Sysroot.Path); len(p.ImageRefs) != len(sc.removed) {
		t.Errorf("persisted plan has %d image refs, want %d", len(p.ImageRefs), len(sc.removed))
	}
	if mutate != nil {
		mutate(h.Sysroot)
	}
	fsck(t, h.Sysroot.Repo)
}

func (sc *imgScenario) cleanup(t *testing.T, h *harness.BootedHost) string {
	t.Helper()
	return h.Sysroot.NextBoot(t, sc.e.opts).MustRun("ostree-prefinalize", "cleanup", "--foreground", "--json")
}

func sameSet(t *testing.T, what string, got, want map[string]bool) {
	t.Helper()
	if a, b := setMinus(got, want), setMinus(want, got); len(a)+len(b) > 0 {
		t.Errorf("%s: only ours %d %v, only ostree's %d %v", what, len(a), firstFew(a), len(b), firstFew(b))
	}
}

// Two images sharing a layer, an image pulled but never deployed, an
// orphan layer, the rollback's image: the plan with image GC is exactly
// what ostree's cleanup deletes once the refs ostree-ext's GC removes are
// gone; without image GC it is ostree's own prune; the next-boot cleanup
// removes exactly those refs and leaves exactly ostree's objects.
func TestImageGCParity(t *testing.T) {
	sc := newImgScenario(t, nil)
	h := sc.h
	gcList := lines(h.MustRun("ostree-prefinalize", "plan", "--list", "--image-gc"))
	baseList := lines(h.MustRun("ostree-prefinalize", "plan", "--list"))
	// The setting from the environment is the flag's default.
	if env := lines(h.MustRun("env", "OSTREE_PREFINALIZE_IMAGE_GC=1", "ostree-prefinalize", "plan", "--list")); !slices.Equal(env, gcList) {
		t.Errorf("OSTREE_PREFINALIZE_IMAGE_GC=1 plans %d objects, --image-gc %d", len(env), len(gcList))
	}
	sum := imgPlanJSON(t, h, "--image-gc")
	base := imgPlanJSON(t, h)

	// Without image GC: ostree's own cleanup, refs untouched.
	deleted, _, _ := sc.oracle(t, h, nil, nil)
	if !slices.Equal(baseList, deleted) {
		t.Errorf("plan --list differs from ostree's cleanup:\n%s", diffLists(baseList, deleted))
	}
	// With image GC: after the refs are deleted by hand.
	deleted, want, wantRefs := sc.oracle(t, h, sc.removed, nil)
	if !slices.Equal(gcList, deleted) {
		t.Errorf("plan --list --image-gc differs from ostree's cleanup after deleting the GC's refs:\n%s", diffLists(gcList, deleted))
	}
	if !slices.Contains(gcList, sc.is.images["a"].commit+".commit") || !slices.Contains(gcList, sc.is.images["d"].commit+".commit") {
		t.Errorf("image A's and D's commits must be planned")
	}
	if slices.Contains(baseList, sc.is.images["a"].commit+".commit") {
		t.Errorf("without image GC the rollback's image commit stays (its ref holds it)")
	}

	// The report: every removed image and orphan layer, the objects only
	// they hold (the difference of the two plans), gc as asked.
	im := sum.Images
	if !im.GC || base.Images.GC {
		t.Errorf("gc: %v with --image-gc, %v without", im.GC, base.Images.GC)
	}
	if im.HeldObjects != len(gcList)-len(baseList) || base.Images.HeldObjects != im.HeldObjects || im.HeldBytes != sum.Bytes-base.Bytes {
		t.Errorf("held %d objects %d bytes; plans differ by %d objects %d bytes", im.HeldObjects, im.HeldBytes, len(gcList)-len(baseList), sum.Bytes-base.Bytes)
	}
	var refs []string
	for _, u := range im.Refs {
		refs = append(refs, u.Ref)
		refs = append(refs, u.Layers...)
	}
	slices.Sort(refs)
	wantRemoved := slices.Sorted(slices.Values(sc.removed))
	if !slices.Equal(refs, wantRemoved) || im.Reason != "" {
		t.Errorf("report refs %q (reason %q), want %q", refs, im.Reason, wantRemoved)
	}
	t.Logf("plan: %d objects without image GC, %d with (%d held by images: %+v)", len(baseList), len(gcList), im.HeldObjects, im.Refs)

	// Our lifecycle on the original: same objects, same refs as ostree's.
	sc.lifecycle(t, h, nil)
	out := sc.cleanup(t, h)
	var res struct {
		Objects     int `json:"objects"`
		RefsRemoved int `json:"refs_removed"`
		KeptLive    int `json:"kept_live"`
	}
	json.Unmarshal([]byte(out), &res)
	if res.Objects != len(gcList) || res.RefsRemoved != len(sc.removed) || res.KeptLive != 0 {
		t.Errorf("cleanup: %s", out)
	}
	sameSet(t, "objects after our cleanup", parityObjects(t, h.Sysroot.Repo), want)
	if got := h.Sysroot.Refs(); !slices.Equal(got, wantRefs) {
		t.Errorf("refs after our cleanup %q, ostree's %q", got, wantRefs)
	}
	fsck(t, h.Sysroot.Repo)
}

// The rollback's image is also used by a pinned deployment: it stays (and
// its layers), only D and the orphan go.
func TestImageGCPinnedKeepsImage(t *testing.T) {
	sc := newImgScenario(t, func(is *imgStore) {
		is.deploy(is.images["a"])
		is.e.s.Pin(0)
	})
	sc.removed = []string{sc.is.images["d"].ref, sc.is.layers["d"].ref, sc.is.layers["orphan"].ref}
	gcList := lines(sc.h.MustRun("ostree-prefinalize", "plan", "--list", "--image-gc"))
	deleted, _, _ := sc.oracle(t, sc.h, sc.removed, nil)
	if !slices.Equal(gcList, deleted) {
		t.Errorf("plan --list --image-gc differs from ostree's cleanup:\n%s", diffLists(gcList, deleted))
	}
	if slices.Contains(gcList, sc.is.images["a"].commit+".commit") {
		t.Errorf("the pinned deployment's image commit is planned")
	}
}

// Between staging and the next boot: a new image E is pulled that lists
// layer d (planned) and a new layer e; image D's ref moves to a new commit.
// Cleanup keeps E, e, d, D's ref and all they reach, removes the rest
// (images A, layers a and orphan) and ends with exactly ostree's objects.
// It is killed with SIGKILL several times first; fsck is clean after
// every kill.
func TestImageGCRecheckAndKill(t *testing.T) {
	sc := newImgScenario(t, nil)
	seed := faultSeed(t)
	rng := rand.New(rand.NewPCG(seed, 14))
	var eImg *imgImage
	var moved string
	mutate := func(s *harness.Sysroot) {
		is := &imgStore{e: &parityEnv{t: t, s: s, ctx: sc.e.ctx}, layers: sc.is.layers, images: map[string]*imgImage{}}
		is.layer("e", 20)
		eImg = is.image("e", 5, "base", "d", "e")
		moved = is.image("d", 6, "base", "d").commit // D's ref moves
	}
	keep := []string{sc.is.images["a"].ref, sc.is.layers["a"].ref, sc.is.layers["orphan"].ref}
	_, want, wantRefs := sc.oracle(t, sc.h, keep, mutate)

	h := sc.h
	sc.lifecycle(t, h, mutate)
	before := parityObjects(t, h.Sysroot.Repo)
	runDir := t.TempDir()
	bin := sc.e.opts.Binds[0].Src
	for kill := 0; kill < 5; kill++ {
		r := startCleanupProc(t, bin, h.Sysroot.Path, runDir)
		timer := time.NewTimer(time.Duration(rng.Int64N(int64(30 * time.Millisecond))))
		select {
		case <-r.done:
		case <-timer.C:
			r.cmd.Process.Signal(syscall.SIGKILL)
			<-r.done
		}
		timer.Stop()
		fsck(t, h.Sysroot.Repo)
		now := parityObjects(t, h.Sysroot.Repo)
		for o := range want {
			if before[o] && !now[o] {
				t.Fatalf("kill %d: %s deleted but ostree keeps it", kill, o)
			}
		}
	}
	sc.cleanup(t, h)
	sameSet(t, "objects after our cleanup", parityObjects(t, h.Sysroot.Repo), want)
	if got := h.Sysroot.Refs(); !slices.Equal(got, wantRefs) {
		t.Errorf("refs after our cleanup %q, ostree's %q", got, wantRefs)
	}
	for _, r := range []string{eImg.ref, sc.is.layers["e"].ref, sc.is.layers["d"].ref, sc.is.images["d"].ref} {
		if !slices.Contains(h.Sysroot.Refs(), r) {
			t.Errorf("ref %s removed", r)
		}
	}
	if h.Sysroot.RevParse(sc.is.images["d"].ref) != moved {
		t.Errorf("moved ref D changed")
	}
	fsck(t, h.Sysroot.Repo)
}

// Hostile refs and metadata: an undeployed image whose manifest is not
// JSON is kept and then no layer goes (ostree-ext's layer GC fails on it);
// an image ref whose name does not unescape stops image GC entirely (its
// list_images fails); refs outside ostree/container/ are never candidates.
func TestImageGCHostile(t *testing.T) {
	t.Run("bad-manifest", func(t *testing.T) {
		var bad string
		sc := newImgScenario(t, func(is *imgStore) {
			bad = is.e.s.CommitWith("ostree/container/image/docker_3A__2F__2F_quay_2E_io/testos/os_3A_bad",
				harness.NewTree(harness.TreeOptions{Seed: 9}), harness.CommitOptions{Timestamp: parityTime, Metadata: map[string]string{
					"ostree.manifest-digest": "sha256:" + strings.Repeat("0", 64),
					"ostree.manifest":        `{"schemaVersion":2,"layers":[{"digest":"../../x"`,
				}})
			// Outside ostree/container/: never a candidate.
			is.e.s.CreateRef("ostree/containerx/image/x", is.images["d"].commit)
		})
		sc.removed = []string{sc.is.images["a"].ref, sc.is.images["d"].ref}
		sum := imgPlanJSON(t, sc.h, "--image-gc")
		if sum.Images.Reason == "" {
			t.Errorf("no reason for keeping the layers")
		}
		gcList := lines(sc.h.MustRun("ostree-prefinalize", "plan", "--list", "--image-gc"))
		deleted, _, _ := sc.oracle(t, sc.h, sc.removed, nil)
		if !slices.Equal(gcList, deleted) {
			t.Errorf("plan --list --image-gc differs from ostree's cleanup:\n%s", diffLists(gcList, deleted))
		}
		if slices.Contains(gcList, bad+".commit") {
			t.Errorf("the unreadable image is planned")
		}
	})
	t.Run("bad-ref-name", func(t *testing.T) {
		sc := newImgScenario(t, func(is *imgStore) {
			is.e.s.CreateRef("ostree/container/image/bad.name", is.images["a"].commit)
		})
		sum := imgPlanJSON(t, sc.h, "--image-gc")
		gcList := lines(sc.h.MustRun("ostree-prefinalize", "plan", "--list", "--image-gc"))
		baseList := lines(sc.h.MustRun("ostree-prefinalize", "plan", "--list"))
		if sum.Images.Reason == "" || len(sum.Images.Refs) != 0 || !slices.Equal(gcList, baseList) {
			t.Errorf("image GC went ahead despite an undecodable image ref: %+v", sum.Images)
		}
	})
}
