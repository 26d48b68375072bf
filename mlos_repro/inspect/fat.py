"""FAT12/16/32 images, parsed here."""

from __future__ import annotations

import calendar
import datetime
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mlos_repro.digest import sha256_bytes
from mlos_repro.inspect.members import Member, looks_nested, meta_member, safe_name


class FatReader:
    """A FAT12/16/32 image, parsed here: every file and directory with its long name and the
    time written in its directory entry (FAT stores local time, so a build's time zone shows
    up as a changed mtime); the volume serial and label are meta members."""

    kind = "fat"

    def members(self, path: Path) -> Iterator[Member]:
        with path.open("rb") as f:
            fat = _Fat(f)
            yield meta_member("(volume serial)", fat.serial)
            yield meta_member("(volume label)", fat.label)
            for name, entry in fat.walk():
                if entry.is_dir:
                    yield Member(name, "dir", 0o755, 0, 0, entry.mtime, 0)
                else:
                    data = fat.read(entry)
                    yield Member(name, "file", 0o644, 0, 0, entry.mtime, len(data), sha256_bytes(data),
                                 nested=looks_nested(data[:40 << 10]))

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found = {}
        with path.open("rb") as f:
            fat = _Fat(f)
            for index, (name, entry) in enumerate(fat.walk()):
                if name in names and not entry.is_dir:
                    target = dest / safe_name(index, name)
                    target.write_bytes(fat.read(entry))
                    found[name] = target
        return found


MAX_DIR_DEPTH = 64


@dataclass(frozen=True, slots=True)
class _FatEntry:
    is_dir: bool
    cluster: int
    size: int
    mtime: int  # the entry's write date and time, read as UTC


class _Fat:
    """The parts of a FAT file system a listing needs (Microsoft's FAT specification)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        boot = f.read(512)
        if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
            raise ValueError("not a FAT boot sector")
        (self.sector, self.per_cluster, reserved, fats, root_entries, total16, _, fat16) = \
            struct.unpack_from("<HBHBHHBH", boot, 11)
        total = total16 or struct.unpack_from("<I", boot, 32)[0]
        fat_sectors = fat16 or struct.unpack_from("<I", boot, 36)[0]
        if not self.sector or not self.per_cluster or not fats:
            raise ValueError("not a FAT boot sector")
        root_sectors = (root_entries * 32 + self.sector - 1) // self.sector
        self.fat_start = reserved * self.sector
        self.root_start = (reserved + fats * fat_sectors) * self.sector
        self.root_size = root_sectors * self.sector
        self.data_start = self.root_start + self.root_size
        clusters = (total - reserved - fats * fat_sectors - root_sectors) // self.per_cluster
        self.bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        offset = 67 if self.bits == 32 else 39  # the extended boot record's serial and label
        self.root_cluster = struct.unpack_from("<I", boot, 44)[0] if self.bits == 32 else 0
        self.serial = boot[offset:offset + 4][::-1].hex().upper()
        self.label = boot[offset + 4:offset + 15].decode(errors="replace").strip()
        f.seek(self.fat_start)
        self.table = f.read(fat_sectors * self.sector)

    def _next(self, cluster: int) -> int:
        if self.bits == 12:
            value = struct.unpack_from("<H", self.table, cluster + cluster // 2)[0]
            value = value >> 4 if cluster & 1 else value & 0xFFF
            return -1 if value >= 0xFF8 else value
        if self.bits == 16:
            value = struct.unpack_from("<H", self.table, cluster * 2)[0]
            return -1 if value >= 0xFFF8 else value
        value = struct.unpack_from("<I", self.table, cluster * 4)[0] & 0x0FFFFFFF
        return -1 if value >= 0x0FFFFFF8 else value

    def _chain(self, cluster: int) -> bytes:
        size = self.per_cluster * self.sector
        chunks, seen = [], set()
        while cluster >= 2 and cluster not in seen:
            seen.add(cluster)
            self.f.seek(self.data_start + (cluster - 2) * size)
            chunks.append(self.f.read(size))
            cluster = self._next(cluster)
        return b"".join(chunks)

    def read(self, entry: _FatEntry) -> bytes:
        return self._chain(entry.cluster)[:entry.size] if entry.cluster else b""

    def walk(self, cluster: int | None = None, prefix: str = "",
             seen: frozenset[int] = frozenset()) -> Iterator[tuple[str, _FatEntry]]:
        """Every entry, depth first; a directory that contains itself or an ancestor is refused."""
        if cluster is not None and (cluster in seen or cluster == self.root_cluster):
            raise ValueError(f"FAT directory {prefix.rstrip('/')!r} loops back to cluster {cluster}")
        if len(seen) > MAX_DIR_DEPTH:
            raise ValueError(f"FAT directories nested deeper than {MAX_DIR_DEPTH} at {prefix!r}")
        if cluster is None and not self.root_cluster:
            self.f.seek(self.root_start)
            raw = self.f.read(self.root_size)
        else:
            raw = self._chain(self.root_cluster if cluster is None else cluster)
        entries = sorted(self._entries(raw))
        for name, entry in entries:
            yield prefix + name, entry
            if entry.is_dir:
                yield from self.walk(entry.cluster, f"{prefix}{name}/",
                                     seen | ({cluster} if cluster is not None else set()))

    def _entries(self, raw: bytes) -> Iterator[tuple[str, _FatEntry]]:
        long_parts: list[str] = []
        for i in range(0, len(raw) - 31, 32):
            e = raw[i:i + 32]
            if e[0] == 0:
                return
            if e[0] == 0xE5:
                long_parts = []
                continue
            attr = e[11]
            if attr == 0x0F:
                part = (e[1:11] + e[14:26] + e[28:32]).decode("utf-16-le", errors="replace")
                long_parts.insert(0, part.split("\0", 1)[0].rstrip("\uffff"))
                continue
            long_name, long_parts = "".join(long_parts), []
            if attr & 0x08:  # the volume label
                continue
            base, ext = e[0:8].decode("latin-1").rstrip(), e[8:11].decode("latin-1").rstrip()
            if base in (".", ".."):
                continue
            base = base.lower() if e[12] & 0x08 else base
            ext = ext.lower() if e[12] & 0x10 else ext
            name = long_name or (f"{base}.{ext}" if ext else base)
            cluster = struct.unpack_from("<H", e, 26)[0] | (struct.unpack_from("<H", e, 20)[0] << 16
                                                             if self.bits == 32 else 0)
            time_, date = struct.unpack_from("<HH", e, 22)
            yield name, _FatEntry(bool(attr & 0x10), cluster, struct.unpack_from("<I", e, 28)[0],
                                  _fat_time(date, time_))


def _fat_time(date: int, time_: int) -> int:
    """A FAT date and time as seconds since 1970, read as UTC (FAT keeps no time zone)."""
    if not date:
        return 0
    try:
        stamp = datetime.datetime(1980 + (date >> 9), (date >> 5) & 0xF, date & 0x1F,
                                  time_ >> 11, (time_ >> 5) & 0x3F, (time_ & 0x1F) * 2)
    except ValueError:
        return 0
    return calendar.timegm(stamp.timetuple())
