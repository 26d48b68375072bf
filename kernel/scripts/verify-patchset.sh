#!/bin/sh
# verify-patchset.sh ARCHIVE SIGNATURE KEYDIR: refuse the archive unless SIGNATURE is a
# valid detached OpenPGP signature over it by a key pinned in KEYDIR (*.asc or *.gpg).
set -eu
archive=$1 sig=$2 keydir=$3
[ -e "$archive" ] || { echo "error: the patch archive is missing (input 'patchset')" >&2; exit 1; }
[ -e "$sig" ] || { echo "error: the patch archive has no signature (input 'patchset.asc'); refusing it" >&2; exit 1; }
keyring=$(mktemp -d)/keys.gpg
found=0
for key in "$keydir"/*.asc "$keydir"/*.gpg; do
	[ -e "$key" ] || continue
	case "$key" in
	*.asc) sed -n '/^-----BEGIN PGP PUBLIC KEY BLOCK-----/,/^-----END/p' "$key" | \
		grep -v '^-----\|^[A-Za-z-]*: \|^$\|^=' | base64 -d >> "$keyring" ;;
	*) cat "$key" >> "$keyring" ;;
	esac
	found=1
done
[ "$found" -eq 1 ] || { echo "error: no pinned keys in $keydir; refusing the patch archive" >&2; exit 1; }
if ! gpgv --keyring "$keyring" "$sig" "$archive" 2>&1; then
	echo "error: BAD signature on the patch archive; refusing it" >&2
	exit 1
fi
echo "patch archive: good signature by a pinned key"
