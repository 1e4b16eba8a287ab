package prune

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/test/harness"
)

// imgRepo is a bare repository with one undeployed image (ref img, one
// layer ref blob) built with the ostree command as ostree-ext lays it out.
type imgRepo struct {
	repo          *ostree.Repo
	img, blob     string
	imgC, blobC   string
	digest, layer string
}

func newImgRepo(t *testing.T) *imgRepo {
	t.Helper()
	harness.RequireOstree(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	ostreeCmd(t, repo, "init", "--mode=bare")
	r := &imgRepo{layer: fmt.Sprintf("sha256:%x", sha256.Sum256([]byte("layer")))}
	r.blob = "ostree/container/blob/sha256_3A_" + strings.TrimPrefix(r.layer, "sha256:")
	r.img = "ostree/container/image/docker_3A__2F__2F_quay_2E_io/x_3A_1"
	tree := filepath.Join(dir, "tree")
	writeTree(t, tree, map[string]string{"usr/a": "a", "usr/b": "b"})
	r.blobC = ostreeCmd(t, repo, "commit", "--branch="+r.blob, "--tree=dir="+tree)
	manifest := fmt.Sprintf(`{"schemaVersion":2,"config":{"mediaType":"c","digest":"sha256:%x","size":1},"layers":[{"mediaType":"l","digest":"%s","size":1}]}`, sha256.Sum256(nil), r.layer)
	r.digest = fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(manifest)))
	r.imgC = ostreeCmd(t, repo, "commit", "--branch="+r.img, "--tree=dir="+tree,
		"--add-metadata-string=ostree.manifest-digest="+r.digest, "--add-metadata-string=ostree.manifest="+manifest)
	rr, err := ostree.OpenRepo(repo)
	if err != nil {
		t.Fatal(err)
	}
	r.repo = rr
	return r
}

func (r *imgRepo) plan(t *testing.T) *Plan {
	t.Helper()
	c := func(s string) ostree.Checksum {
		x, err := ostree.ParseChecksum(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	p, err := NewPlan(nil, "file", nil)
	if err != nil {
		t.Fatal(err)
	}
	p.ImageRefs = []ImageRef{
		{Name: r.blob, Commit: c(r.blobC), Kind: RefLayer, Digest: r.layer},
		{Name: r.img, Commit: c(r.imgC), Kind: RefImage, Digest: r.digest},
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

type failingRemover struct {
	calls []string
	err   error
}

func (f *failingRemover) RemoveRef(name string, _ ostree.Checksum) (bool, error) {
	f.calls = append(f.calls, name)
	return false, f.err
}

// A removal that fails stops before anything else: the error names the
// ref, the image goes before its layer, and every unhandled ref stays in
// the plan for the next run.
func TestRemoveImageRefsFailure(t *testing.T) {
	r := newImgRepo(t)
	p := r.plan(t)
	rm := &failingRemover{err: errors.New("injected")}
	_, _, err := RemoveImageRefs(context.Background(), r.repo, p, nil, rm)
	if err == nil || !strings.Contains(err.Error(), r.img) || !slices.Equal(rm.calls, []string{r.img}) {
		t.Fatalf("err %v, calls %q", err, rm.calls)
	}
	if len(p.ImageRefs) != 2 {
		t.Fatalf("plan keeps %d refs, want both", len(p.ImageRefs))
	}
	if refs := ostreeCmd(t, r.repo.Path, "refs"); !strings.Contains(refs, r.img) || !strings.Contains(refs, r.blob) {
		t.Fatalf("refs changed: %s", refs)
	}
}

// The repository binding removes a ref only when it still holds the
// planned commit and is a regular file; a symlinked directory on the way
// is not followed.
func TestRepoRefRemover(t *testing.T) {
	r := newImgRepo(t)
	p := r.plan(t)
	rm := repoRefRemover{r.repo}
	heads := filepath.Join(r.repo.Path, "refs", "heads")
	// Another commit: kept.
	if ok, err := rm.RemoveRef(r.img, p.ImageRefs[0].Commit); ok || err != nil {
		t.Fatalf("moved ref: %v %v", ok, err)
	}
	// The parent directory replaced by a symlink to elsewhere: not followed.
	blobDir := filepath.Join(heads, "ostree/container/blob")
	os.Rename(blobDir, blobDir+".real")
	if err := os.Symlink(blobDir+".real", blobDir); err != nil {
		t.Fatal(err)
	}
	if ok, err := rm.RemoveRef(r.blob, p.ImageRefs[0].Commit); ok || err == nil {
		t.Fatalf("through a symlink: %v %v", ok, err)
	}
	os.Remove(blobDir)
	os.Rename(blobDir+".real", blobDir)
	// The real thing, and then again (already gone).
	for i, want := range []bool{true, false} {
		if ok, err := rm.RemoveRef(r.img, p.ImageRefs[1].Commit); ok != want || err != nil {
			t.Fatalf("try %d: %v %v", i, ok, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(heads, r.img)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ref still there: %v", err)
	}
	// A deployment now using the image keeps it; with no image left, the
	// layer goes (RemoveImageRefs end to end on the binding).
	p = r.plan(t)
	ostreeCmd(t, r.repo.Path, "refs", "--create="+r.img, r.imgC)
	kf, err := ostree.ParseKeyFile([]byte("[origin]\ncontainer-image-reference=ostree-unverified-registry:quay.io/x:1\n"))
	if err != nil {
		t.Fatal(err)
	}
	d := &ostree.Deployment{OSName: "os", OriginFile: kf, Checksum: p.ImageRefs[0].Commit}
	removed, kept, err := RemoveImageRefs(context.Background(), r.repo, p, []*ostree.Deployment{d}, repoRefRemover{r.repo})
	if err != nil || removed != 0 || kept != 2 || len(p.ImageRefs) != 0 {
		t.Fatalf("in use: removed %d kept %d err %v left %d", removed, kept, err, len(p.ImageRefs))
	}
	p = r.plan(t)
	removed, kept, err = RemoveImageRefs(context.Background(), r.repo, p, nil, repoRefRemover{r.repo})
	if err != nil || removed != 2 || kept != 0 {
		t.Fatalf("unused: removed %d kept %d err %v", removed, kept, err)
	}
	if refs := ostreeCmd(t, r.repo.Path, "refs"); refs != "" {
		t.Fatalf("refs left: %q", refs)
	}
}
