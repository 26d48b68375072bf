#!/bin/sh
# Record in a tree made from a package without dpkg (a system extension, an image layer) what
# it holds of that package, for its SBOM and for `verify`:
#
#   sh record.sh ROOT DEB LIST
#
# writes ROOT/usr/share/mlos-repro/packages/NAME/: `control` (the package's control data),
# `deb.sha256` (the .deb's sha256 and file name) and `list` (moved from LIST: the tree's paths
# that came from the package, one per line, sorted).
set -eu
root=$1 deb=$2 list=$3
name=$(dpkg-deb --field "$deb" Package)
record="$root/usr/share/mlos-repro/packages/$name"
mkdir -p "$record"
LC_ALL=C sort "$list" >"$record/list"
rm -f "$list"
dpkg-deb --field "$deb" >"$record/control"
(cd "$(dirname "$deb")" && sha256sum "$(basename "$deb")") >"$record/deb.sha256"
