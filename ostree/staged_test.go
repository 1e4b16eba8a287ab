package ostree

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree/gvariant/gvarianttest"
)

const (
	seedCsum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	seedBoot = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

func TestDecodeStagedSeed(t *testing.T) {
	s, err := DecodeStagedState(readTestdata(t, "seed-staged-all-keys.gvariant"))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ParseChecksum(seedCsum)
	want := DeploymentID{OSName: "fedora-coreos", Checksum: c, Serial: 1, BootCsum: seedBoot}
	if s.Target != want || s.Target.Name() != seedCsum+".1" {
		t.Fatalf("target %+v", s.Target)
	}
	want.Serial = 0
	if s.Merge == nil || *s.Merge != want {
		t.Fatalf("merge %+v", s.Merge)
	}
	if !s.HasKargs || strings.Join(s.Kargs, "|") != "root=UUID=1234|rw|quiet splash" {
		t.Fatalf("kargs %q", s.Kargs)
	}
	if len(s.OverlayInitrds) != 1 || s.OverlayInitrds[0] != seedBoot || !s.Locked {
		t.Fatalf("%+v", s)
	}
	var keys []string
	for _, e := range s.Entries {
		keys = append(keys, e.Key+":"+e.Type)
	}
	if strings.Join(keys, " ") != "target:a{sv} merge-deployment:a{sv} kargs:as overlay-initrds:as locked:b x-unknown-future-key:(ut)" {
		t.Fatalf("entries %v", keys)
	}

	m, err := DecodeStagedState(readTestdata(t, "seed-staged-minimal.gvariant"))
	if err != nil {
		t.Fatal(err)
	}
	if m.HasKargs || m.Kargs != nil || m.Locked || m.OverlayInitrds != nil || m.Merge == nil || m.Target.OSName != "os" {
		t.Fatalf("minimal %+v", m)
	}
}

func TestBadStaged(t *testing.T) {
	for file, msg := range map[string]string{
		"bad-staged-notarget.gvariant":    "staged state has no target",
		"bad-staged-kargs-type.gvariant":  `key "kargs" has type "s", want "as"`,
		"bad-staged-shortcsum.gvariant":   `target: deploy name "abc.1": checksum "abc": want 64 hex digits`,
		"bad-staged-serial.gvariant":      "serial out of range",
		"bad-staged-noserial.gvariant":    "want CHECKSUM.SERIAL",
		"bad-staged-dupkey.gvariant":      `duplicate key "merge-deployment"`,
		"bad-staged-osname.gvariant":      `osname "../x" is not a single path component`,
		"bad-staged-noosname.gvariant":    `missing key "osname"`,
		"bad-staged-locked-type.gvariant": `key "locked" has type "s", want "b"`,
	} {
		_, err := DecodeStagedState(readTestdata(t, file))
		t.Run(file, func(t *testing.T) { wantCorrupt(t, err, msg) })
	}
	_, err := DecodeStagedState(readTestdata(t, "bad-staged-notarget.gvariant"))
	if !errors.Is(err, ErrNoStagedTarget) {
		t.Fatalf("no target: %v", err)
	}
	_, err = DecodeStagedState(nil)
	if !errors.Is(err, ErrNoStagedTarget) {
		t.Fatalf("empty file: %v", err)
	}
}

func TestParseDeployName(t *testing.T) {
	for name, serial := range map[string]int{seedCsum + ".0": 0, seedCsum + ".17": 17, seedCsum + ".007": 7, seedCsum + ".2147483647": 2147483647} {
		c, s, err := ParseDeployName(name)
		if err != nil || s != serial || c.String() != seedCsum {
			t.Errorf("%s: %s %d %v", name, c, s, err)
		}
	}
	for _, name := range []string{"", seedCsum, seedCsum + ".", seedCsum + ".-1", seedCsum + ".+1", seedCsum + ".1a", seedCsum + ". 1",
		seedCsum + ".2147483648", strings.ToUpper(seedCsum) + ".0", seedCsum[1:] + ".0", seedCsum + "0.0", "." + seedCsum} {
		if _, _, err := ParseDeployName(name); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%q: %v", name, err)
		}
	}
}

