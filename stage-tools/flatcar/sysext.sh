#!/bin/sh
# systemd system extensions (sysext images) of MLOS packages, run as the `sysext` stage:
#
#   sh /in/tools/sysext.sh PACKAGE...
#
# Inputs: the .debs of the stages it takes (/in/*/debs: `packages`, and in the release profile
# `upstream-packages`); each PACKAGE must be in exactly one. Settings from the stage's environment:
# MLOS_SYSEXT_ID (the host os-release ID the image is for: flatcar, or _any for every host),
# MLOS_SYSEXT_LEVEL (the host's SYSEXT_LEVEL it needs; unused with _any), MLOS_SYSEXT_ARCH
# (x86-64).
#
# Output per PACKAGE: /out/PACKAGE.raw, a squashfs holding only usr/ (and opt/) — what
# systemd-sysext merges over the host's — made from the package's files:
#   - usr/ and opt/ as the package has them; a package's /lib, /bin and /sbin under usr/;
#   - /etc cannot be in an extension: its files become the defaults under
#     usr/share/PACKAGE/etc/, and a tmpfiles.d line copies each to /etc when it is missing;
#   - every unit of the package is enabled on merge: a multi-user.target drop-in Upholds= a
#     daemon (started, and restarted if it stops) and Wants= a one-shot unit;
#   - usr/lib/extension-release.d/extension-release.PACKAGE says which hosts may merge it.
#   - usr/share/mlos-repro/packages/PACKAGE/: the package's control data, its .deb's sha256 and
#     the list of the image's paths that came from it (what the SBOM reads).
# Anything else the package holds (/var, /boot, ...) is refused: it would be lost.
set -eu
umask 022

[ $# -gt 0 ] || { echo "sysext.sh: name at least one package" >&2; exit 2; }
: "${MLOS_SYSEXT_ID:?}" "${MLOS_SYSEXT_ARCH:?}"

for name in "$@"; do
	set -- /in/*/debs/"${name}"_*.deb
	if [ $# -ne 1 ] || [ ! -f "$1" ]; then
		echo "sysext.sh: expected exactly one ${name}_*.deb in the input stages (/in/*/debs), found: $*" >&2
		exit 1
	fi
	work="$PWD/$name"
	rm -rf "$work"
	mkdir -p "$work/pkg" "$work/root"
	dpkg-deb --extract "$1" "$work/pkg"
	pkg="$work/pkg" root="$work/root"
	for top in $(cd "$pkg" && find . -mindepth 1 -maxdepth 1 | LC_ALL=C sort); do
		top=${top#./}
		case "$top" in
		usr | opt) cp -a "$pkg/$top" "$root/" ;;
		lib | bin | sbin) mkdir -p "$root/usr/$top" && cp -a "$pkg/$top/." "$root/usr/$top/" ;;
		etc)
			mkdir -p "$root/usr/share/$name/etc" "$root/usr/lib/tmpfiles.d"
			cp -a "$pkg/etc/." "$root/usr/share/$name/etc/"
			(cd "$pkg/etc" && find . -type f | LC_ALL=C sort) | while read -r f; do
				f=${f#./}
				printf 'C /etc/%s - - - - /usr/share/%s/etc/%s\n' "$f" "$name" "$f"
			done >"$root/usr/lib/tmpfiles.d/$name-etc.conf"
			;;
		*)
			echo "sysext.sh: $name has /$top, which a system extension cannot carry (only /usr, /opt, /etc defaults)" >&2
			exit 1
			;;
		esac
	done
	# What the image holds of which package, for its SBOM: the package's control data, the
	# sha256 of its .deb, and every path of the image that came from it (the rest the stage made).
	(cd "$root" && find usr opt ! -type d 2>/dev/null | LC_ALL=C sort |
		grep -vx "usr/lib/tmpfiles.d/$name-etc.conf" || true) >"$work/list"
	sh /in/tools/record.sh "$root" "$1" "$work/list"
	# Units: daemons upheld (started on merge, restarted if they stop), one-shot units wanted.
	upheld="" wanted=""
	for unit in $(cd "$root/usr/lib/systemd/system" 2>/dev/null && find . -maxdepth 1 -type f \
		\( -name '*.service' -o -name '*.socket' -o -name '*.timer' -o -name '*.path' \) |
		sed 's|^\./||' | LC_ALL=C sort); do
		if grep -qx 'Type=oneshot' "$root/usr/lib/systemd/system/$unit"; then
			wanted="$wanted $unit"
		else
			upheld="$upheld $unit"
		fi
	done
	if [ -n "$upheld$wanted" ]; then
		mkdir -p "$root/usr/lib/systemd/system/multi-user.target.d"
		{
			printf '# Enabled when %s is merged (systemd-sysext).\n[Unit]\n' "$name"
			[ -z "$upheld" ] || printf 'Upholds=%s\n' "${upheld# }"
			[ -z "$wanted" ] || printf 'Wants=%s\n' "${wanted# }"
		} >"$root/usr/lib/systemd/system/multi-user.target.d/10-$name.conf"
	fi
	mkdir -p "$root/usr/lib/extension-release.d"
	{
		printf 'ID=%s\n' "$MLOS_SYSEXT_ID"
		[ "$MLOS_SYSEXT_ID" = _any ] || printf 'SYSEXT_LEVEL=%s\n' "${MLOS_SYSEXT_LEVEL:?}"
		printf 'ARCHITECTURE=%s\n' "$MLOS_SYSEXT_ARCH"
	} >"$root/usr/lib/extension-release.d/extension-release.$name"
	# The same image from the same files: root-owned, no xattrs, one time for every inode
	# (mksquashfs reads SOURCE_DATE_EPOCH itself), fixed compressor and block size.
	mksquashfs "$root" "/out/$name.raw" -noappend -no-progress -quiet -all-root \
		-comp zstd -Xcompression-level 15 -b 128K -no-xattrs -reproducible
done
