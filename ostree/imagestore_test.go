package ostree

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// The examples and cases of refescape.rs's own tests (bootc 534c76e).
func TestEscapeRefUpstreamCases(t *testing.T) {
	for _, v := range []string{"foo", "foo/bar/baz-blah/foo"} {
		if e, err := EscapeRef(v); err != nil || e != v {
			t.Errorf("EscapeRef(%q) = %q, %v; want unchanged", v, e, err)
		}
	}
	if e, _ := EscapeRef("localhost:5000/foo:latest"); e != "localhost_3A_5000/foo_3A_latest" {
		t.Errorf("got %q", e)
	}
	if e, _ := EscapeRef("registry:quay.io/coreos/fedora:latest"); e != "registry_3A_quay_2E_io/coreos/fedora_3A_latest" {
		t.Errorf("got %q", e)
	}
	for _, v := range []string{
		"localhost:5000/foo:latest", "fedora/x86_64/coreos", "/foo/bar/foo.oci-archive",
		"docker://quay.io/exampleos/blah:latest", "oci-archive:/path/to/foo.ociarchive",
		"/", "blah/", "/foo/", "a__b", "ü/😀", "x//y",
	} {
		e, err := EscapeRef(v)
		if err != nil {
			t.Fatalf("EscapeRef(%q): %v", v, err)
		}
		for _, c := range strings.Split("p/"+e, "/") {
			if !ValidRefFragment(c) {
				t.Errorf("EscapeRef(%q) = %q: component %q is no valid ref fragment", v, e, c)
			}
		}
		if u, err := UnescapeRef(e); err != nil || u != v {
			t.Errorf("UnescapeRef(EscapeRef(%q)=%q) = %q, %v", v, e, u, err)
		}
	}
	for _, bad := range []string{"", "a\x00b"} {
		if _, err := EscapeRef(bad); !errors.Is(err, ErrImageStore) {
			t.Errorf("EscapeRef(%q): %v", bad, err)
		}
	}
}

