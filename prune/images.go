package prune

// Longer than 500 lines on purpose: the image store's GC rules (which
// images and layers the update daemons remove) are one decision read from
// ostree-rs-ext as a whole; split, the reader would have to follow its
// steps across files.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// This file adds ostree-rs-ext's image store (see ostree/imagestore.go) to
// the mock prune. On a container-native host the dropped rollback's commit
// is also held by its image ref (ostree/container/image/...) and its layer
// refs (ostree/container/blob/...), which ostree's own prune treats as
// ordinary roots; the update daemon removes them only at its next
// operation (ostree-ext container/deploy.rs prune: remove_undeployed_images,
// then store.rs gc_image_layers, then a refs-only prune; bootc and
// rpm-ostree call it after each deployment change). The plan reports what
// those refs hold after finalization and, with image GC on, includes them:
// cleanup then removes exactly the refs that GC would remove, re-checked
// under the exclusive repository lock, before deleting objects.

// ImageRefKind says what an image-store ref is.
type ImageRefKind uint8

const (
	RefImage ImageRefKind = 1 // ostree/container/image/<escaped image reference>
	RefLayer ImageRefKind = 2 // ostree/container/blob/<escaped layer digest>
)

// ImageRef is one image-store ref that image GC removes.
type ImageRef struct {
	Name   string          // the ref, as under refs/heads
	Commit ostree.Checksum // the commit it pointed at when planning
	Kind   ImageRefKind
	// Digest is the image's manifest digest (RefImage) or the layer digest
	// the ref name encodes (RefLayer).
	Digest string
}

// ImageUsage is one entry of the images report: an image that no
// deployment uses after finalization, with the layer refs only it listed,
// or (Image "") a layer ref that no image lists.
type ImageUsage struct {
	Ref     string   `json:"ref"`
	Image   string   `json:"image"`
	Layers  []string `json:"layers"`
	Objects int      `json:"objects"`
	Bytes   uint64   `json:"bytes"`
}

// ImagesReport is the `images` object of `plan --json` and `status --json`:
// what the image refs that ostree-ext's GC would remove hold after
// finalization. HeldObjects and HeldBytes count the objects those refs
// alone reach (each counted once, in the first entry, by ref name, that
// reaches it); GC is whether the plan includes them.
type ImagesReport struct {
	HeldObjects int          `json:"held_objects"`
	HeldBytes   uint64       `json:"held_bytes"`
	GC          bool         `json:"gc"`
	Refs        []ImageUsage `json:"refs"`
	// Reason says why nothing was attributed although the repository has
	// an image store (a decoder refused something: do less).
	Reason string `json:"reason,omitempty"`
}

// imageGroup is an ImageUsage with the refs behind it.
type imageGroup struct {
	usage  ImageUsage
	refs   []ImageRef
	layers []string // the image's manifest layers (RefImage groups)
}

// imageStoreView is what the image GC decision reads: the head refs under
// ostree/container/, the deployments whose images are in use, and the
// deployment commits whose manifests keep layers.
type imageStoreView struct {
	repo        *ostree.Repo
	refs        []ostree.Ref // every ref of the repository
	deployments []*ostree.Deployment
	depCommits  []ostree.Checksum
	// depRefGone, when set, names the deployment refs (ostree/B/S/I) that
	// finalization's regeneration removes: planning sees the repository
	// before finalization, ostree-ext's GC after it.
	depRefGone func(name string) bool
}

// errNoImageGC carries why the GC decision stopped short; the caller keeps
// everything it concerns.
type errNoImageGC struct{ why error }

func (e errNoImageGC) Error() string { return e.why.Error() }

// manifestOf loads a commit and reads its image manifest.
func manifestOf(r *ostree.Repo, c ostree.Checksum) (digest string, m *ostree.ImageManifest, isImage bool, err error) {
	cm, err := r.LoadCommit(c)
	if err != nil {
		return "", nil, false, err
	}
	return ostree.ImageOfCommit(cm)
}

// usedImages is the set of images the deployments' origins name
// (remove_undeployed_images). An origin that does not parse fails it, as
// it fails ostree-ext.
func usedImages(ds []*ostree.Deployment) (map[ostree.ImageReference]bool, error) {
	used := map[ostree.ImageReference]bool{}
	for _, d := range ds {
		img, ok, err := d.ContainerImage()
		if err != nil {
			return nil, err
		}
		if ok {
			used[img] = true
		}
	}
	return used, nil
}

