package lifecycle

import (
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree"
)

// TestRewrittenTakeover: ostree's rewrite of our takeover (keys reordered,
// "locked" set) is still our takeover; a state that changes the deployment
// or its boot configuration (a new staging of the same deployment name) is
// not.
func TestRewrittenTakeover(t *testing.T) {
	csum := strings.Repeat("ab", 32)
	boot := strings.Repeat("cd", 32)
	dep := func(serial string) ostree.VariantEntry {
		b, err := ostree.EncodeVardict([]ostree.VariantEntry{
			{Key: "name", Type: "s", Value: ostree.EncodeString(csum + "." + serial)},
			{Key: "osname", Type: "s", Value: ostree.EncodeString("os")},
			{Key: "bootcsum", Type: "s", Value: ostree.EncodeString(boot)},
		})
		if err != nil {
			t.Fatal(err)
		}
		return ostree.VariantEntry{Type: "a{sv}", Value: b}
	}
	target, merge := dep("1"), dep("0")
	target.Key, merge.Key = "target", "merge-deployment"
	kargs := func(k ...string) ostree.VariantEntry {
		return ostree.VariantEntry{Key: "kargs", Type: "as", Value: ostree.EncodeStrings(k)}
	}
	locked := ostree.VariantEntry{Key: "locked", Type: "b", Value: ostree.EncodeBool(true)}
	enc := func(es ...ostree.VariantEntry) []byte {
		b, err := ostree.EncodeVardict(es)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	orig := enc(target, merge)
	ours := enc(target, kargs("rw"))
	for _, c := range []struct {
		name string
		disk []byte
		want bool
	}{
		{"ours as written", ours, true},
		{"locked, reordered", enc(locked, kargs("rw"), target), true},
		{"other kargs", enc(target, kargs("ro"), locked), false},
		{"no kargs", enc(target, locked), false},
		{"with a merge deployment", enc(target, merge, locked), false},
		{"another deployment", enc(func() ostree.VariantEntry { d := dep("2"); d.Key = "target"; return d }(), kargs("rw")), false},
	} {
		if got := rewrittenTakeover(c.disk, orig, ours); got != c.want {
			t.Errorf("%s: rewrittenTakeover = %v, want %v", c.name, got, c.want)
		}
	}
}
