#!/usr/bin/python3
# Writes structurally bad, but GVariant-normal, objects built with GLib into
# the directory given as argv[1]: each is what the named ostree check rejects.
import os
import struct
import sys

from gi.repository import GLib

out = sys.argv[1]
V = GLib.Variant


def be32(x):
    return struct.unpack("<I", struct.pack(">I", x))[0]


def be64(x):
    return struct.unpack("<Q", struct.pack(">Q", x))[0]


def ay(b):
    return V.new_from_bytes(GLib.VariantType("ay"), GLib.Bytes(bytes(b)), True)


def save(name, v):
    with open(os.path.join(out, name), "wb") as f:
        f.write(v.get_data_as_bytes().get_data())


C = bytes(range(32))


def commit(md=None, parent=b"", tree=C, meta=C):
    return V.new_tuple(V("a{sv}", md or {"version": V("s", "1")}), ay(parent), V("a(say)", []),
                       V("s", "subj"), V("s", "body"), V("t", be64(1700000000)), ay(tree), ay(meta))


save("bad-commit-tree31.commit", commit(tree=C[:31]))
save("bad-commit-parent5.commit", commit(parent=C[:5]))
save("bad-commit-emptykey.commit", commit(md={"": V("s", "x")}))


def dirtree(files, dirs):
    return V.new_tuple(V.new_array(GLib.VariantType("(say)"), [V.new_tuple(V("s", n), ay(c)) for n, c in files]),
                       V.new_array(GLib.VariantType("(sayay)"), [V.new_tuple(V("s", n), ay(t), ay(m)) for n, t, m in dirs]))


save("bad-dirtree-dotdot.dirtree", dirtree([("ok", C)], [("..", C, C)]))
save("bad-dirtree-dot.dirtree", dirtree([(".", C)], []))
save("bad-dirtree-slash.dirtree", dirtree([("a/b", C)], []))
save("bad-dirtree-empty.dirtree", dirtree([("", C)], []))
save("bad-dirtree-meta33.dirtree", dirtree([], [("d", C, C + b"x")]))


def dirmeta(mode, xattrs=()):
    return V.new_tuple(V("u", 0), V("u", 0), V("u", be32(mode)),
                       V.new_array(GLib.VariantType("(ayay)"), [V.new_tuple(ay(n), ay(v)) for n, v in xattrs]))


save("bad-dirmeta-notdir.dirmeta", dirmeta(0o100644))
save("bad-dirmeta-modebits.dirmeta", dirmeta(0o40755 | 0o200000))
save("bad-dirmeta-xattrnonul.dirmeta", dirmeta(0o40755, [(b"user.x", b"v")]))

CS = "0123456789abcdef" * 4


def dep(name, osname="os", boot=CS):
    return V("a{sv}", {"name": V("s", name), "osname": V("s", osname), "bootcsum": V("s", boot)})


def staged(*entries):
    b = GLib.VariantBuilder.new(GLib.VariantType("a{sv}"))
    for k, v in entries:
        b.add_value(V.new_dict_entry(V("s", k), V("v", v)))
    return b.end()


good_t = ("target", dep(CS + ".1"))
good_m = ("merge-deployment", dep(CS + ".0"))
save("bad-staged-notarget.gvariant", staged(good_m))
save("bad-staged-kargs-type.gvariant", staged(good_t, good_m, ("kargs", V("s", "quiet"))))
save("bad-staged-shortcsum.gvariant", staged(("target", dep("abc.1")), good_m))
save("bad-staged-serial.gvariant", staged(("target", dep(CS + ".99999999999")), good_m))
save("bad-staged-noserial.gvariant", staged(("target", dep(CS)), good_m))
save("bad-staged-dupkey.gvariant", staged(good_t, good_m, good_m))
save("bad-staged-osname.gvariant", staged(("target", dep(CS + ".1", osname="../x")), good_m))
save("bad-staged-noosname.gvariant", staged(("target", V("a{sv}", {"name": V("s", CS + ".1"), "bootcsum": V("s", CS)})), good_m))
save("bad-staged-locked-type.gvariant", staged(good_t, ("locked", V("s", "true"))))