// storeRefs returns the head refs under prefix, refusing aliases under
// ostree/container/ (ostree-ext never writes them; we do not guess).
func storeRefs(refs []ostree.Ref, prefix string) ([]ostree.Ref, error) {
	var out []ostree.Ref
	for _, r := range refs {
		if r.Kind != ostree.RefHead || !strings.HasPrefix(r.Name, prefix) {
			continue
		}
		if r.AliasOf != "" {
			return nil, fmt.Errorf("ref %s is an alias of %s: %w", r.Name, r.AliasOf, ostree.ErrImageStore)
		}
		out = append(out, r)
	}
	return out, nil
}

// referencedLayers is the set of layer digests that gc_image_layers keeps:
// those listed by the manifests of the surviving images and of the
// deployment commits (list_container_deployment_manifests: the commits of
// the refs under ostree/0, ostree/1, rpmostree/base and
// ostree/container/baseimage; we add the deployments' own commits, which
// finalization writes as ostree/B/S/I). Any manifest that does not read
// fails it, as it fails ostree-ext.
func (v *imageStoreView) referencedLayers(survivors []ostree.Ref) (map[string]bool, error) {
	keep := map[string]bool{}
	for _, r := range survivors {
		if _, err := ostree.ImageOfRef(r.Name); err != nil {
			return nil, err
		}
		_, m, isImage, err := manifestOf(v.repo, r.Checksum)
		if err == nil && !isImage {
			err = fmt.Errorf("image ref %s: commit %s has no %s: %w", r.Name, r.Checksum, ostree.MetaManifestDigest, ostree.ErrImageStore)
		}
		if err != nil {
			return nil, err
		}
		for _, l := range m.Layers {
			keep[l] = true
		}
	}
	commits := slices.Clone(v.depCommits)
	for _, r := range v.refs {
		if r.Kind != ostree.RefHead || (v.depRefGone != nil && v.depRefGone(r.Name)) {
			continue
		}
		for _, p := range []string{"ostree/0/", "ostree/1/", "rpmostree/base/", ostree.BaseImageRefPrefix} {
			if strings.HasPrefix(r.Name, p) || r.Name == strings.TrimSuffix(p, "/") {
				commits = append(commits, r.Checksum)
			}
		}
	}
	slices.SortFunc(commits, func(a, b ostree.Checksum) int { return strings.Compare(string(a[:]), string(b[:])) })
	for _, c := range slices.Compact(commits) {
		_, m, isImage, err := manifestOf(v.repo, c)
		if err != nil {
			return nil, fmt.Errorf("deployment commit %s: %w", c, err)
		}
		if isImage {
			for _, l := range m.Layers {
				keep[l] = true
			}
		}
	}
	return keep, nil
}

