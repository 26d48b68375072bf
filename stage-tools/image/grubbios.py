"""Install GRUB's BIOS boot code into a disk image file, as grub-bios-setup would for a
GPT disk with a BIOS boot partition (grub-bios-setup itself wants a real block device).

    python3 grubbios.py IMAGE BOOT_IMG CORE_IMG SECTOR

The first 440 bytes of boot.img go into the MBR (the disk signature and the protective
partition table stay); boot.img learns where core.img starts (GRUB's boot.S,
GRUB_BOOT_MACHINE_KERNEL_SECTOR = 0x5c); core.img is written at SECTOR, and its first
sector's blocklist (the last 12 bytes: start sector, count, segment) gets the sector its
remainder starts at. The count and segment are grub-mkimage's.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

SECTOR = 512
MBR_CODE = 440
KERNEL_SECTOR = 0x5C
BLOCKLIST_START = SECTOR - 12


def install(image: Path, boot_img: Path, core_img: Path, sector: int, room: int | None = None) -> None:
    boot, core = boot_img.read_bytes(), core_img.read_bytes()
    if len(boot) != SECTOR:
        raise SystemExit(f"grubbios: {boot_img} is not a 512-byte boot sector")
    if room is not None and len(core) > room * SECTOR:
        raise SystemExit(f"grubbios: {core_img} ({len(core)} bytes) does not fit in {room} sectors")
    with image.open("r+b") as disk:
        disk.seek(0)
        disk.write(boot[:MBR_CODE])
        disk.seek(KERNEL_SECTOR)
        disk.write(struct.pack("<Q", sector))
        disk.seek(sector * SECTOR)
        disk.write(core)
        disk.seek(sector * SECTOR + BLOCKLIST_START)
        disk.write(struct.pack("<Q", sector + 1))


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        raise SystemExit("usage: grubbios.py IMAGE BOOT_IMG CORE_IMG SECTOR [ROOM_SECTORS]")
    install(Path(argv[0]), Path(argv[1]), Path(argv[2]), int(argv[3]),
            int(argv[4]) if len(argv) == 5 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
