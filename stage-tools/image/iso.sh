#!/bin/sh
# The MLOS hybrid ISO, run as the `iso` stage:
#
#   sh /in/tools/iso.sh
#
# Inputs: /in/kernel (bzImage, kernel.json), /in/initramfs (initrd.img), /in/rootfs
# (rootfs.squashfs, packages.tsv). Settings: MLOS_ISO_LABEL (the volume label the initramfs
# looks for), MLOS_VERSION, MLOS_PROFILE, MLOS_GRUB_TIMEOUT.
#
# BIOS: GRUB's El Torito core image plus the hybrid MBR (boot_hybrid.img), so the same file
# boots from a CD or a USB stick. UEFI: a FAT EFI system partition holding BOOTX64.EFI,
# appended as a GPT partition and named as the El Torito EFI image. xorriso is driven
# directly rather than through grub-mkrescue, which stamps the current time into the volume.
# With SOURCE_DATE_EPOCH set, xorriso derives every volume date, the volume UUID and the GPT
# GUIDs from it; the FAT image gets a volume id derived from the label and --invariant dates
# (lib.sh).
set -eu
# Modes of what the scripts write do not depend on the caller's umask.
umask 022
. /in/tools/lib.sh

label=$MLOS_ISO_LABEL
sde=$SOURCE_DATE_EPOCH
tree="$PWD"/iso
work="$PWD"/work
mkdir -p "$tree/boot/grub/i386-pc" "$tree/live" "$tree/.disk" "$work"

cp /in/kernel/bzImage "$tree/boot/vmlinuz"
cp /in/initramfs/initrd.img "$tree/boot/initrd.img"
cp /in/rootfs/rootfs.squashfs "$tree/live/rootfs.squashfs"
(cd "$tree/live" && sha256sum rootfs.squashfs >rootfs.squashfs.sha256)
cp /in/rootfs/packages.tsv "$tree/live/packages.tsv"

render /in/tools/grub.cfg "live:LABEL=$label" >"$tree/boot/grub/grub.cfg"
early_config "--label $label" >"$work/early.cfg"

# What the ISO is, for people (/.disk/info, as Debian's media have) and for mlos-repro
# verify-iso (/.disk/mlos.json).
python3 /in/tools/isoinfo.py "$tree" >"$tree/.disk/mlos.json"
date -u -d "@$sde" +"MLOS Linux $MLOS_VERSION \"$MLOS_PROFILE\" - amd64 (%Y%m%d)" >"$tree/.disk/info"

# shellcheck disable=SC2086 # the module list is meant to split
grub-mkimage -O i386-pc-eltorito -c "$work/early.cfg" -p /boot/grub \
	-o "$tree/boot/grub/i386-pc/eltorito.img" biosdisk $GRUB_MODULES
# shellcheck disable=SC2086
grub-mkimage -O x86_64-efi -c "$work/early.cfg" -p /boot/grub -o "$work/BOOTX64.EFI" $GRUB_MODULES \
	$GRUB_EFI_MODULES
# The ESP has room for what `mlos-repro release` writes over BOOTX64.EFI for Secure Boot: the
# signed UKI, which holds this kernel and initramfs; 1 MiB and more is left for systemd's stub,
# the signature and the FAT's own tables. Never less than 4 MiB.
payload=$(($(stat -c %s /in/kernel/bzImage) + $(stat -c %s /in/initramfs/initrd.img)))
esp_kib=$(((payload / 1048576 + 2) * 1024))
[ "$esp_kib" -ge 4096 ] || esp_kib=4096
efi_fat "$work/efi.img" "$esp_kib" "$(volume_id "$label")" MLOS-EFI "$work/BOOTX64.EFI=/EFI/BOOT/BOOTX64.EFI"

# Every file and directory dated SOURCE_DATE_EPOCH by xorriso itself, whatever the clock
# said when they were copied.
xorriso -as mkisofs -quiet -iso-level 3 -full-iso9660-filenames -r -J -joliet-long \
	-V "$label" -o /out/mlos.iso --set_all_file_dates "=$sde" \
	--grub2-mbr /usr/lib/grub/i386-pc/boot_hybrid.img -partition_offset 16 --mbr-force-bootable \
	-append_partition 2 0xef "$work/efi.img" -appended_part_as_gpt \
	-c boot/boot.cat \
	-b boot/grub/i386-pc/eltorito.img -no-emul-boot -boot-load-size 4 -boot-info-table \
	--grub2-boot-info \
	-eltorito-alt-boot -e --interval:appended_partition_2:all:: -no-emul-boot \
	"$tree"
cp "$tree/.disk/mlos.json" /out/mlos.json