// decideImageGC returns what ostree-ext's prune would remove from the view:
// the images no deployment uses (each with the removed layers its manifest
// lists first), then the layers no surviving image or deployment lists,
// grouped for the report. It does less than ostree-ext whenever something
// does not decode: an image whose commit does not read is kept; when any
// input of the layer decision does not read, no layer is removed; when an
// image ref name or a deployment origin does not read, nothing is removed
// (the returned errNoImageGC says why).
func (v *imageStoreView) decideImageGC() ([]imageGroup, error) {
	images, err := storeRefs(v.refs, ostree.ImageRefPrefix)
	if err != nil {
		return nil, errNoImageGC{err}
	}
	blobs, err := storeRefs(v.refs, ostree.BlobRefPrefix)
	if err != nil {
		return nil, errNoImageGC{err}
	}
	if len(images) == 0 && len(blobs) == 0 {
		return nil, nil
	}
	used, err := usedImages(v.deployments)
	if err != nil {
		return nil, errNoImageGC{err}
	}
	var groups []imageGroup
	var survivors []ostree.Ref
	layerErr := error(nil)
	for _, r := range images {
		s, err := ostree.UnescapeRef(strings.TrimPrefix(r.Name, ostree.ImageRefPrefix))
		if err != nil {
			return nil, errNoImageGC{fmt.Errorf("image ref %s: %w", r.Name, err)} // list_images fails
		}
		img, err := ostree.ParseImageReference(s)
		if err != nil || used[img] {
			survivors = append(survivors, r) // kept; a bad one fails the layer GC below
			continue
		}
		digest, m, isImage, err := manifestOf(v.repo, r.Checksum)
		if err == nil && !isImage {
			err = fmt.Errorf("commit %s has no %s: %w", r.Checksum, ostree.MetaManifestDigest, ostree.ErrImageStore)
		}
		if err != nil {
			// ostree-ext would remove it unread; we keep what we cannot read.
			survivors = append(survivors, r)
			if layerErr == nil {
				layerErr = fmt.Errorf("image ref %s: %w", r.Name, err)
			}
			continue
		}
		groups = append(groups, imageGroup{
			usage:  ImageUsage{Ref: r.Name, Image: img.String(), Layers: []string{}},
			refs:   []ImageRef{{Name: r.Name, Commit: r.Checksum, Kind: RefImage, Digest: digest}},
			layers: m.Layers,
		})
	}
	var keep map[string]bool
	if layerErr == nil {
		keep, layerErr = v.referencedLayers(survivors)
	}
	if layerErr == nil {
		// A layer goes with the first removed image (by ref name) that
		// lists it; the rest are orphans with an entry each.
		owner := map[string]int{}
		for gi := len(groups) - 1; gi >= 0; gi-- {
			for _, l := range groups[gi].layers {
				owner[l] = gi
			}
		}
		for _, r := range blobs {
			d, err := ostree.DigestOfBlobRef(r.Name)
			if err != nil {
				layerErr = fmt.Errorf("layer ref %s: %w", r.Name, err)
				break
			}
			if keep[d] {
				continue
			}
			ref := ImageRef{Name: r.Name, Commit: r.Checksum, Kind: RefLayer, Digest: d}
			if gi, ok := owner[d]; ok {
				groups[gi].refs = append(groups[gi].refs, ref)
				groups[gi].usage.Layers = append(groups[gi].usage.Layers, r.Name)
				continue
			}
			groups = append(groups, imageGroup{usage: ImageUsage{Ref: r.Name, Layers: []string{}}, refs: []ImageRef{ref}})
		}
	}
	if layerErr != nil {
		// No layer goes: drop any layer refs gathered before the error.
		out := groups[:0]
		for _, g := range groups {
			if g.refs[0].Kind == RefImage {
				g.refs = g.refs[:1]
				g.usage.Layers = []string{}
				out = append(out, g)
			}
		}
		groups = out
	}
	if layerErr != nil {
		return groups, errNoImageGC{fmt.Errorf("no layer refs removed: %w", layerErr)}
	}
	return groups, nil
}

// removedRefNames is the set of ref names the groups remove.
func removedRefNames(groups []imageGroup) map[string]bool {
	out := map[string]bool{}
	for _, g := range groups {
		for _, r := range g.refs {
			out[r.Name] = true
		}
	}
	return out
}

// PlanSysroot is the mock prune of a sysroot: the deployments predicted
// after finalization (PredictDeploymentsWith o), their roots
// (PostFinalizeRoots) and the plan from those roots, computed under
// ostree's shared repository lock. With nothing staged it is what `ostree
// admin cleanup` would delete now.
//
// The plan's Images reports what the image refs that ostree-ext's GC would
// remove after finalization hold (the images that neither a predicted
// deployment nor the staged one uses, and the layers no remaining image
// lists). With o.ImageGC the plan also includes those refs (ImageRefs) and
// the objects only they reach; otherwise it is ostree's own prune, exactly.
func PlanSysroot(ctx context.Context, s *ostree.Sysroot, o PredictOptions, lockTimeout time.Duration) (*Plan, []*ostree.Deployment, error) {
	ds, err := PredictDeploymentsWith(s, o)
	if err != nil {
		return nil, nil, err
	}
	p, err := planSysrootImages(ctx, s, ds, o.ImageGC, lockTimeout)
	if err != nil {
		return nil, nil, fmt.Errorf("planning the prune of %s: %w", s.Repo.Path, err)
	}
	return p, ds, nil
}

