#!/bin/sh
# The MLOS disk image, run as the `disk` stage:
#
#   sh /in/tools/disk.sh
#
# A raw GPT disk (/out/mlos.raw) and its qcow2 conversion (/out/mlos.qcow2):
#   1 bios-boot  1 MiB    GRUB's BIOS core image (grubbios.py writes it and the MBR boot code)
#   2 mlos-esp   64 MiB   FAT EFI system partition: EFI/BOOT/BOOTX64.EFI, boot/grub/grub.cfg,
#                          boot/vmlinuz, boot/initrd.img
#   3 mlos-root  the squashfs itself; the initramfs finds it by its partition name and lays an
#                overlay on it.
#   and 64 MiB left free: on first boot the initramfs has systemd-repart make the state
#   partition (4 mlos-state, ext4, the overlay's upper layer: what the system writes) there,
#   and grow it whenever the disk has grown (stage-tools/image/repart.d, init).
# The disk GUID, the partition GUIDs and the FAT volume id are derived from MLOS_DISK_ID, so
# they are the same in every build of a release and differ between releases.
set -eu
# Modes of what the scripts write do not depend on the caller's umask.
umask 022
. /in/tools/lib.sh

id=$MLOS_DISK_ID
work="$PWD"/work
img="$PWD"/mlos.raw
mkdir -p "$work"
mib=1048576

squashfs=/in/rootfs/rootfs.squashfs
root_mib=$(( ($(stat -c %s "$squashfs") + mib - 1) / mib ))
esp_mib=64
# The smallest state partition repart.d/50-mlos-state.conf allows.
state_mib=64
# 1 MiB alignment gap, bios-boot, ESP, root, the state partition's room, 1 MiB for the backup GPT.
total_mib=$((1 + 1 + esp_mib + root_mib + state_mib + 1))
truncate -s "${total_mib}M" "$img"

sfdisk --quiet --no-reread --no-tell-kernel "$img" <<EOF2
label: gpt
label-id: $(guid "$id/disk")
first-lba: 2048
start=2048, size=$((mib / 512)), type=21686148-6449-6E6F-744E-656564454649, uuid=$(guid "$id/bios-boot"), name="bios-boot"
size=$((esp_mib * mib / 512)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$(guid "$id/esp"), name="mlos-esp"
size=$((root_mib * mib / 512)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$(guid "$id/root"), name="mlos-root"
EOF2

volid=$(volume_id "$id/esp")
fs_uuid=$(echo "$volid" | tr a-f A-F | sed -E 's/^(....)(....)$/\1-\2/')
early_config "--fs-uuid $fs_uuid" >"$work/early.cfg"
render /in/tools/grub.cfg "part:PARTLABEL=mlos-root" >"$work/grub.cfg"
# shellcheck disable=SC2086 # the module list is meant to split
grub-mkimage -O x86_64-efi -c "$work/early.cfg" -p /boot/grub -o "$work/BOOTX64.EFI" $GRUB_MODULES \
	$GRUB_EFI_MODULES
# shellcheck disable=SC2086
grub-mkimage -O i386-pc -c "$work/early.cfg" -p /boot/grub -o "$work/core.img" biosdisk $GRUB_MODULES

cp /in/kernel/bzImage "$work/vmlinuz"
cp /in/initramfs/initrd.img "$work/initrd.img"
efi_fat "$work/esp.img" $((esp_mib * 1024)) "$volid" MLOS-ESP \
	"$work/BOOTX64.EFI=/EFI/BOOT/BOOTX64.EFI" "$work/grub.cfg=/boot/grub/grub.cfg" \
	"$work/vmlinuz=/boot/vmlinuz" "$work/initrd.img=/boot/initrd.img"

dd if="$work/esp.img" of="$img" bs=1M seek=2 conv=notrunc status=none
dd if="$squashfs" of="$img" bs=1M seek=$((2 + esp_mib)) conv=notrunc status=none

# The MBR boot code, and the core image in the bios-boot partition (sector 2048, 1 MiB).
python3 /in/tools/grubbios.py "$img" /usr/lib/grub/i386-pc/boot.img "$work/core.img" 2048 2048

mv "$img" /out/mlos.raw
# Uncompressed: qemu-img's compressed writes run in parallel and need not land in order.
qemu-img convert -f raw -O qcow2 -o compat=1.1 /out/mlos.raw /out/mlos.qcow2
