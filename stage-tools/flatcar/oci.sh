#!/bin/sh
# OCI images of MLOS, built without a container engine, run as the `oci` stage (and in the
# release profile `oci-upstream`; privileged: mmdebstrap installs as root, with real file
# ownership):
#
#   sh /in/tools/oci.sh IMAGE...
#
# Inputs: /in/debian (a local mirror of the locked Debian packages: env:target, or
# env:target-release), /in/packages/debs (the `packages` stage) and, in the release profile,
# /in/upstream/debs (the `upstream-packages` stage: mlos-core and axon repackaged from their
# upstream archives). Setting: MLOS_SUITE (bookworm).
#
# Each IMAGE is written as /out/IMAGE, an OCI image layout directory, and /out/IMAGE.oci.tar,
# the same files as an oci-archive tar (stage-tools/flatcar/ocilayout.py writes both):
#   - mlos-core: on a Debian minbase, a layer of mlos-core's files with their record (record.sh:
#     which package they came from, for the SBOM). Without /in/upstream, the MLOS host agent
#     that mlos-services ships (/usr/libexec/mlos/mlos-core); with it, the upstream mlos-core
#     runtime (/usr/bin/mlos-core);
#   - axon (needs /in/upstream): the same of the upstream axon (/usr/bin/axon);
#   - mlos-toolchain: the MLOS toolchain (mlos-toolchain, installed by dpkg, and what it
#     depends on, by apt) on a Debian minbase, one layer.
# Each image's version is its package's.
set -eu
umask 022
suite=${MLOS_SUITE:?}
mirror="deb [trusted=yes] copy:///in/debian $suite main"

# deb STAGE NAME: the one NAME_*.deb of the input stage STAGE (packages, upstream).
deb() {
	stage=$1 name=$2
	set -- /in/"$stage"/debs/"$name"_*.deb
	if [ $# -ne 1 ] || [ ! -f "$1" ]; then
		echo "oci.sh: expected exactly one ${name}_*.deb in /in/$stage/debs, found: $*" >&2
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

# layer DEB DIR [PATH...]: DIR holds those files of DEB (every file when none is named), and
# their record.
layer() {
	deb=$1 dir=$2
	shift 2
	rm -rf pkg && mkdir pkg "$dir"
	dpkg-deb --extract "$deb" pkg
	[ $# -gt 0 ] || set -- $(cd pkg && find . ! -type d | sed 's|^\./||' | LC_ALL=C sort)
	for path in "$@"; do
		mkdir -p "$dir/$(dirname "$path")"
		cp -p "pkg/$path" "$dir/$path"
	done
	(cd "$dir" && find . ! -type d | sed 's|^\./||') >"$dir.list"
	sh /in/tools/record.sh "$dir" "$deb" "$dir.list"
}

# image NAME DEB ARG...: /out/NAME and /out/NAME.oci.tar at DEB's version; ARG... as
# ocilayout.py takes them (--layer, --entrypoint, --env, --cmd).
image() {
	name=$1 deb=$2
	shift 2
	python3 /in/tools/ocilayout.py --work work --layout "/out/$name" --archive "/out/$name.oci.tar" \
		--name "$name" --version "$(dpkg-deb --field "$deb" Version)" "$@"
}

[ $# -gt 0 ] || { echo "oci.sh: name at least one image (mlos-core, axon, mlos-toolchain)" >&2; exit 2; }
mkdir work
for name in "$@"; do
	case "$name" in
	mlos-core | axon)
		[ -d base ] || root "$PWD/base"
		if [ -d /in/upstream ]; then
			upstream=$(deb upstream "$name")
			layer "$upstream" "$PWD/$name"
			image "$name" "$upstream" --layer "$PWD/base" --layer "$PWD/$name:root" \
				--entrypoint "/usr/bin/$name"
		elif [ "$name" = mlos-core ]; then
			services=$(deb packages mlos-services)
			layer "$services" "$PWD/agent" usr/libexec/mlos/mlos-core etc/mlos/mlos.conf \
				usr/share/doc/mlos-services/copyright
			image mlos-core "$services" --layer "$PWD/base" --layer "$PWD/agent:root" \
				--entrypoint /usr/libexec/mlos/mlos-core --env CORE_INTERVAL=10
		else
			echo "oci.sh: the $name image is made from the upstream-packages stage (/in/upstream)" >&2
			exit 2
		fi
		;;
	mlos-toolchain)
		toolchain=$(deb packages mlos-toolchain)
		root "$PWD/toolchain" "$toolchain"
		image mlos-toolchain "$toolchain" --layer "$PWD/toolchain" --cmd python3
		;;
	*)
		echo "oci.sh: no image named '$name' (mlos-core, axon, mlos-toolchain)" >&2
		exit 2
		;;
	esac
done
