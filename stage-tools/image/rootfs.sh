#!/bin/sh
# The MLOS root filesystem, run as the `rootfs` stage (privileged: real file ownership).
#
#   sh /in/tools/rootfs.sh
#
# Inputs: /in/debian (a local mirror of the locked Debian packages, env:target) and
# /in/mlos/repo (the MLOS APT repository stage). Settings from the stage's environment:
# MLOS_SUITE (bookworm), MLOS_COMPONENTS (main), MLOS_INCLUDE (comma-separated packages),
# MLOS_MIRROR_URL (the archive written into the image's sources.list), MLOS_HOSTNAME.
#
# Outputs: /out/rootfs.squashfs and /out/packages.tsv (package, version, architecture,
# source, source version: what dpkg reports inside, sorted).
#
# Nothing is fetched: mmdebstrap reads both repositories with copy://. They are trusted
# here because their integrity comes from the store's digests; the MLOS repository is
# signed after the build, outside the sandbox.
set -eu
# Modes of what the scripts write do not depend on the caller's umask.
umask 022

root="$PWD"/root
components=$(echo "${MLOS_COMPONENTS:-main}" | tr ',' ' ')

mmdebstrap --mode=root --variant=minbase --format=directory \
	--architectures=amd64 \
	--include="$MLOS_INCLUDE" \
	--aptopt='Acquire::Languages "none"' \
	--customize-hook="sh /in/tools/rootfs-customize.sh \"\$1\"" \
	"$MLOS_SUITE" "$root" \
	"deb [trusted=yes] copy:///in/debian $MLOS_SUITE $components" \
	"deb [trusted=yes] copy:///in/mlos/repo mlos main"

# What is inside, for the SBOM and for people: straight from dpkg's database.
{
	printf 'package\tversion\tarchitecture\tsource\tsource_version\n'
	dpkg-query --admindir="$root/var/lib/dpkg" -W \
		-f='${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n' |
		LC_ALL=C sort
} >/out/packages.tsv

# Fixed compressor, level and block size, no xattrs (what the host's file system adds is none
# of the image's business). zstd level 9, not 15: a fifth of the CPU time for an image 1 %
# larger, and the same speed to read at boot. mksquashfs reads SOURCE_DATE_EPOCH itself and gives every inode
# and the superblock that time (it refuses -mkfs-time/-all-time next to it).
mksquashfs "$root" /out/rootfs.squashfs -noappend -no-progress -quiet \
	-comp zstd -Xcompression-level 9 -b 1M -no-xattrs -reproducible
