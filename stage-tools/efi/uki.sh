#!/bin/sh
# Unified Kernel Images, run as the `uki` stage:
#
#   sh /in/tools/uki.sh
#
# Inputs: /in/kernel/bzImage (the `kernel` stage), /in/initramfs/initrd.img (`initramfs`) and
# systemd's EFI stub from the `efi` environment. Settings from the stage's environment:
# MLOS_VERSION, MLOS_PROFILE, MLOS_ISO_LABEL (the ISO's volume label, by which the initramfs
# finds the root filesystem on it).
#
# Outputs: /out/mlos-disk.efi and /out/mlos-iso.efi, unsigned: each the stub with the kernel
# (.linux), the initramfs (.initrd), the kernel command line (.cmdline; under Secure Boot the
# stub takes no other) and an os-release (.osrel). They are signed after the build, outside
# the sandbox; pefix.py makes each the same bytes on every build, and exactly what
# `sbattach --remove` gives back from its signed copy.
set -eu
umask 022

stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
kernel=/in/kernel/bzImage
initrd=/in/initramfs/initrd.img
: "${MLOS_VERSION:?}" "${MLOS_PROFILE:?}" "${MLOS_ISO_LABEL:?}"
for f in "$stub" "$kernel" "$initrd"; do
	[ -f "$f" ] || { echo "uki.sh: $f is missing" >&2; exit 1; }
done

cat >os-release <<EOT
NAME="MLOS Linux"
ID=mlos
ID_LIKE=debian
VERSION_ID=$MLOS_VERSION
PRETTY_NAME="MLOS Linux $MLOS_VERSION ($MLOS_PROFILE)"
EOT

# Where the sections go: above the stub's own (which end below 0x20000), the initramfs on the
# first MiB boundary after the kernel.
linux_at=$((0x2000000))
initrd_at=$(((linux_at + $(stat -c %s "$kernel") + 0xFFFFF) / 0x100000 * 0x100000))

uki() { # NAME ROOT: NAME.efi whose initramfs finds the root filesystem at ROOT (mlos.root=)
	printf 'mlos.root=%s console=tty0 console=ttyS0,115200n8' "$2" >"cmdline-$1"
	objcopy \
		--add-section .osrel=os-release --change-section-vma .osrel=0x20000 \
		--add-section .cmdline="cmdline-$1" --change-section-vma .cmdline=0x30000 \
		--add-section .linux="$kernel" --change-section-vma .linux="$(printf 0x%x "$linux_at")" \
		--add-section .initrd="$initrd" --change-section-vma .initrd="$(printf 0x%x "$initrd_at")" \
		"$stub" "$1.efi"
	python3 /in/tools/pefix.py "$1.efi"
	chmod 0644 "$1.efi"
	mv "$1.efi" "/out/$1.efi"
}
uki mlos-disk "part:PARTLABEL=mlos-root"
uki mlos-iso "live:LABEL=$MLOS_ISO_LABEL"