func planSysrootImages(ctx context.Context, s *ostree.Sysroot, ds []*ostree.Deployment, gc bool, lockTimeout time.Duration) (*Plan, error) {
	r := s.Repo
	lock, err := lockRepo(ctx, r, false, lockTimeout)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	refs, err := r.Refs()
	if err != nil {
		return nil, err
	}
	// The staged deployment's image is in use even when a locked
	// finalization leaves it out of the prediction.
	users := slices.Clone(ds)
	if s.Staged != nil {
		users = append(users, s.Staged)
	}
	survives := ostree.HeadRefSurvives(s, ds)
	view := imageStoreView{repo: r, refs: refs, deployments: users, depRefGone: func(n string) bool { return !survives(n) }}
	for _, d := range users {
		view.depCommits = append(view.depCommits, d.Checksum)
	}
	groups, gerr := view.decideImageGC()
	report := &ImagesReport{GC: gc, Refs: []ImageUsage{}}
	var nogc errNoImageGC
	if errors.As(gerr, &nogc) {
		report.Reason = nogc.Error()
	} else if gerr != nil {
		return nil, gerr
	}
	removed := removedRefNames(groups)
	roots, err := ostree.PostFinalizeRootsOf(s, ds, refs, removed)
	if err != nil {
		return nil, err
	}
	p, err := ComputePlan(ctx, RepoLister(r), roots, FileSuffix(r), RepoChildren(r))
	if err != nil {
		return nil, err
	}
	p.Images = report
	if len(groups) == 0 {
		return p, nil
	}
	// Attribute the plan's objects that the removed refs reach, group by
	// group in ref-name order.
	held := make([]bool, len(p.entries))
	slices.SortFunc(groups, func(a, b imageGroup) int { return strings.Compare(a.usage.Ref, b.usage.Ref) })
	for _, g := range groups {
		var commits []ostree.ObjectName
		for _, ref := range g.refs {
			commits = append(commits, ostree.ObjectName{Checksum: ref.Commit, Type: ostree.ObjCommit})
		}
		reach, err := Reachable(ctx, commits, RepoChildren(r))
		if err != nil {
			return nil, fmt.Errorf("walking image %s: %w", g.usage.Ref, err)
		}
		u := g.usage
		reach.Range(func(o ostree.ObjectName) bool {
			if i, ok := p.find(o); ok && !held[i] {
				held[i] = true
				u.Objects++
				u.Bytes += p.entries[i].Size
			}
			return true
		})
		report.HeldObjects += u.Objects
		report.HeldBytes += u.Bytes
		report.Refs = append(report.Refs, u)
		if gc {
			p.ImageRefs = append(p.ImageRefs, g.refs...)
		}
	}
	if gc {
		slices.SortFunc(p.ImageRefs, compareImageRefs)
		return p, nil
	}
	// Without image GC the plan is ostree's own: the refs stay roots and
	// keep what they reach.
	base, err := ostree.PostFinalizeRootsOf(s, ds, refs, nil)
	if err != nil {
		return nil, err
	}
	out := p.entries[:0]
	for i, e := range p.entries {
		if !held[i] {
			out = append(out, e)
		}
	}
	listed, reachable := p.Stats.Listed, p.Stats.Reachable+report.HeldObjects
	p.entries = slices.Clip(out)
	p.Roots = base
	p.RootsHash = RootsHash(base)
	p.recount()
	p.Stats.Listed, p.Stats.Reachable = listed, reachable
	return p, nil
}

// find returns the index of o among the entries (sorted by checksum, then
// by printed type: the few entries of one checksum are scanned).
func (p *Plan) find(o ostree.ObjectName) (int, bool) {
	i, _ := slices.BinarySearchFunc(p.entries, o.Checksum, func(e Entry, c ostree.Checksum) int {
		return bytes.Compare(e.Checksum[:], c[:])
	})
	for ; i < len(p.entries) && p.entries[i].Checksum == o.Checksum; i++ {
		if p.entries[i].Type == o.Type {
			return i, true
		}
	}
	return 0, false
}

func compareImageRefs(a, b ImageRef) int { return strings.Compare(a.Name, b.Name) }