func TestUnescapeRefLeniencyAndRefusals(t *testing.T) {
	for in, want := range map[string]string{
		"a_":      "a",   // lone trailing '_' dropped
		"a_3A":    "a:",  // unterminated escape
		"a_+3A_b": "a:b", // Rust's from_str_radix takes a '+'
		"_1F600_": "😀",
	} {
		if got, err := UnescapeRef(in); err != nil || got != want {
			t.Errorf("UnescapeRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"a.b", "a_zz_", "a__3", "_D800_", "_110000_", "_-1_", "_++1_", "é", "a_ 1_"} {
		if bad == "a__3" {
			continue // "__" is '_' then "3": valid
		}
		if _, err := UnescapeRef(bad); !errors.Is(err, ErrImageStore) {
			t.Errorf("UnescapeRef(%q): want refusal, got %v", bad, err)
		}
	}
}

func TestImageReferences(t *testing.T) {
	for in, want := range map[string]string{
		"ostree-unverified-registry:quay.io/fedora/fedora-coreos:stable": "docker://quay.io/fedora/fedora-coreos:stable",
		"ostree-remote-registry:fedora:quay.io/x:1":                      "docker://quay.io/x:1",
		"ostree-remote-image:fedora:docker://quay.io/x:1":                "docker://quay.io/x:1",
		"ostree-image-signed:oci:/var/lib/img":                           "oci:/var/lib/img",
		"ostree-unverified-image:containers-storage:localhost/os":        "containers-storage:localhost/os",
	} {
		img, err := ParseOstreeImageReference(in)
		if err != nil || img.String() != want {
			t.Errorf("%q: %v %v, want %q", in, img, err, want)
		}
		// The image ref names it as ostree-ext's ref_for_image does, and
		// decodes back.
		name, err := ImageRefName(img)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ImageOfRef(name)
		if err != nil || back != img {
			t.Errorf("ImageOfRef(%q) = %v, %v; want %v", name, back, err, img)
		}
	}
	if n, _ := ImageRefName(ImageReference{"registry", "quay.io/a:b"}); n != "ostree/container/image/docker_3A__2F__2F_quay_2E_io/a_3A_b" {
		t.Errorf("got %q", n)
	}
	for _, bad := range []string{"quay.io/x", "ostree-unverified-registry:", "ostree-remote-registry:fedora", "bogus:registry:x", "ostree-image-signed:docker:quay.io/x", "ostree-image-signed:ftp:x"} {
		if _, err := ParseOstreeImageReference(bad); !errors.Is(err, ErrImageStore) {
			t.Errorf("%q: want refusal, got %v", bad, err)
		}
	}
}

func TestDecodeImageManifest(t *testing.T) {
	b, err := os.ReadFile("testdata/imagestore/manifest-valid.json")
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeImageManifest(b)
	if err != nil || len(m.Layers) != 2 || !strings.HasPrefix(m.Layers[0], "sha256:ca978112") {
		t.Fatalf("%+v %v", m, err)
	}
	for _, f := range []string{"manifest-bad-digest.json", "manifest-no-layers.json"} {
		b, _ := os.ReadFile(filepath.Join("testdata/imagestore", f))
		if _, err := DecodeImageManifest(b); !errors.Is(err, ErrImageStore) {
			t.Errorf("%s: want refusal, got %v", f, err)
		}
	}
	for _, d := range []string{"sha256:abc", "sha256:" + strings.Repeat("A", 64), "SHA256:" + strings.Repeat("a", 64), "a..b:x", ":x", "x:", "x:a/b"} {
		if ValidDigest(d) == nil {
			t.Errorf("ValidDigest(%q) accepted", d)
		}
	}
	for _, d := range []string{"sha256:" + strings.Repeat("a", 64), "sha512:" + strings.Repeat("0", 128), "blake3+x:Zz_=-"} {
		if err := ValidDigest(d); err != nil {
			t.Errorf("ValidDigest(%q): %v", d, err)
		}
	}
}

func imagestoreSeeds(f *testing.F, glob string) {
	names, _ := filepath.Glob(filepath.Join("testdata/imagestore", glob))
	for _, n := range names {
		if b, err := os.ReadFile(n); err == nil {
			f.Add(string(b))
		}
	}
}

// FuzzUnescapeRef: image and layer ref names read from refs/heads.
func FuzzUnescapeRef(f *testing.F) {
	imagestoreSeeds(f, "*.ref")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := UnescapeRef(s)
		if err != nil {
			if !errors.Is(err, ErrImageStore) {
				t.Fatalf("error without ErrImageStore: %v", err)
			}
			return
		}
		if !utf8.ValidString(u) {
			t.Fatalf("UnescapeRef(%q) = invalid UTF-8 %q", s, u)
		}
		// Whatever decodes escapes to a name that decodes the same.
		if u == "" || strings.ContainsRune(u, 0) {
			return
		}
		e, err := EscapeRef(u)
		if err != nil {
			t.Fatalf("EscapeRef(%q): %v", u, err)
		}
		if u2, err := UnescapeRef(e); err != nil || u2 != u {
			t.Fatalf("round trip of %q: %q, %v", u, u2, err)
		}
		if img, err := ImageOfRef(ImageRefPrefix + s); err == nil {
			if n, err := ImageRefName(img); err != nil || !strings.HasPrefix(n, ImageRefPrefix) {
				t.Fatalf("ImageRefName(%v) = %q, %v", img, n, err)
			}
		}
	})
}

// FuzzDecodeImageManifest: the ostree.manifest JSON of image commits.
func FuzzDecodeImageManifest(f *testing.F) {
	imagestoreSeeds(f, "*.json")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := DecodeImageManifest([]byte(s))
		if err != nil {
			if !errors.Is(err, ErrImageStore) {
				t.Fatalf("error without ErrImageStore: %v", err)
			}
			return
		}
		for _, l := range m.Layers {
			if ValidDigest(l) != nil || strings.Contains(l, "/") {
				t.Fatalf("accepted layer digest %q", l)
			}
		}
	})
}

// FuzzOriginImage: [origin] container-image-reference of deployment origins.
func FuzzOriginImage(f *testing.F) {
	for _, s := range []string{
		"[origin]\ncontainer-image-reference=ostree-unverified-registry:quay.io/x:1\n",
		"[origin]\ncontainer-image-reference=ostree-remote-image:r:docker://q/x\n",
		"[origin]\ncontainer-image-reference=ostree-image-signed:oci:/a\\sb\n",
		"[origin]\nrefspec=r:x\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kf, err := ParseKeyFile([]byte(s))
		if err != nil {
			return
		}
		d := &Deployment{OSName: "os", OriginFile: kf}
		img, ok, err := d.ContainerImage()
		if err != nil {
			if !errors.Is(err, ErrImageStore) {
				t.Fatalf("error without ErrImageStore: %v", err)
			}
			return
		}
		if ok {
			if _, known := transportDisplay[img.Transport]; !known || img.Name == "" {
				t.Fatalf("accepted %+v", img)
			}
		}
	})
}
