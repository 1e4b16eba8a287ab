#!/bin/sh
# build.sh SUITE [DIR]: a Debian root of SUITE (bookworm, trixie, ...) with
# ostree, bubblewrap and systemd, for the tests' second oracle (its /usr is
# bound into the booted namespace) and for the systemd boot tests. Built once
# into DIR (default $OSTREE_PREFINALIZE_ROOTS/SUITE, itself defaulting to
# /var/cache/ostree-prefinalize/roots), atomically: a finished root has a
# .complete marker, a half-built one is thrown away and rebuilt.
#
# The Debian mirror is the one this machine's own apt sources name (never a
# host name written here), so CI and developer machines use whatever mirror
# they are configured with.
set -eu
suite=${1:?usage: build.sh SUITE [DIR]}
base=${OSTREE_PREFINALIZE_ROOTS:-/var/cache/ostree-prefinalize/roots}
dir=${2:-$base/$suite}
# ostree-boot carries ostree-finalize-staged.service (Debian splits it from
# ostree), which the systemd boot tests run.
pkgs=ostree,ostree-boot,bubblewrap,systemd,systemd-sysv,dbus,udev,e2fsprogs,attr
# .complete holds the package list the root was built with: a root built
# with another list is rebuilt.
if [ -e "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "$pkgs" ]; then
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "build.sh: run as root (debootstrap)" >&2
	exit 1
fi
mirror=${OSTREE_PREFINALIZE_MIRROR:-}
if [ -z "$mirror" ]; then
	# deb822 sources first, then one-line sources.
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -e "$f" ] || continue
		mirror=$(awk 'tolower($1)=="uris:" && $2 ~ /\/debian\/?$/ {print $2; exit}' "$f")
		[ -n "$mirror" ] && break
	done
fi
if [ -z "$mirror" ]; then
	mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\// && $i ~ /\/debian\/?$/) {print $i; exit}}')
fi
if [ -z "$mirror" ]; then
	echo "build.sh: no Debian mirror found in /etc/apt/sources.list*; set OSTREE_PREFINALIZE_MIRROR" >&2
	exit 1
fi
command -v debootstrap >/dev/null || {
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
}
tmp="$dir.tmp"
rm -rf "$tmp"
mkdir -p "$(dirname "$dir")"
echo "build.sh: debootstrap $suite from $mirror into $dir (once)" >&2
# A suite newer than this debootstrap (forky on bookworm's) uses sid's
# script, which every newer suite's script is a link to.
script=
[ -e "/usr/share/debootstrap/scripts/$suite" ] || script=/usr/share/debootstrap/scripts/sid
if ! debootstrap --variant=minbase --include="$pkgs" "$suite" "$tmp" "$mirror" $script >"$tmp.log" 2>&1; then
	tail -20 "$tmp.log" >&2
	exit 1
fi
rm -f "$tmp.log"
chroot "$tmp" ostree --version >"$tmp/.ostree-version"
echo "$pkgs" >"$tmp/.complete"
rm -rf "$dir"
mv "$tmp" "$dir"
