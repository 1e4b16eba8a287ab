// Command genseeds regenerates prune's fuzz seeds of encoded plans in the
// directory given as its argument (go generate ./prune/ writes
// prune/testdata/plan/): valid.bin, a version-1 plan of every planned
// object type, two roots and a 2^40-byte file (a size wider than 32 bits);
// valid-v2.bin, the same with two image-store refs (version 2). The tests
// (TestPlanEncodingV2) require these exact bytes from their own plans.
package main

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"

	"github.com/ostree-prefinalize/ostree-prefinalize/internal/seedgen"
	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
	"github.com/ostree-prefinalize/ostree-prefinalize/prune"
)

func main() { seedgen.Main(run) }

func run(out string) error {
	sum := func(s string) ostree.Checksum { return ostree.Checksum(sha256.Sum256([]byte(s))) }
	roots := []ostree.ObjectName{{Checksum: sum("root-b"), Type: ostree.ObjCommit}, {Checksum: sum("root-a"), Type: ostree.ObjCommit}}
	p, err := prune.NewPlan(roots, "file", []prune.Entry{
		{Checksum: sum("c"), Type: ostree.ObjCommit, Size: 300},
		{Checksum: sum("c"), Type: ostree.ObjCommitMeta, Size: 30},
		{Checksum: sum("t"), Type: ostree.ObjDirTree, Size: 100},
		{Checksum: sum("m"), Type: ostree.ObjDirMeta, Size: 40},
		{Checksum: sum("f"), Type: ostree.ObjFile, Size: 1 << 40},
	})
	if err != nil {
		return err
	}
	b, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "valid.bin"), b, 0o644); err != nil {
		return err
	}
	layer := "sha256:" + strings.Repeat("ab", 32)
	p.ImageRefs = []prune.ImageRef{
		{Name: "ostree/container/blob/sha256_3A_" + strings.Repeat("ab", 32), Commit: sum("l"), Kind: prune.RefLayer, Digest: layer},
		{Name: "ostree/container/image/docker_3A__2F__2F_quay_2E_io/os_3A_1", Commit: sum("i"), Kind: prune.RefImage, Digest: "sha256:" + strings.Repeat("cd", 32)},
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if b, err = p.MarshalBinary(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "valid-v2.bin"), b, 0o644)
}
