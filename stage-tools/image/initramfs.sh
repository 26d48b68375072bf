#!/bin/sh
# The MLOS initramfs, run as the `initramfs` stage:
#
#   sh /in/tools/initramfs.sh
#
# busybox-static from the builder environment plus our /init (stage-tools/image/init) and
# the state partition's definition for systemd-repart (stage-tools/image/repart.d),
# written by mkcpio.py (sorted, root-owned, SOURCE_DATE_EPOCH mtimes, gzip without a name
# or timestamp). Output: /out/initrd.img.
set -eu
# Modes of what the scripts write do not depend on the caller's umask.
umask 022

tree="$PWD"/initramfs
mkdir -p "$tree/bin" "$tree/dev" "$tree/proc" "$tree/sys" "$tree/run" "$tree/newroot" "$tree/media"
cp /bin/busybox "$tree/bin/busybox"
cp /in/tools/init "$tree/init"
# How the disk image's state partition is made and grown (systemd-repart, run by /init).
mkdir -p "$tree/etc/repart.d"
cp /in/tools/repart.d/*.conf "$tree/etc/repart.d/"
chmod 0755 "$tree/init" "$tree/bin/busybox"
# The kernel opens /dev/console before /init runs; without it early messages are lost.
python3 /in/tools/mkcpio.py --node dev/console:c:5:1:0600 --node dev/null:c:1:3:0666 \
	"$tree" /out/initrd.img
