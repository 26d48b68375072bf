"""Readers for file-system images: squashfs, ISO 9660 (+ El Torito), FAT, ext4, GPT disks.

Where a tool can stream an image as a tar (sqfs2tar, bsdtar), the tar reader does the work;
ext4 is read through fuse2fs (no root needed, no copy), FAT is parsed here, and a GPT disk is
split into its partitions, read in place. Random identifiers (GUIDs, serials, UUIDs, hash
seeds) become "meta" members, so a difference in them is named like any other.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mlos_repro import run
from mlos_repro.digest import sha256_bytes, sha256_file
from mlos_repro.errors import MissingToolError
from mlos_repro.verify.formats import (
    CHUNK,
    Member,
    Reader,
    TarReader,
    _hash_and_hint,
    _safe_name,
    file_hint,
    looks_nested,
    walk_members,
)

run.TOOLS.update({"sqfs2tar": "squashfs-tools-ng", "bsdtar": "libarchive-tools",
                  "xorriso": "xorriso", "fuse2fs": "fuse2fs", "qemu-img": "qemu-utils"})


BOOT_PREFIX = "[el-torito]/"


def _meta(name: str, value: str) -> Member:
    return Member(name, "meta", 0, 0, 0, 0, len(value), sha256_bytes(value.encode()), value)


class _PipedTar(TarReader):
    """A tar reader over a tool's stdout."""

    argv: tuple[str, ...] = ()

    def _each(self, path: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        argv = [a.replace("{}", str(path)) for a in self.argv]
        with run.stream(argv) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                yield info, tar


class SquashfsReader(_PipedTar):
    kind = "squashfs"
    argv = ("sqfs2tar", "--no-skip", "{}")


class IsoReader(_PipedTar):
    """ISO 9660 with Rock Ridge through bsdtar, plus the El Torito boot images through xorriso."""

    kind = "iso9660"
    argv = ("bsdtar", "-cf", "-", "--format=pax", "@{}")

    def members(self, path: Path) -> Iterator[Member]:
        yield from super().members(path)
        with tempfile.TemporaryDirectory(prefix="mlos-eltorito-") as tmp:
            for name, file in self._boot_images(path, Path(tmp)).items():
                yield Member(name, "file", 0o644, 0, 0, 0, file.stat().st_size, sha256_file(file),
                             nested=file_hint(file))

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found = super().extract(path, names, dest)
        if any(n.startswith(BOOT_PREFIX) for n in names):
            images = self._boot_images(path, dest / "el-torito")
            found.update({n: f for n, f in images.items() if n in names})
        return found

    def _boot_images(self, path: Path, into: Path) -> dict[str, Path]:
        """El Torito images as pseudo-members `[el-torito]/NAME`: they may lie outside the tree."""
        if shutil.which("xorriso") is None:
            return {}
        into.mkdir(parents=True, exist_ok=True)
        run.run(["xorriso", "-osirrox", "on", "-indev", str(path), "-extract_boot_images", str(into)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return {BOOT_PREFIX + p.name: p for p in sorted(into.iterdir()) if p.is_file()}


class FatReader:
    """A FAT12/16/32 image, parsed here: every file and directory with its long name and the
    time written in its directory entry (FAT stores local time, so a build's time zone shows
    up as a changed mtime); the volume serial and label are meta members."""

    kind = "fat"

    def members(self, path: Path) -> Iterator[Member]:
        with path.open("rb") as f:
            fat = _Fat(f)
            yield _meta("(volume serial)", fat.serial)
            yield _meta("(volume label)", fat.label)
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
                    target = dest / _safe_name(index, name)
                    target.write_bytes(fat.read(entry))
                    found[name] = target
        return found


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

    def walk(self, cluster: int | None = None, prefix: str = "") -> Iterator[tuple[str, _FatEntry]]:
        if cluster is None and not self.root_cluster:
            self.f.seek(self.root_start)
            raw = self.f.read(self.root_size)
        else:
            raw = self._chain(self.root_cluster if cluster is None else cluster)
        entries = sorted(self._entries(raw))
        for name, entry in entries:
            yield prefix + name, entry
            if entry.is_dir:
                yield from self.walk(entry.cluster, f"{prefix}{name}/")

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


class Ext4Reader:
    """ext4 through fuse2fs, read-only, no root needed; UUID and hash seed are meta members."""

    kind = "ext4"

    @contextlib.contextmanager
    def _mounted(self, path: Path) -> Iterator[Path]:
        run.require("fuse2fs")
        mnt = Path(tempfile.mkdtemp(prefix="mlos-ext4-"))
        proc = run.run(["fuse2fs", str(path), str(mnt), "-o", "ro,fakeroot"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            mnt.rmdir()
            raise MissingToolError("fuse2fs", "fuse2fs") if shutil.which("fuse2fs") is None else \
                OSError(f"fuse2fs could not mount {path}: {proc.stderr.decode(errors='replace')}")
        try:
            yield mnt
        finally:
            run.run(["fusermount3", "-u", str(mnt)], check=False, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
            with contextlib.suppress(OSError):
                mnt.rmdir()

    def members(self, path: Path) -> Iterator[Member]:
        with path.open("rb") as f:
            f.seek(1024)
            sb = f.read(1024)
        yield _meta("(filesystem uuid)", str(uuid.UUID(bytes=sb[104:120])))
        yield _meta("(volume label)", sb[120:136].rstrip(b"\0").decode(errors="replace"))
        yield _meta("(htree hash seed)", str(uuid.UUID(bytes=sb[236:252])))
        with self._mounted(path) as root:
            for member in walk_members(root, exact=True):
                if member.name.split("/", 1)[0] != "lost+found":
                    yield member

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found = {}
        with self._mounted(path) as root:
            for index, name in enumerate(sorted(names)):
                if (root / name).is_file():
                    target = dest / _safe_name(index, name)
                    shutil.copyfile(root / name, target)
                    found[name] = target
        return found


SECTOR = 512


class QcowReader:
    """A qcow2 image, read as the raw disk it holds (one member, `disk.raw`, from qemu-img):
    the disk inside is then read like any raw disk, and its listing is shared with one."""

    kind = "qcow2"
    RAW = "disk.raw"

    def __init__(self) -> None:
        self.keep: Path | None = None
        self.kept: dict[str, Path] = {}

    def _raw(self, path: Path, dest: Path) -> Path:
        target = dest / self.RAW
        run.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(target)],
                stdout=subprocess.DEVNULL)
        return target

    def members(self, path: Path) -> Iterator[Member]:
        with tempfile.TemporaryDirectory(prefix="mlos-qcow2-") as tmp:
            raw = self._raw(path, self.keep or Path(tmp))
            with raw.open("rb") as f:
                digest, nested = _hash_and_hint(f)
            if self.keep is not None:
                self.kept[self.RAW] = raw
            yield Member(self.RAW, "file", 0o644, 0, 0, 0, raw.stat().st_size, digest, nested=nested)

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        return {self.RAW: self._raw(path, dest)} if self.RAW in names else {}


class GptReader:
    """A GPT disk: protective MBR (boot code), each partition as a member, GUIDs as meta."""

    kind = "gpt"

    def _table(self, path: Path) -> tuple[str, list[tuple[str, str, int, int]]]:
        with path.open("rb") as f:
            f.seek(SECTOR)
            header = f.read(92)
            disk_guid = str(uuid.UUID(bytes_le=header[56:72]))
            entries_lba, count, size = struct.unpack_from("<QII", header, 72)
            f.seek(entries_lba * SECTOR)
            table = f.read(count * size)
        parts = []
        for i in range(count):
            e = table[i * size:(i + 1) * size]
            if e[:16] == b"\0" * 16:
                continue
            first, last = struct.unpack_from("<QQ", e, 32)
            label = e[56:128].decode("utf-16-le", errors="replace").rstrip("\0") or "part"
            parts.append((f"p{i + 1}-{label}", str(uuid.UUID(bytes_le=e[16:32])), first, last))
        return disk_guid, parts

    def members(self, path: Path) -> Iterator[Member]:
        disk_guid, parts = self._table(path)
        yield _meta("(disk guid)", disk_guid)
        with path.open("rb") as f:
            mbr = f.read(440)
        yield Member("(mbr boot code)", "file", 0o644, 0, 0, 0, 440, sha256_bytes(mbr))
        for name, part_guid, first, last in parts:
            yield _meta(f"{name} (partition guid)", part_guid)
            length = (last - first + 1) * SECTOR
            with path.open("rb") as f:
                f.seek(first * SECTOR)
                digest, nested = _hash_and_hint(f, limit=length)
            yield Member(name, "file", 0o644, 0, 0, 0, length, digest, nested=nested)

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        _, parts = self._table(path)
        found = {}
        for index, (name, _, first, last) in enumerate(parts):
            if name not in names:
                continue
            target = dest / _safe_name(index, name)
            _copy_range(path, target, first * SECTOR, (last - first + 1) * SECTOR)
            found[name] = target
        if "(mbr boot code)" in names:
            target = dest / "mbr-boot-code"
            with path.open("rb") as src:
                target.write_bytes(src.read(440))
            found["(mbr boot code)"] = target
        return found


def _copy_range(src: Path, dest: Path, offset: int, length: int) -> None:
    """Copy a byte range in the kernel (copy_file_range), falling back to read/write."""
    with src.open("rb") as fin, dest.open("wb") as fout:
        done = 0
        try:
            while done < length:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), length - done, offset + done)
                if n == 0:
                    break
                done += n
        except OSError:
            fin.seek(offset + done)
            fout.seek(done)
            while done < length:
                chunk = fin.read(min(CHUNK * 8, length - done))
                if not chunk:
                    break
                fout.write(chunk)
                done += len(chunk)


def image_reader_for(path: Path) -> Reader | None:
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(510)
        mbr_sig = f.read(2)
        f.seek(54)
        fat16 = f.read(3)
        f.seek(82)
        fat32 = f.read(3)
        f.seek(SECTOR)
        gpt = f.read(8)
        f.seek(1024)
        ext_sb = f.read(64)
        ext_magic = ext_sb[56:58]
        f.seek(32769)
        iso = f.read(5)
    if head == b"hsqs":
        return SquashfsReader()
    if head == b"QFI\xfb":
        return QcowReader()
    if iso == b"CD001":
        return IsoReader()
    if gpt == b"EFI PART":
        return GptReader()
    # The magic is two bytes only: also ask for a sane block size and inode count.
    if ext_magic == b"\x53\xef" and len(ext_sb) == 64 and \
            struct.unpack_from("<I", ext_sb, 24)[0] <= 6 and struct.unpack_from("<I", ext_sb, 0)[0] > 0:
        return Ext4Reader()
    if mbr_sig == b"\x55\xaa" and b"FAT" in (fat16, fat32):
        return FatReader()
    return None
