package gvariant

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ostree-prefinalize/ostree-prefinalize/ostree/gvariant/gvarianttest"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	return gvarianttest.ReadFile(t, filepath.Join("..", "testdata", name))
}

func wantCorrupt(t *testing.T, err error, substr string) {
	t.Helper()
	gvarianttest.WantIs(t, err, ErrCorrupt, substr)
}

func TestParseType(t *testing.T) {
	good := map[string][2]int{ // type: align mask, fixed size
		"b": {0, 1}, "y": {0, 1}, "n": {1, 2}, "u": {3, 4}, "t": {7, 8}, "d": {7, 8}, "h": {3, 4},
		"s": {0, 0}, "v": {7, 0}, "ay": {0, 0}, "as": {0, 0}, "a{sv}": {7, 0}, "()": {0, 1},
		"(yu)": {3, 8}, "(uy)": {3, 8}, "(ty)": {7, 16}, "{yy}": {0, 2}, "(uuua(ayay))": {3, 0},
		"mu": {3, 0}, "(a{sv}aya(say)sstayay)": {7, 0}, "((y)(u))": {3, 8},
	}
	for s, w := range good {
		ty, err := lookupType(s)
		if err != nil {
			t.Errorf("%q: %v", s, err)
			continue
		}
		if ty.align != w[0] || ty.fixed != w[1] || ty.str != s {
			t.Errorf("%q: align %d fixed %d str %q, want %d %d", s, ty.align, ty.fixed, ty.str, w[0], w[1])
		}
	}
	for _, s := range []string{"", "a", "(", "(u", "{sv", "{vs}", "{s}", "{svs}", "uu", "r", "*", "?", "a{?*}", "z",
		strings.Repeat("a", 200) + "y", strings.Repeat("(", 130) + strings.Repeat(")", 130)} {
		if err := ValidType(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// Hand-made serializations from the GVariant specification's examples.
func TestDecodeSpecExamples(t *testing.T) {
	// "as" ['i', 'can', 'has', 'strings?']
	as := []byte("i\x00can\x00has\x00strings?\x00\x02\x06\x0a\x13")
	v, err := NewVariant("as", as)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := v.Strings()
	if err != nil || strings.Join(ss, ",") != "i,can,has,strings?" {
		t.Fatalf("as: %q %v", ss, err)
	}
	// "(si)" ('foo', -1)
	v, _ = NewVariant("(si)", []byte("foo\x00\xff\xff\xff\xff\x04"))
	if err := v.Normal(); err != nil {
		t.Fatal(err)
	}
	f, _ := v.Fields(nil)
	s, _ := f[0].Str()
	i, _ := f[1].Int32()
	if s != "foo" || i != -1 {
		t.Fatalf("(si): %q %d", s, i)
	}
	// "a{sv}" {'key': <int32 1>} ... simplified to one entry with a string
	d, err := DecodeVardict([]byte("k\x00\x00\x00\x00\x00\x00\x00v\x00\x00s\x02\x0d"))
	if err != nil || len(d) != 1 || d[0].Key != "k" || d[0].Type != "s" || string(d[0].Value) != "v\x00" {
		t.Fatalf("a{sv}: %+v %v", d, err)
	}
	// variant holding a uint32
	v, _ = NewVariant("v", []byte{7, 0, 0, 0, 0, 'u'})
	c, err := v.Unbox()
	if err != nil {
		t.Fatal(err)
	}
	u, err := c.Uint32()
	if err != nil || u != 7 {
		t.Fatalf("v: %d %v", u, err)
	}
}

func TestNotNormalRejected(t *testing.T) {
	for _, c := range []struct {
		typ  string
		data string
		msg  string
	}{
		{"s", "abc", "terminating zero"},
		{"s", "", "terminating zero"},
		{"s", "a\x00b\x00", "zero byte inside"},
		{"s", "\xff\x00", "UTF-8"},
		{"o", "/a//b\x00", "object path"},
		{"g", "a{\x00", "signature"},
		{"b", "\x02", "boolean"},
		{"u", "\x01\x02\x03", "fixed-size value of 3 bytes"},
		{"as", "a\x00\x09", "beyond"},                 // last offset past the end
		{"as", "a\x00b\x00\x05\x04", "element spans"}, // first element ends past the data
		{"as", "a\x00b", "beyond"},
		{"as", "a\x00\x03", "no framing offsets"},
		{"as", "a\x00b\x00\x02\x04", ""},
		{"ay", "", ""},
		{"at", "\x01\x02", "not a multiple"},
		{"(yu)", "\x01\x00\x00\x00\x02\x00\x00", "fixed-size"},
		{"(yu)", "\x01\x05\x00\x00\x02\x00\x00\x00", "padding"},
		{"(uy)", "\x01\x00\x00\x00\x02\x09\x00\x00", "trailing padding"},
		{"()", "\x01", "unit tuple"},
		{"(ss)", "a\x00b\x00\x09", "member spans"},
		{"(ss)", "a\x00\x00b\x00\x02", "zero byte inside"},
		{"(sy)", "a\x00\x01\x05", "outside"},
		{"(sy)", "a\x00\x01\x02\x02", "unused bytes"},
		{"v", "", "empty variant"},
		{"v", "\x01\x02u", "no zero byte"},
		{"v", "\x01\x02\x03\x00u", "fixed-size value of 3 bytes"},
		{"v", "\x00uu", "more than one type"},
		{"v", "\x00", "incomplete"},
		{"mu", "\x01\x00", "neither empty"},
		{"ms", "a", "trailing zero"},
		{"a{sv}", "k\x00\x00\x00\x00\x00\x00\x00v\x00\x00s\x02\x20", "beyond"},
		{"a{sv}", "k\x00\x00\x00\x00\x00\x00\x00v\x00\x00s\x02\x0d", ""},
		{"a{sv}", "k\x00\x00\x00\x00\x01\x00\x00v\x00\x00s\x02\x0d", "padding"},
		// one 254-byte string framed with a 2-byte offset (total 256) where
		// a 1-byte offset fits (total 255): not minimal
		{"as", strings.Repeat("z", 253) + "\x00\xfe\x00", "wider than needed"},
		{"as", strings.Repeat("z", 253) + "\x00\xfe", ""},
	} {
		v, err := NewVariant(c.typ, []byte(c.data))
		if err == nil {
			err = v.Normal()
		}
		if c.msg == "" {
			if err != nil {
				t.Errorf("%s %q: %v", c.typ, c.data, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s %q: accepted, want %q", c.typ, c.data, c.msg)
			continue
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s %q: error %q, want %q wrapping ErrCorrupt", c.typ, c.data, err, c.msg)
		}
	}
}

func TestIndexOutOfOrder(t *testing.T) {
	v, err := NewVariant("as", []byte("a\x00b\x00c\x00\x04\x02\x06")) // offsets 4, 2, 6
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Index(1)
	wantCorrupt(t, err, "element spans [4,2)")
	_, err = v.Index(3)
	wantCorrupt(t, err, "out of range")
	_, err = v.Index(-1)
	wantCorrupt(t, err, "out of range")
}

func TestDepthLimit(t *testing.T) {
	// 200 nested variants each holding the next: GLib refuses past depth 128.
	data := []byte{}
	data = append(data, 1, 0, 'y')
	for i := 0; i < 200; i++ {
		data = append(data, 0, 'v')
	}
	v, err := NewVariant("v", data)
	if err != nil {
		t.Fatal(err)
	}
	wantCorrupt(t, v.Normal(), "deeper than 128")
}

func TestVariantErrorPath(t *testing.T) {
	d := []byte("k\x00\x00\x00\x00\x00\x00\x00\xff\x00\x00s\x02\x0d") // value string is not UTF-8
	_, err := DecodeVardict(d)
	wantCorrupt(t, err, "at [0][1]<v>")
	var ve *VariantError
	if !errors.As(err, &ve) || ve.Type != "s" {
		t.Fatalf("%#v", err)
	}
}

func TestEncodeVardictRoundTrip(t *testing.T) {
	for _, name := range []string{"seed-staged-all-keys.gvariant", "seed-staged-minimal.gvariant"} {
		b := readTestdata(t, name)
		entries, err := DecodeVardict(b)
		if err != nil {
			t.Fatal(err)
		}
		out, err := EncodeVardict(entries)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("%s: re-encoding differs\n got %x\nwant %x", name, out, b)
		}
	}
	if out, err := EncodeVardict(nil); err != nil || len(out) != 0 {
		t.Fatalf("empty: %x %v", out, err)
	}
	if _, err := EncodeVardict([]VariantEntry{{Key: "a", Type: "s", Value: []byte("x")}}); err == nil {
		t.Fatal("non-normal value accepted")
	}
	if _, err := EncodeVardict([]VariantEntry{{Key: "a", Type: "b", Value: []byte{1}}, {Key: "a", Type: "b", Value: []byte{0}}}); err == nil {
		t.Fatal("duplicate key accepted")
	}
}

// TestEncodeMatchesGLib builds dictionaries of every size class (1, 2 and
// 4-byte framing offsets) with GLib and with EncodeVardict from the same
// entries, and requires identical bytes, and that GLib reads ours as normal.
func TestEncodeMatchesGLib(t *testing.T) {
	g := gvarianttest.RequireGLib(t)
	big := strings.Repeat("x", 300)
	huge := strings.Repeat("y", 70000)
	cases := [][][3]string{
		{},
		{{"a", "s", "'b'"}},
		{{"target", "a{sv}", "{'name': <'n'>, 'osname': <'o'>}"}, {"kargs", "as", "['a', 'bb', '']"}, {"locked", "b", "true"}},
		{{"k", "s", "'" + big + "'"}, {"t", "t", "uint64 5"}, {"m", "ms", "just 'x'"}, {"n", "mu", "nothing"}},
		{{"k", "s", "'" + huge + "'"}, {"tuple", "(yta{sv})", "(byte 1, uint64 2, {'x': <@ay [1,2]>})"}},
		{{"y", "y", "byte 3"}, {"ay", "ay", "[byte 1, 2, 3]"}, {"v", "v", "<<'nested'>>"}, {"d", "d", "1.5"}, {"o", "o", "'/a/b'"}, {"g", "g", "'a{sv}'"}},
	}
	for i, c := range cases {
		want := g.Vardict(t, c)
		var entries []VariantEntry
		for _, e := range c {
			entries = append(entries, VariantEntry{Key: e[0], Type: e[1], Value: g.Serialize(t, e[1], e[2])})
		}
		got, err := EncodeVardict(entries)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("case %d: ours %x\nglib %x", i, got, want)
		}
		if _, normal := g.Read(t, "a{sv}", got); !normal {
			t.Fatalf("case %d: GLib says our encoding is not normal", i)
		}
		back, err := DecodeVardict(want)
		if err != nil {
			t.Fatalf("case %d: decoding GLib's bytes: %v", i, err)
		}
		for j := range back {
			if back[j].Key != entries[j].Key || back[j].Type != entries[j].Type || !bytes.Equal(back[j].Value, entries[j].Value) {
				t.Fatalf("case %d entry %d: %+v vs %+v", i, j, back[j], entries[j])
			}
		}
	}
}

// TestNormalAgreesWithGLib checks our verdict on hand-broken data against
// GLib's g_variant_is_normal_form: whatever GLib calls normal we accept and
// whatever it does not we reject.
func TestNormalAgreesWithGLib(t *testing.T) {
	g := gvarianttest.RequireGLib(t)
	base := g.Serialize(t, "(a{sv}aya(say)sstayay)",
		"({'version': <'1'>, 'x': <(byte 1, uint64 2)>}, @ay [], [('r', [byte 1,2])], 'subject', 'body', uint64 7, [byte 1,2,3], @ay [])")
	ok := 0
	for i := range base {
		for _, x := range []byte{0, 1, 0xff, base[i] + 1} {
			m := bytes.Clone(base)
			m[i] = x
			_, glibNormal := g.Read(t, "(a{sv}aya(say)sstayay)", m)
			v, err := NewVariant("(a{sv}aya(say)sstayay)", m)
			if err == nil {
				err = v.Normal()
			}
			if glibNormal != (err == nil) {
				t.Errorf("byte %d = %#x: GLib normal=%v, ours: %v", i, x, glibNormal, err)
			}
			if glibNormal {
				ok++
			}
		}
	}
	t.Logf("%d single-byte mutations, %d normal", 4*len(base), ok)
}

func FuzzVariant(f *testing.F) {
	types := []string{"a{sv}", "(a{sv}aya(say)sstayay)", "(a(say)a(sayay))", "(uuua(ayay))", "v", "as", "(yu)", "m(sv)", "a(tas)", "((y)s(ms))"}
	for _, name := range []string{"seed-staged-all-keys.gvariant", "seed-staged-minimal.gvariant"} {
		f.Add(uint8(0), readTestdata(f, name))
	}
	f.Add(uint8(1), readTestdata(f, "seed-commit-parent.commit"))
	f.Add(uint8(2), readTestdata(f, "seed-root.dirtree"))
	f.Add(uint8(3), readTestdata(f, "seed-xattr.dirmeta"))
	f.Add(uint8(4), []byte("\x01\x00\x00\x00\x00(yu)"))
	f.Add(uint8(5), []byte("i\x00can\x00has\x00strings?\x00\x02\x06\x0a\x13"))
	f.Fuzz(func(t *testing.T, ti uint8, data []byte) {
		typ := types[int(ti)%len(types)]
		v, err := NewVariant(typ, data)
		if err != nil {
			return
		}
		if err := v.Normal(); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		// Normal form is unique, so a normal a{sv} re-encodes to the same bytes.
		if typ == "a{sv}" {
			entries, err := DecodeVardict(data)
			if err != nil {
				if strings.Contains(err.Error(), "duplicate key") {
					return
				}
				t.Fatalf("normal a{sv} does not decode: %v", err)
			}
			out, err := EncodeVardict(entries)
			if err != nil || !bytes.Equal(out, data) {
				t.Fatalf("re-encoding: %v\n got %x\nwant %x", err, out, data)
			}
		}
	})
}
