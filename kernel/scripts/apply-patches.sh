#!/bin/sh
# apply-patches.sh [--list] DIR: apply DIR/series in order, quilt style (-p1 unless the
# series line says otherwise), strictly: no fuzz, no reversed patches. A patch that does not
# apply stops everything, naming the patch and showing the rejected hunks.
set -eu
list=""
if [ "$1" = "--list" ]; then list=1; shift; fi
dir=$1
[ -f "$dir/series" ] || { echo "error: $dir/series not found" >&2; exit 1; }
grep -v '^[[:space:]]*\(#\|$\)' "$dir/series" | while read -r name opts; do
	patch="$dir/$name"
	if [ -n "$list" ]; then echo "$patch"; continue; fi
	[ -f "$patch" ] || { echo "error: patch $name is listed in $dir/series but missing" >&2; exit 1; }
	strip=-p1
	case "${opts:-}" in -p*) strip=$opts ;; esac
	rej=$(mktemp)
	if ! out=$(patch "$strip" -N -F0 --no-backup-if-mismatch -r "$rej" -i "$patch" 2>&1); then
		echo "$out"
		echo "error: patch $name does not apply cleanly; rejected hunks:"
		cat "$rej"
		exit 1
	fi
	echo "applied $name"
	rm -f "$rej"
done
