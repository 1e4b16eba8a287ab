#!/bin/sh
# Regenerates the seed objects in this directory with the real ostree
# command and GLib (python3-gi). The tests do not depend on the exact bytes;
# they rebuild their own objects with ostree and compare against it. These
# files seed the fuzz targets and the offline unit tests.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cd "$t"
mkdir -p D/sub/deeper D/empty
echo hello >D/a
echo x >D/sub/b
ln -s a D/link
chmod 0750 D/sub
/usr/bin/python3 -c 'import os; os.setxattr("D/sub", "user.seed", b"val\x00ue")'
ostree --repo=R init --mode=bare-user-only
c1=$(ostree --repo=R commit -b seed --tree=dir=D --owner-uid=0 --owner-gid=0 \
	--timestamp=2024-01-02T03:04:05Z -s 'first subject' -m 'first body' --add-metadata-string=version=1.0)
echo more >D/sub/deeper/c
c2=$(ostree --repo=R commit -b seed --tree=dir=D --owner-uid=0 --owner-gid=0 \
	--timestamp=2024-02-03T04:05:06Z -s 'second subject' -m 'second body' --add-metadata-string=version=2.0)
obj() { echo "R/objects/$(echo "$1" | cut -c1-2)/$(echo "$1" | cut -c3-).$2"; }
cp "$(obj "$c1" commit)" "$here/seed-commit-noparent.commit"
cp "$(obj "$c2" commit)" "$here/seed-commit-parent.commit"
root=$(ostree --repo=R ls -d -C seed / | awk '{print $5}')
cp "$(obj "$root" dirtree)" "$here/seed-root.dirtree"
empty=$(ostree --repo=R ls -d -C seed /empty | awk '{print $5}')
cp "$(obj "$empty" dirtree)" "$here/seed-empty.dirtree"
rootmeta=$(ostree --repo=R ls -d -C seed / | awk '{print $6}')
cp "$(obj "$rootmeta" dirmeta)" "$here/seed-plain.dirmeta"
ostree --repo=A init --mode=archive
ostree --repo=A commit -b seed --tree=dir=D -s x >/dev/null
submeta=$(ostree --repo=A ls -d -C seed /sub | awk '{print $6}')
cp "$(obj "$submeta" dirmeta | sed 's/^R/A/')" "$here/seed-xattr.dirmeta"
csum=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
boot=fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210
dep() { echo "{'name': <'$1'>, 'osname': <'$2'>, 'bootcsum': <'$boot'>}"; }
{
	printf '{"op":"vardict","entries":[["target","a{sv}","%s"],["merge-deployment","a{sv}","%s"],["kargs","as","[%s]"],["overlay-initrds","as","[%s]"],["locked","b","true"],["x-unknown-future-key","(ut)","(7, 8)"]]}\n' \
		"$(dep "$csum.1" fedora-coreos)" "$(dep "$csum.0" fedora-coreos)" \
		"'root=UUID=1234', 'rw', 'quiet splash'" "'$boot'"
	printf '{"op":"vardict","entries":[["target","a{sv}","%s"],["merge-deployment","a{sv}","%s"]]}\n' \
		"$(dep "$csum.1" os)" "$(dep "$csum.0" os)"
} | /usr/bin/python3 "$here/../gvariant/gvarianttest/glibvariant.py" | while read -r line; do
	n=$((${n:-0} + 1))
	hex=$(echo "$line" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["hex"])')
	case $n in
	1) f=seed-staged-all-keys.gvariant ;;
	2) f=seed-staged-minimal.gvariant ;;
	esac
	echo "$hex" | /usr/bin/python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read().strip()))' >"$here/$f"
done
/usr/bin/python3 "$here/regen_bad.py" "$here"
ls -l "$here"
