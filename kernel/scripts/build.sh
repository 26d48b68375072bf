#!/bin/sh
# The kernel stage, run inside the sandbox. Inputs: /in/source (linux-source-6.1 .deb),
# /in/kernel (this directory); optional /in/patchset + /in/patchset.asc (a signed archive of
# further patches with its own `series`). Outputs under /out (see recipes/kernel.toml).
# MLOS_KERNEL_STOP_AFTER=patches stops after patching and writes /out/patched-files.txt;
# MLOS_KERNEL_STOP_AFTER=config stops after the checked configuration (/out/config).
# MLOS_PROFILE=release starts from Debian's configuration in /in/debconfig (linux-config-6.1).
set -eu
K=/in/kernel
profile=${MLOS_PROFILE:-small}
jobs=$(nproc)

# A further patch archive is checked first: a refused one costs seconds, not the unpacking.
if [ -e /in/patchset ] || [ -e /in/patchset.asc ]; then
	sh "$K/scripts/verify-patchset.sh" /in/patchset /in/patchset.asc "$K/keys"
fi

echo "== unpacking $(dpkg-deb -f /in/source Package) $(dpkg-deb -f /in/source Version)"
dpkg-deb --fsys-tarfile /in/source | tar -x --wildcards './usr/src/linux-source-*.tar.xz'
tar -xf usr/src/linux-source-*.tar.xz
rm -rf usr
cd linux-source-*
src=$(pwd)

echo "== patches"
sh "$K/scripts/apply-patches.sh" "$K/patches"
if [ -e /in/patchset ]; then
	mkdir -p /build/patchset
	tar -xf /in/patchset -C /build/patchset
	sh "$K/scripts/apply-patches.sh" /build/patchset
fi
if [ "${MLOS_KERNEL_STOP_AFTER:-}" = patches ]; then
	# A patch check: the patched tree's identity instead of a kernel.
	find . -type f ! -name '*.orig' -newer Makefile -print | LC_ALL=C sort > /out/patched-files.txt
	echo "stopping after the patches (MLOS_KERNEL_STOP_AFTER=patches)"
	exit 0
fi

echo "== configuration ($profile)"
case "$profile" in
small)
	make -s ARCH=x86_64 tinyconfig
	fragments="$K/config/small.config $K/config/boot-critical.config"
	;;
release)
	# Debian's own amd64 configuration from the pinned linux-config-6.1 package
	dpkg-deb --fsys-tarfile /in/debconfig | tar -xO ./usr/src/linux-config-6.1/config.amd64_none_amd64.xz \
		| xz -d > .config
	fragments="$K/config/release.config $K/config/boot-critical.config"
	;;
*)
	echo "error: unknown MLOS_PROFILE '$profile' (this stage knows: small, release)" >&2
	exit 2
	;;
esac
# shellcheck disable=SC2086
scripts/kconfig/merge_config.sh -m -O . .config $fragments >/dev/null
make -s ARCH=x86_64 olddefconfig
# shellcheck disable=SC2086
sh "$K/scripts/check-config.sh" .config $fragments
if [ "${MLOS_KERNEL_STOP_AFTER:-}" = config ]; then
	cp .config /out/config
	echo "stopping after the configuration (MLOS_KERNEL_STOP_AFTER=config)"
	exit 0
fi

echo "== build"
# In the C locale: day and month names would otherwise follow LANG (build --verify caught
# "E dets 1" under et_EE), and usr/gen_initramfs.sh, failing to parse that, would stamp the
# built-in initramfs with the current time instead.
export KBUILD_BUILD_TIMESTAMP="$(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %e %H:%M:%S UTC %Y')"
export KBUILD_BUILD_USER=mlos KBUILD_BUILD_HOST=mlos-build KBUILD_BUILD_VERSION=1
export KDEB_CHANGELOG_DIST=mlos DEBEMAIL="MLOS Linux maintainers <kernel@mlos.example>"
make -s ARCH=x86_64 -j"$jobs" bzImage
release=$(cat include/config/kernel.release)  # written by the build, with CONFIG_LOCALVERSION
make -s ARCH=x86_64 -j"$jobs" KDEB_PKGVERSION="$release-1" bindeb-pkg >/dev/null

cp arch/x86/boot/bzImage /out/bzImage
cp .config /out/config
cp System.map /out/System.map
mkdir -p /out/debs
cp ../linux-image-"$release"_*.deb /out/debs/

echo "== description"
{
	printf '{"release": "%s", "profile": "%s",\n' "$release" "$profile"
	printf ' "source": {"package": "%s", "source": "%s", "version": "%s", "sha256": "%s"},\n' \
		"$(dpkg-deb -f /in/source Package)" "$(dpkg-deb -f /in/source Source)" \
		"$(dpkg-deb -f /in/source Version)" "$(sha256sum < /in/source | cut -d' ' -f1)"
	printf ' "patches": ['
	sep=""
	for p in $(sh "$K/scripts/apply-patches.sh" --list "$K/patches"); do
		printf '%s\n  {"name": "%s", "sha256": "%s"}' "$sep" "$(basename "$p")" "$(sha256sum < "$p" | cut -d' ' -f1)"
		sep=","
	done
	printf '],\n "config_sha256": "%s"}\n' "$(sha256sum < "$src/.config" | cut -d' ' -f1)"
} > /out/kernel.json
echo "built $release"
