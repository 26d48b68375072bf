#!/bin/sh
# The MLOS PXE bundle, run as the `pxe` stage:
#
#   sh /in/tools/pxe.sh
#
# /out/pxe/ is what a TFTP or HTTP server hands to network-booting machines:
#   boot.ipxe     the iPXE script (DHCP boot file name), loads the three files below
#   vmlinuz       the MLOS kernel
#   initrd.img    the initramfs
#   rootfs.img    an uncompressed cpio holding rootfs.squashfs and its .sha256; the kernel
#                 unpacks it after initrd.img, and the initramfs boots it (mlos.root=initrd),
#                 so the kernel needs no network driver of its own
# Settings: MLOS_VERSION, MLOS_PROFILE.
set -eu
# Modes of what the scripts write do not depend on the caller's umask.
umask 022

out=/out/pxe
work="$PWD"/rootfs
mkdir -p "$out" "$work/empty"
cp /in/kernel/bzImage "$out/vmlinuz"
cp /in/initramfs/initrd.img "$out/initrd.img"
cp /in/rootfs/rootfs.squashfs "$work/rootfs.squashfs"
(cd "$work" && sha256sum rootfs.squashfs >rootfs.squashfs.sha256)
python3 /in/tools/mkcpio.py --no-compress --add "$work/rootfs.squashfs=rootfs.squashfs" \
	--add "$work/rootfs.squashfs.sha256=rootfs.squashfs.sha256" "$work/empty" "$out/rootfs.img"

cat >"$out/boot.ipxe" <<EOF2
#!ipxe
# MLOS Linux $MLOS_VERSION ($MLOS_PROFILE): network boot. Serve this directory over TFTP or
# HTTP and give boot.ipxe as the DHCP boot file name; the other files are fetched relative to it.
echo Booting MLOS Linux $MLOS_VERSION ($MLOS_PROFILE)
kernel vmlinuz initrd=initrd.img initrd=rootfs.img mlos.root=initrd console=tty0 console=ttyS0,115200n8
initrd initrd.img
initrd rootfs.img
boot
EOF2
(cd "$out" && sha256sum boot.ipxe vmlinuz initrd.img rootfs.img >SHA256SUMS)