// validImageRef checks a planned ref before it becomes a path: under the
// prefix of its kind, every component a valid ostree ref fragment (so no
// "..", no empty component), a decodable name, a non-zero commit.
func validImageRef(r ImageRef) error {
	prefix := ostree.ImageRefPrefix
	if r.Kind == RefLayer {
		prefix = ostree.BlobRefPrefix
	} else if r.Kind != RefImage {
		return fmt.Errorf("image ref %q: kind %d: %w", r.Name, r.Kind, ErrBadPlan)
	}
	if len(r.Name) > 1024 || !strings.HasPrefix(r.Name, prefix) || r.Commit.IsZero() {
		return fmt.Errorf("image ref %q: %w", truncateStr(r.Name), ErrBadPlan)
	}
	for _, c := range strings.Split(r.Name, "/") {
		if !ostree.ValidRefFragment(c) || strings.HasSuffix(c, "\n") {
			return fmt.Errorf("image ref %q: component %q: %w", truncateStr(r.Name), truncateStr(c), ErrBadPlan)
		}
	}
	if err := ostree.ValidDigest(r.Digest); err != nil {
		return fmt.Errorf("image ref %q: %w: %w", truncateStr(r.Name), err, ErrBadPlan)
	}
	if r.Kind == RefLayer {
		d, err := ostree.DigestOfBlobRef(r.Name)
		if err != nil || d != r.Digest {
			return fmt.Errorf("image ref %q: layer digest %q does not match the name: %w", truncateStr(r.Name), truncateStr(r.Digest), ErrBadPlan)
		}
	} else if _, err := ostree.ImageOfRef(r.Name); err != nil {
		return fmt.Errorf("image ref %q: %w: %w", truncateStr(r.Name), err, ErrBadPlan)
	}
	return nil
}

// RefRemover removes a head ref of the repository. The binding
// (repoRefRemover) unlinks it relative to refs/heads without following
// symlinks and syncs the parent directory; tests break it.
type RefRemover interface {
	// RemoveRef removes name if it still holds commit: removed false and
	// no error when it is gone already or holds something else.
	RemoveRef(name string, commit ostree.Checksum) (removed bool, err error)
}

// RemoveImageRefs is the first phase of executing a plan with image GC,
// run under the exclusive repository lock: every planned ref is checked
// again against the live repository and deployments (all of them, the
// staged one included) and removed only when ostree-ext's GC would still
// remove it with the same content: an image ref still at the planned commit
// (hence the planned manifest, which is re-read and compared), whose image
// no deployment uses; a layer ref still at the planned commit that no
// surviving image and no deployment commit lists. Anything else is kept,
// and Execute then keeps everything a kept ref reaches (it is a root the
// plan did not count). When the check cannot be made (a deployment origin
// or a surviving manifest that does not read) the refs concerned are kept.
// Handled refs leave p.ImageRefs (a resumed run does not see them again);
// the error of a failed removal stops it, before any object is deleted.
func RemoveImageRefs(ctx context.Context, r *ostree.Repo, p *Plan, deployments []*ostree.Deployment, rm RefRemover) (removed, kept int, err error) {
	if len(p.ImageRefs) == 0 {
		return 0, 0, nil
	}
	for _, ref := range p.ImageRefs {
		if err := validImageRef(ref); err != nil {
			return 0, 0, err
		}
	}
	refs, err := r.Refs()
	if err != nil {
		return 0, 0, err
	}
	live := map[string]ostree.Ref{}
	for _, lr := range refs {
		if lr.Kind == ostree.RefHead && lr.AliasOf == "" {
			live[lr.Name] = lr
		}
	}
	view := imageStoreView{repo: r, refs: refs, deployments: deployments}
	for _, d := range deployments {
		view.depCommits = append(view.depCommits, d.Checksum)
	}
	removable := map[string]bool{}
	used, uerr := usedImages(deployments)
	if uerr == nil {
		for _, ref := range p.ImageRefs {
			lr, ok := live[ref.Name]
			if ref.Kind != RefImage || !ok || lr.Checksum != ref.Commit {
				continue
			}
			img, err := ostree.ImageOfRef(ref.Name)
			if err != nil || used[img] {
				continue
			}
			if d, _, isImage, err := manifestOf(r, ref.Commit); err != nil || !isImage || d != ref.Digest {
				continue
			}
			removable[ref.Name] = true
		}
		var survivors []ostree.Ref
		images, serr := storeRefs(refs, ostree.ImageRefPrefix)
		for _, lr := range images {
			if !removable[lr.Name] {
				survivors = append(survivors, lr)
			}
		}
		keep, lerr := view.referencedLayers(survivors)
		if serr == nil && lerr == nil {
			for _, ref := range p.ImageRefs {
				if lr, ok := live[ref.Name]; ref.Kind == RefLayer && ok && lr.Checksum == ref.Commit && !keep[ref.Digest] {
					removable[ref.Name] = true
				}
			}
		}
	}
	rest := slices.Clone(p.ImageRefs)
	defer func() { p.ImageRefs = rest }()
	// Images first, then layers: an interruption between leaves layers
	// whose image is gone, which the next run (or ostree-ext) removes.
	for _, kind := range []ImageRefKind{RefImage, RefLayer} {
		for _, ref := range p.ImageRefs {
			if ref.Kind != kind {
				continue
			}
			if err := ctx.Err(); err != nil {
				return removed, kept, err
			}
			if removable[ref.Name] {
				ok, err := rm.RemoveRef(ref.Name, ref.Commit)
				if err != nil {
					return removed, kept, fmt.Errorf("remove ref %s: %w", ref.Name, err)
				}
				if ok {
					removed++
				}
			} else if _, ok := live[ref.Name]; ok {
				kept++
			}
			rest = slices.DeleteFunc(rest, func(x ImageRef) bool { return x.Name == ref.Name })
		}
	}
	return removed, kept, nil
}

