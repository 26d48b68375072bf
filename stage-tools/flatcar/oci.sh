#!/bin/sh
# OCI images of MLOS, built without a container engine, run as the `oci` stage (privileged:
# mmdebstrap installs as root, with real file ownership):
#
#   sh /in/tools/oci.sh
#
# Inputs: /in/debian (a local mirror of the locked Debian packages, env:target) and
# /in/packages/debs (the `packages` stage). Setting: MLOS_SUITE (bookworm).
#
# Outputs, each an OCI image layout directory and the same files as an oci-archive tar
# (stage-tools/flatcar/ocilayout.py writes both):
#   - mlos-core, mlos-core.oci.tar: the MLOS host agent (mlos-core, from mlos-services) on a
#     Debian minbase: two layers, the base and the agent's files with their record
#     (record.sh: which package they came from, for the SBOM);
#   - mlos-toolchain, mlos-toolchain.oci.tar: the MLOS toolchain (mlos-toolchain, installed by
#     dpkg, and what it depends on, by apt) on a Debian minbase, one layer.
# Each image's version is its package's.
set -eu
umask 022
suite=${MLOS_SUITE:?}
mirror="deb [trusted=yes] copy:///in/debian $suite main"

# deb NAME: the packages stage's one NAME_*.deb.
deb() {
	set -- /in/packages/debs/"$1"_*.deb
	if [ $# -ne 1 ] || [ ! -f "$1" ]; then
		echo "oci.sh: expected exactly one .deb in the packages stage, found: $*" >&2
		exit 1
	fi
	echo "$1"
}

# root DIR [DEB]: a Debian minbase in DIR; with DEB, that package installed on it by dpkg
# after apt installed what it depends on (the first of each set of alternatives). Manuals,
# translations and documentation are left out, as container images do; copyrights stay.
root() {
	dir=$1 include="" install=""
	if [ $# -gt 1 ]; then
		include=$(dpkg-deb --field "$2" Depends | sed -e 's/([^)]*)//g' -e 's/|[^,]*//g' -e 's/[[:space:]]//g')
		install="cp '$2' \"\$1/tmp/\" && chroot \"\$1\" dpkg --install '/tmp/$(basename "$2")'"
	fi
	mmdebstrap --mode=root --variant=minbase --format=directory --architectures=amd64 \
		--aptopt='Acquire::Languages "none"' ${include:+--include="$include"} \
		--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
		--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
		${install:+--customize-hook="$install"} \
		--customize-hook='sh /in/tools/oci-clean.sh "$1"' \
		"$suite" "$dir" "$mirror"
}

services=$(deb mlos-services)
root "$PWD/base"
mkdir -p pkg agent/usr/libexec/mlos agent/etc/mlos agent/usr/share/doc/mlos-services
dpkg-deb --extract "$services" pkg
cp pkg/usr/libexec/mlos/mlos-core agent/usr/libexec/mlos/
cp pkg/etc/mlos/mlos.conf agent/etc/mlos/
cp pkg/usr/share/doc/mlos-services/copyright agent/usr/share/doc/mlos-services/
(cd agent && find . ! -type d | sed 's|^\./||') >agent.list
sh /in/tools/record.sh "$PWD/agent" "$services" agent.list
mkdir work
python3 /in/tools/ocilayout.py --work work --layout /out/mlos-core --archive /out/mlos-core.oci.tar \
	--name mlos-core --version "$(dpkg-deb --field "$services" Version)" \
	--layer "$PWD/base" --layer "$PWD/agent:root" \
	--entrypoint /usr/libexec/mlos/mlos-core --env CORE_INTERVAL=10

toolchain=$(deb mlos-toolchain)
root "$PWD/toolchain" "$toolchain"
python3 /in/tools/ocilayout.py --work work --layout /out/mlos-toolchain --archive /out/mlos-toolchain.oci.tar \
	--name mlos-toolchain --version "$(dpkg-deb --field "$toolchain" Version)" \
	--layer "$PWD/toolchain" --cmd python3
