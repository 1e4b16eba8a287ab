package ostree

import (
	"errors"
	"testing"
)

func bootedBytes(t testing.TB, entries ...VariantEntry) []byte {
	t.Helper()
	b, err := EncodeVardict(entries)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeBootedMeta(t *testing.T) {
	devino := VariantEntry{Key: "backing-root-device-inode", Type: "(tt)", Value: make([]byte, 16)}
	for _, c := range []struct {
		name      string
		b         []byte
		transient string
		composefs bool
		fails     bool
	}{
		{"empty file (older ostree, dracut)", nil, "", false, false},
		{"plain", bootedBytes(t, devino), "", false, false},
		{"transient etc", bootedBytes(t, devino, VariantEntry{Key: "transient-etc", Type: "s", Value: EncodeString("/run/ostree/transient-etc.Ab12Cd")}), "/run/ostree/transient-etc.Ab12Cd", false, false},
		{"composefs", bootedBytes(t, VariantEntry{Key: "composefs", Type: "b", Value: EncodeBool(true)}, devino), "", true, false},
		{"transient etc of the wrong type", bootedBytes(t, VariantEntry{Key: "transient-etc", Type: "b", Value: EncodeBool(true)}), "", false, true},
		{"garbage", []byte("not a variant at all"), "", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := DecodeBootedMeta(c.b)
			if c.fails {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("want ErrCorrupt, got %+v, %v", m, err)
				}
				return
			}
			if err != nil || m.TransientEtc != c.transient || m.Composefs != c.composefs {
				t.Fatalf("got %+v, %v", m, err)
			}
		})
	}
}

// FuzzDecodeBootedMeta: any bytes give a result or an ErrCorrupt error.
func FuzzDecodeBootedMeta(f *testing.F) {
	f.Add([]byte{})
	f.Add(bootedBytes(f, VariantEntry{Key: "transient-etc", Type: "s", Value: EncodeString("/run/ostree/transient-etc.x")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := DecodeBootedMeta(b); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error without ErrCorrupt: %v", err)
		}
	})
}
