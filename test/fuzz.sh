#!/bin/sh
# Runs every Fuzz target in the module for the given time each (default
# 60s); an optional second argument is an extended regexp of target names
# to run (e.g. 'FuzzParseRef|FuzzVariant').
#
# A target fails when go test -fuzz writes a failing input into the
# package's testdata/fuzz/<target>/ (or fails otherwise). A non-zero exit
# that writes no input and only says "context deadline exceeded" is Go's
# fuzzing coordinator racing its own -fuzztime deadline (golang/go#75804,
# fixed in Go 1.27), not a finding: it is reported as such, the target is
# run once more, and the run goes on. Every target runs; the exit status
# is 1 if any failed.
#
# Minimizing a new interesting input is capped at FUZZMINIMIZE (default
# 5s, Go's own default is 60s): the store targets take whole bbolt files
# of 100+ KiB, and with Go's default they spent nearly all of a 5-minute
# run minimizing (under 600 executions in 5 minutes; 10x that with the cap).
set -u
t=${1:-60s}
minimize=${FUZZMINIMIZE:-5s}
only=${2:-.}
cd "$(dirname "$0")/.."
failed=""
log=$(mktemp)
trap 'rm -f "$log"' EXIT
listing() { ls "$1" 2>/dev/null | sort; }
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u | grep -E "$only"); do
		corpus="$dir/testdata/fuzz/$f"
		for attempt in 1 2; do
			echo "== $pkg $f ($t)"
			before=$(listing "$corpus")
			if go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" -fuzzminimizetime "$minimize" "$pkg" >"$log" 2>&1; then
				tail -n 3 "$log"
				break
			fi
			cat "$log"
			if [ "$(listing "$corpus")" = "$before" ] && grep -q '^    context deadline exceeded$' "$log" &&
				! grep -q -e 'Failing input written' -e '^panic' "$log"; then
				echo "== $f: no failing input, only the fuzzing coordinator's end-of-time race (golang/go#75804)"
				[ "$attempt" = 1 ] && continue
				break
			fi
			echo "== $f: FAILED"
			failed="$failed $f"
			break
		done
	done
done
if [ -n "$failed" ]; then
	echo "fuzz: failing targets:$failed"
	exit 1
fi
echo "fuzz: every target passed"
