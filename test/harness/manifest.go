package harness

import "github.com/ostree-prefinalize/ostree-prefinalize/test/treecmp"

// The tree comparator lives in test/treecmp (shared with the tests of
// packages the harness imports); these names are the harness's.
type (
	Entry           = treecmp.Entry
	ManifestOptions = treecmp.Options
	Manifest        = treecmp.Manifest
)

// TreeManifest is treecmp.Scan.
func TreeManifest(root string, o ManifestOptions) (Manifest, error) { return treecmp.Scan(root, o) }