func TestEncodeTakeover(t *testing.T) {
	// kargs present: only merge-deployment goes; everything else byte-identical
	raw := readTestdata(t, "seed-staged-all-keys.gvariant")
	s, err := DecodeStagedState(raw)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.EncodeTakeover([]string{"ignored"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := DecodeStagedState(out)
	if err != nil {
		t.Fatal(err)
	}
	if n.Merge != nil || n.Target != s.Target || strings.Join(n.Kargs, "|") != strings.Join(s.Kargs, "|") || !n.Locked {
		t.Fatalf("%+v", n)
	}
	if len(n.Entries) != len(s.Entries)-1 {
		t.Fatalf("%d entries", len(n.Entries))
	}
	j := 0
	for _, e := range s.Entries {
		if e.Key == "merge-deployment" {
			continue
		}
		if n.Entries[j].Key != e.Key || n.Entries[j].Type != e.Type || !bytes.Equal(n.Entries[j].Value, e.Value) {
			t.Fatalf("entry %q changed", e.Key)
		}
		j++
	}
	if !bytes.Equal(s.Raw, raw) {
		t.Fatal("Raw modified")
	}

	// kargs absent: kargs takes merge-deployment's place
	m, err := DecodeStagedState(readTestdata(t, "seed-staged-minimal.gvariant"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.EncodeTakeover(nil); err == nil {
		t.Fatal("nil kargs accepted with kargs absent")
	}
	out, err = m.EncodeTakeover([]string{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := DecodeStagedState(out)
	if err != nil || !e.HasKargs || len(e.Kargs) != 0 || e.Merge != nil {
		t.Fatalf("%+v %v", e, err)
	}
	out, err = m.EncodeTakeover([]string{"root=UUID=x", "rw", "ünï"})
	if err != nil {
		t.Fatal(err)
	}
	e, err = DecodeStagedState(out)
	if err != nil || strings.Join(e.Kargs, " ") != "root=UUID=x rw ünï" || e.Entries[1].Key != "kargs" {
		t.Fatalf("%+v %v", e, err)
	}
	if _, err := m.EncodeTakeover([]string{"a\x00b"}); err == nil {
		t.Fatal("NUL in karg accepted")
	}
	if _, err := m.EncodeTakeover([]string{"\xff"}); err == nil {
		t.Fatal("invalid UTF-8 karg accepted")
	}
	// nothing to take over
	if _, err := e.EncodeTakeover([]string{}); !errors.Is(err, ErrNoMergeDeployment) {
		t.Fatalf("no merge: %v", err)
	}
}

func glibDeployment(name, osname string) string {
	return fmt.Sprintf("{'name': <'%s'>, 'osname': <'%s'>, 'bootcsum': <'%s'>}", name, osname, seedBoot)
}

// TestTakeoverWithGLib checks EncodeTakeover against GLib both ways: the
// result is byte-identical to what GLib's builder makes of the intended
// dictionary, GLib reads it as normal, and every key ostree looks up reads
// back (through GLib's GVariantDict, as ostree reads it) as intended.
func TestTakeoverWithGLib(t *testing.T) {
	g := gvarianttest.RequireGLib(t)
	target := [3]string{"target", "a{sv}", glibDeployment(seedCsum+".3", "fedora")}
	merge := [3]string{"merge-deployment", "a{sv}", glibDeployment(seedCsum+".2", "fedora")}
	kargs := [3]string{"kargs", "as", "['root=UUID=abc', 'rw', 'console=ttyS0,115200n8']"}
	initrds := [3]string{"overlay-initrds", "as", "['" + seedBoot + "']"}
	locked := [3]string{"locked", "b", "false"}
	unknown := [3]string{"x-future", "a{sv}", "{'nested': <(uint64 1, ['a', 'b'], <byte 7>)>}"}
	carried := []string{"root=UUID=abc", "rw", "quiet"}
	carriedText := [3]string{"kargs", "as", "['root=UUID=abc', 'rw', 'quiet']"}

	for i, c := range []struct {
		in, want [][3]string
	}{
		// as ostree admin deploy --stage writes it: target + merge only
		{[][3]string{target, merge}, [][3]string{target, carriedText}},
		// with override kargs and overlay initrds, newer ostree's locked, an unknown key
		{[][3]string{target, merge, kargs, initrds, locked, unknown}, [][3]string{target, kargs, initrds, locked, unknown}},
		// kargs absent, other keys present
		{[][3]string{target, merge, initrds, unknown}, [][3]string{target, carriedText, initrds, unknown}},
		// merge-deployment not second
		{[][3]string{unknown, target, kargs, merge}, [][3]string{unknown, target, kargs}},
	} {
		in := g.Vardict(t, c.in)
		s, err := DecodeStagedState(in)
		if err != nil {
			t.Fatalf("case %d: decoding GLib's state: %v", i, err)
		}
		got, err := s.EncodeTakeover(carried)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		want := g.Vardict(t, c.want)
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d: ours %x\nGLib %x", i, got, want)
		}
		if _, normal := g.Read(t, "a{sv}", got); !normal {
			t.Fatalf("case %d: GLib says our state is not normal", i)
		}
		for _, key := range []string{"target", "merge-deployment", "kargs", "overlay-initrds", "locked", "x-future"} {
			before := g.Lookup(t, in, key)
			after := g.Lookup(t, got, key)
			switch {
			case key == "merge-deployment":
				if after != nil {
					t.Fatalf("case %d: GLib still finds merge-deployment: %v", i, after)
				}
			case key == "kargs" && before == nil:
				if after != "['root=UUID=abc', 'rw', 'quiet']" {
					t.Fatalf("case %d: GLib reads kargs %v", i, after)
				}
			case before != after:
				t.Fatalf("case %d: GLib reads %q as %v, was %v", i, key, after, before)
			}
		}
	}
}

// TestEncodeStagedLikeOstree builds a state file with our encoder the way
// ostree_sysroot_stage_tree_with_options does and checks GLib builds the
// same bytes from the same values and reads ours back as normal.
func TestEncodeStagedLikeOstree(t *testing.T) {
	g := gvarianttest.RequireGLib(t)
	dep := func(name, osname string) []byte {
		b, err := EncodeVardict([]VariantEntry{
			{Key: "name", Type: "s", Value: EncodeString(name)},
			{Key: "osname", Type: "s", Value: EncodeString(osname)},
			{Key: "bootcsum", Type: "s", Value: EncodeString(seedBoot)},
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ours, err := EncodeVardict([]VariantEntry{
		{Key: "target", Type: "a{sv}", Value: dep(seedCsum+".1", "rhcos")},
		{Key: "merge-deployment", Type: "a{sv}", Value: dep(seedCsum+".0", "rhcos")},
		{Key: "kargs", Type: "as", Value: EncodeStrings([]string{"a=b", strings.Repeat("long", 100)})},
		{Key: "overlay-initrds", Type: "as", Value: EncodeStrings(nil)},
		{Key: "locked", Type: "b", Value: EncodeBool(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := g.Vardict(t, [][3]string{
		{"target", "a{sv}", glibDeployment(seedCsum+".1", "rhcos")},
		{"merge-deployment", "a{sv}", glibDeployment(seedCsum+".0", "rhcos")},
		{"kargs", "as", "['a=b', '" + strings.Repeat("long", 100) + "']"},
		{"overlay-initrds", "as", "@as []"},
		{"locked", "b", "true"},
	})
	if !bytes.Equal(ours, want) {
		t.Fatalf("ours %x\nGLib %x", ours, want)
	}
	if _, normal := g.Read(t, "a{sv}", ours); !normal {
		t.Fatal("GLib: not normal")
	}
	s, err := DecodeStagedState(ours)
	if err != nil || !s.Locked || s.Merge == nil || len(s.Kargs) != 2 || s.OverlayInitrds == nil {
		t.Fatalf("%+v %v", s, err)
	}
}

func FuzzDecodeStagedState(f *testing.F) {
	fuzzSeeds(f, "*.gvariant")
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeStagedState(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("not ErrCorrupt: %v", err)
			}
			return
		}
		re, err := EncodeVardict(s.Entries)
		if err != nil || !bytes.Equal(re, b) {
			t.Fatalf("entries do not re-encode to the input: %v", err)
		}
		if s.Merge == nil {
			return
		}
		out, err := s.EncodeTakeover([]string{"root=x"})
		if err != nil {
			t.Fatalf("takeover of a valid state: %v", err)
		}
		n, err := DecodeStagedState(out)
		if err != nil || n.Merge != nil || n.Target != s.Target || !n.HasKargs {
			t.Fatalf("takeover result: %+v %v", n, err)
		}
		// Our own takeover, not rewritten, gives ostree's bytes back.
		if back, err := s.Reapply(n); err != nil || !bytes.Equal(back, b) {
			t.Fatalf("reapplying an unchanged takeover: %v", err)
		}
		// A rewrite that adds "locked" (lock-finalization) keeps the
		// target and merge deployment and the lock survives.
		if _, ok := LookupEntry(n.Entries, "locked"); ok {
			return
		}
		lk, err := EncodeVardict(append(slices.Clone(n.Entries), VariantEntry{Key: "locked", Type: "b", Value: EncodeBool(true)}))
		if err != nil {
			t.Fatal(err)
		}
		rw, err := DecodeStagedState(lk)
		if err != nil {
			t.Fatal(err)
		}
		re2, err := s.Reapply(rw)
		if err != nil {
			t.Fatalf("reapplying a lock: %v", err)
		}
		r, err := DecodeStagedState(re2)
		if err != nil || !r.Locked || r.Merge == nil || *r.Merge != *s.Merge || r.Target != s.Target {
			t.Fatalf("reapplied lock: %+v %v", r, err)
		}
	})
}

// TestReapply: ostree's rewrite of our takeover (a lock or unlock of
// finalization sets "locked" and may reorder keys) carries over to
// ostree's original, unknown keys included; nothing changed gives the
// original bytes.
func TestReapply(t *testing.T) {
	dep := func(name string) []byte {
		b, err := EncodeVardict([]VariantEntry{
			{Key: "name", Type: "s", Value: EncodeString(name)},
			{Key: "osname", Type: "s", Value: EncodeString("os")},
			{Key: "bootcsum", Type: "s", Value: EncodeString(seedBoot)},
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	target := VariantEntry{Key: "target", Type: "a{sv}", Value: dep(seedCsum + ".1")}
	merge := VariantEntry{Key: "merge-deployment", Type: "a{sv}", Value: dep(seedCsum + ".0")}
	extra, err := EncodeVardict([]VariantEntry{{Key: "x", Type: "s", Value: EncodeString("y")}})
	if err != nil {
		t.Fatal(err)
	}
	// a{ss} is not a{sv}, but a dictionary entry's value bytes are opaque here
	bootcfg := VariantEntry{Key: "bootconfig-extra", Type: "a{sv}", Value: extra}
	locked := VariantEntry{Key: "locked", Type: "b", Value: EncodeBool(true)}
	unlocked := VariantEntry{Key: "locked", Type: "b", Value: EncodeBool(false)}
	enc := func(es ...VariantEntry) *StagedState {
		b, err := EncodeVardict(es)
		if err != nil {
			t.Fatal(err)
		}
		s, err := DecodeStagedState(b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for i, c := range []struct {
		orig, disk, want []VariantEntry
	}{
		// nothing changed: ostree's own bytes
		{[]VariantEntry{target, merge, bootcfg}, []VariantEntry{target, bootcfg}, []VariantEntry{target, merge, bootcfg}},
		// lock-finalization: locked added, keys reordered, the kargs of the takeover dropped
		{[]VariantEntry{target, merge, bootcfg}, []VariantEntry{locked, bootcfg, target, {Key: "kargs", Type: "as", Value: EncodeStrings([]string{"rw"})}}, []VariantEntry{target, merge, bootcfg, locked}},
		// --unlock of a state staged locked
		{[]VariantEntry{target, merge, locked, bootcfg}, []VariantEntry{bootcfg, unlocked, target}, []VariantEntry{target, merge, unlocked, bootcfg}},
		// a key ostree dropped goes
		{[]VariantEntry{target, merge, bootcfg}, []VariantEntry{target}, []VariantEntry{target, merge}},
	} {
		o, d := enc(c.orig...), enc(c.disk...)
		got, err := o.Reapply(d)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		want := enc(c.want...).Raw
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d: got %x\nwant %x", i, got, want)
		}
		if i == 0 && !bytes.Equal(got, o.Raw) {
			t.Fatalf("case 0: not the original bytes")
		}
		// The takeover of the result keeps the unknown key and the lock.
		r := enc(c.want...)
		tk, err := r.EncodeTakeover([]string{})
		if err != nil {
			t.Fatal(err)
		}
		n, err := DecodeStagedState(tk)
		if err != nil || n.Locked != r.Locked {
			t.Fatalf("case %d: takeover %+v %v", i, n, err)
		}
		if _, ok := LookupEntry(n.Entries, "bootconfig-extra"); !ok && i != 3 {
			t.Fatalf("case %d: bootconfig-extra lost by the takeover", i)
		}
	}
	// Not a takeover of the original: refused.
	other := VariantEntry{Key: "target", Type: "a{sv}", Value: dep(seedCsum + ".2")}
	for _, d := range [][]VariantEntry{{target, merge}, {other}} {
		if _, err := enc(target, merge).Reapply(enc(d...)); err == nil {
			t.Fatalf("%v accepted", d)
		}
	}
}
