#!/usr/bin/python3
# Test oracle for the GVariant code in package ostree: GLib's own reader and
# writer (python3-gi). Reads one JSON request per line on stdin, writes one
# JSON reply per line on stdout.
#   {"op": "parse", "type": T, "text": S}    -> {"hex": serialized bytes of GLib's parse of S}
#   {"op": "read", "type": T, "hex": H}      -> {"print": g_variant_print(v, TRUE), "normal": is_normal_form}
#   {"op": "vardict", "entries": [[key, T, text], ...]}
#                                            -> {"hex": g_variant_builder a{sv} in that order}
#   {"op": "lookup", "hex": H, "key": K}     -> {"print": value of K printed, or null}
import json
import sys

from gi.repository import GLib


def read(t, h):
    return GLib.Variant.new_from_bytes(GLib.VariantType(t), GLib.Bytes(bytes.fromhex(h)), False)


for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    try:
        if op == "parse":
            v = GLib.Variant.parse(GLib.VariantType(req["type"]), req["text"], None, None)
            out = {"hex": v.get_data_as_bytes().get_data().hex()}
        elif op == "read":
            v = read(req["type"], req["hex"])
            out = {"print": v.print_(True), "normal": v.is_normal_form()}
        elif op == "vardict":
            b = GLib.VariantBuilder.new(GLib.VariantType("a{sv}"))
            for key, t, text in req["entries"]:
                val = GLib.Variant.parse(GLib.VariantType(t), text, None, None)
                b.add_value(GLib.Variant.new_dict_entry(GLib.Variant.new_string(key), GLib.Variant.new_variant(val)))
            out = {"hex": b.end().get_data_as_bytes().get_data().hex()}
        elif op == "lookup":
            v = read("a{sv}", req["hex"])
            d = GLib.VariantDict.new(v)
            x = d.lookup_value(req["key"], None)
            out = {"print": None if x is None else x.print_(True)}
        else:
            out = {"error": "unknown op " + op}
    except Exception as e:  # reported to the Go test, which fails
        out = {"error": str(e)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