// repoRefRemover removes head refs the way ostree_repo_set_ref_immediate
// with no checksum does (_ostree_repo_write_ref: unlinkat in refs/heads),
// and then fsyncs the parent directory so the removal survives a power
// loss before the objects it frees are deleted (ostree does not sync
// there; the plan's order needs it).
type repoRefRemover struct{ repo *ostree.Repo }

func (rr repoRefRemover) RemoveRef(name string, commit ostree.Checksum) (bool, error) {
	headsPath := rr.repo.Path + "/refs/heads"
	repoFD, err := openDirBeneath(unix.AT_FDCWD, rr.repo.Path, false)
	if err != nil {
		return false, fmt.Errorf("%s: %w", rr.repo.Path, err)
	}
	defer unix.Close(repoFD)
	dir, base := "refs/heads", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		dir, base = "refs/heads/"+name[:i], name[i+1:]
	}
	fd, err := openDirBeneath(repoFD, dir, true)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s/%s: %w", headsPath, dir, err)
	}
	defer unix.Close(fd)
	f, err := unix.Openat(fd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s/%s: %w", headsPath, name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(f, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size > 4096 {
		unix.Close(f)
		return false, nil // not a ref file: not ours to touch
	}
	file := os.NewFile(uintptr(f), headsPath+"/"+name)
	b, err := io.ReadAll(file)
	file.Close()
	if err != nil {
		return false, fmt.Errorf("%s/%s: %w", headsPath, name, err)
	}
	if c, err := ostree.ParseRef(b); err != nil || c != commit {
		return false, nil
	}
	if err := unix.Unlinkat(fd, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return false, fmt.Errorf("unlink %s/%s: %w", headsPath, name, err)
	}
	if err := unix.Fsync(fd); err != nil {
		return false, fmt.Errorf("fsync %s/%s: %w", headsPath, dir, err)
	}
	return true, nil
}

// ExecuteSysroot executes p on the sysroot's repository under ostree's
// exclusive repository lock: first the image refs (RemoveImageRefs, against
// every deployment on disk, the staged one included), then the objects
// (ExecuteRepo's Execute, the live roots being every ref then left plus the
// deployments' commits). The result counts the refs too.
func ExecuteSysroot(ctx context.Context, s *ostree.Sysroot, p *Plan, lockTimeout time.Duration, progress func(done, total int)) (Result, error) {
	return executeRepo(ctx, s.Repo, p, DeploymentRoots(s.Deployments), lockTimeout, progress, func(res *Result) error {
		var err error
		res.RefsRemoved, res.RefsKept, err = RemoveImageRefs(ctx, s.Repo, p, s.Deployments, repoRefRemover{s.Repo})
		return err
	})
}
