"""GPT disks: protective MBR boot code, each partition as a member, GUIDs as meta members."""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlos_repro.digest import sha256_bytes
from mlos_repro.inspect.members import Member, copy_range, hash_and_hint, meta_member, safe_name

SECTOR = 512
MAX_TABLE = 1 << 20  # 128 entries of 128 bytes are 16 KiB


@dataclass(frozen=True, slots=True)
class Partition:
    number: int  # 1-based, as in the table
    label: str
    guid: str
    type_guid: str
    first: int  # LBAs, inclusive
    last: int

    @property
    def extent(self) -> tuple[int, int]:
        """(offset, length) in bytes."""
        return self.first * SECTOR, (self.last - self.first + 1) * SECTOR


def partitions(path: Path) -> tuple[str, list[Partition]]:
    """The disk GUID and the partitions of a GPT disk image; ValueError when it holds none that
    makes sense (a partition outside the usable LBAs, a table too large)."""
    sectors = path.stat().st_size // SECTOR
    with path.open("rb") as f:
        f.seek(SECTOR)
        header = f.read(92)
        if len(header) < 92 or header[:8] != b"EFI PART":
            raise ValueError("no GPT header at LBA 1")
        first_usable, last_usable = struct.unpack_from("<QQ", header, 40)
        disk_guid = str(uuid.UUID(bytes_le=header[56:72]))
        entries_lba, count, size = struct.unpack_from("<QII", header, 72)
        if not (128 <= size <= 4096 and size % 8 == 0 and 0 < count * size <= MAX_TABLE):
            raise ValueError(f"GPT header claims {count} entries of {size} bytes: not a partition table")
        if not 2 <= entries_lba < first_usable <= last_usable < sectors:
            raise ValueError(f"GPT header: entries at LBA {entries_lba}, usable LBAs {first_usable}-"
                             f"{last_usable}, but the disk has {sectors} sectors")
        f.seek(entries_lba * SECTOR)
        table = f.read(count * size)
    parts = []
    for i in range(count):
        e = table[i * size:(i + 1) * size]
        if e[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        if not first_usable <= first <= last <= last_usable:
            # Also a partition that holds the whole disk (and so itself, without end).
            raise ValueError(f"GPT partition {i + 1}: LBAs {first}-{last} lie outside the usable "
                             f"{first_usable}-{last_usable}")
        label = e[56:128].decode("utf-16-le", errors="replace").rstrip("\0")
        guid, type_guid = (str(uuid.UUID(bytes_le=e[at:at + 16])) for at in (16, 0))
        parts.append(Partition(i + 1, label, guid, type_guid, first, last))
    return disk_guid, parts


class GptReader:
    """A GPT disk: protective MBR (boot code), each partition as a member, GUIDs as meta."""

    kind = "gpt"

    def _table(self, path: Path) -> tuple[str, list[tuple[str, str, int, int]]]:
        disk_guid, parts = partitions(path)
        return disk_guid, [(f"p{p.number}-{p.label or 'part'}", p.guid, p.first, p.last) for p in parts]

    def members(self, path: Path) -> Iterator[Member]:
        disk_guid, parts = self._table(path)
        yield meta_member("(disk guid)", disk_guid)
        with path.open("rb") as f:
            mbr = f.read(440)
        yield Member("(mbr boot code)", "file", 0o644, 0, 0, 0, 440, sha256_bytes(mbr))
        for name, part_guid, first, last in parts:
            yield meta_member(f"{name} (partition guid)", part_guid)
            length = (last - first + 1) * SECTOR
            with path.open("rb") as f:
                f.seek(first * SECTOR)
                digest, nested = hash_and_hint(f, limit=length)
            yield Member(name, "file", 0o644, 0, 0, 0, length, digest, nested=nested)

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        _, parts = self._table(path)
        found = {}
        for index, (name, _, first, last) in enumerate(parts):
            if name not in names:
                continue
            target = dest / safe_name(index, name)
            copy_range(path, target, first * SECTOR, (last - first + 1) * SECTOR)
            found[name] = target
        if "(mbr boot code)" in names:
            target = dest / "mbr-boot-code"
            with path.open("rb") as src:
                target.write_bytes(src.read(440))
            found["(mbr boot code)"] = target
        return found
