#!/bin/sh
# make demo: the whole ostree-prefinalize lifecycle on a throwaway ostree
# system (built in a temporary directory, removed at the end), compared with
# ostree alone. Root; needs `make deps` (the Makefile's demo target runs it).
set -e
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "demo: run as root (it boots a throwaway ostree system in private namespaces)" >&2
	exit 1
fi
GO=${GO:-go}
[ -x bin/ostree-prefinalize ] || $GO build -o bin/ostree-prefinalize ./cmd/ostree-prefinalize
$GO build -o bin/demo ./test/demo
exec bin/demo -bin bin/ostree-prefinalize "$@"
