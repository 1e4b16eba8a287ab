package prune

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

func encTestPlanV2(t testing.TB) *Plan {
	p := encTestPlan(t)
	layer := "sha256:" + strings.Repeat("ab", 32)
	p.ImageRefs = []ImageRef{
		{Name: "ostree/container/blob/sha256_3A_" + strings.Repeat("ab", 32), Commit: ostree.Checksum(sha256.Sum256([]byte("l"))), Kind: RefLayer, Digest: layer},
		{Name: "ostree/container/image/docker_3A__2F__2F_quay_2E_io/os_3A_1", Commit: ostree.Checksum(sha256.Sum256([]byte("i"))), Kind: RefImage, Digest: "sha256:" + strings.Repeat("cd", 32)},
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

// A plan with image refs round-trips as version 2; one without is still
// written as version 1, byte for byte (old plans stay readable, new ones
// without refs read by old binaries).
func TestPlanEncodingV2(t *testing.T) {
	v1, err := encTestPlan(t).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if old, err := os.ReadFile("testdata/plan/valid.bin"); err != nil || !bytes.Equal(old, v1) {
		t.Fatalf("version 1 encoding changed, or testdata/plan/valid.bin is not this plan (%v)", err)
	}
	p := encTestPlanV2(t)
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if string(b[:8]) != "OPFPLAN2" {
		t.Fatalf("magic %q", b[:8])
	}
	q, err := UnmarshalPlan(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(q.ImageRefs, p.ImageRefs) || q.Len() != p.Len() {
		t.Fatalf("round trip: %+v", q.ImageRefs)
	}
	for i := 0; i < len(b); i++ {
		if _, err := UnmarshalPlan(b[:i]); !errors.Is(err, ErrBadPlan) {
			t.Fatalf("truncated to %d: %v", i, err)
		}
	}
	// The fuzz seed (go generate: internal/genseeds) is this plan.
	if seed, err := os.ReadFile("testdata/plan/valid-v2.bin"); err != nil || !bytes.Equal(seed, b) {
		t.Fatalf("testdata/plan/valid-v2.bin is not this plan (%v): run go generate ./prune/", err)
	}
	// Hostile refs are refused before anything is deleted: names leaving
	// refs/heads, outside ostree/container/, a layer whose digest does not
	// match its name, an unknown kind.
	for _, mut := range []func(r *ImageRef){
		func(r *ImageRef) { r.Name = "ostree/container/image/../../heads/x" },
		func(r *ImageRef) { r.Name = "ostree/container/image//x" },
		func(r *ImageRef) { r.Name = "ostree/0/1/0" },
		func(r *ImageRef) { r.Name = "ostree/container/baseimage/x" },
		func(r *ImageRef) { r.Name = "ostree/container/image/x\n" },
		func(r *ImageRef) { r.Digest = "sha256:../x" },
		func(r *ImageRef) { r.Kind = 3 },
		func(r *ImageRef) { r.Commit = ostree.Checksum{} },
		func(r *ImageRef) {
			if r.Kind == RefLayer {
				r.Digest = "sha256:" + strings.Repeat("ef", 32)
			} else {
				r.Name = "ostree/container/image/bogus_3A_x"
			}
		},
	} {
		for i := range p.ImageRefs {
			bad := encTestPlanV2(t)
			mut(&bad.ImageRefs[i])
			if err := bad.Validate(); !errors.Is(err, ErrBadPlan) {
				t.Errorf("ref %+v accepted: %v", bad.ImageRefs[i], err)
			}
		}
	}
}
