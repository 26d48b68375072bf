"""cpio archives in the newc format (initramfs images)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mlos_repro.inspect.members import Member, decompressed, hash_and_hint, safe_name
from mlos_repro.inspect.tar import _tar_name

_CPIO_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
               stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}


class _Counting:
    """A stream that knows its position, for cpio's 4-byte alignment."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def align(self, to: int = 4) -> None:
        if self.pos % to:
            self.read(to - self.pos % to)


class CpioReader:
    kind = "cpio"

    def _walk(self, path: Path, names: frozenset[str] = frozenset(),
              dest: Path | None = None) -> Iterator[tuple[Member, Path | None]]:
        with decompressed(path) as raw:
            f = _Counting(raw)
            index = 0
            while True:
                header = f.read(110)
                if len(header) < 110 or header[:6] not in (b"070701", b"070702"):
                    return
                fields = [int(header[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
                mode, uid, gid, mtime, size, namesize = (fields[1], fields[2], fields[3], fields[5],
                                                         fields[6], fields[11])
                name = _tar_name(f.read(namesize).rstrip(b"\0").decode(errors="replace"))
                f.align()
                if name == "TRAILER!!!":
                    return
                kind = _CPIO_TYPES.get(stat.S_IFMT(mode), "other")
                digest, target, extracted, nested = "", "", None, False
                if kind == "symlink":
                    target = f.read(size).decode(errors="replace")
                elif dest is not None and name in names and kind == "file":
                    extracted = dest / safe_name(index, name)
                    with extracted.open("wb") as out:
                        digest, nested = hash_and_hint(f, out, limit=size)
                else:
                    digest, nested = hash_and_hint(f, limit=size)
                f.align()
                yield Member(name, kind, stat.S_IMODE(mode), uid, gid, mtime, size,
                             digest if kind == "file" else "", target, nested and kind == "file"), \
                    extracted
                index += 1

    def members(self, path: Path) -> Iterator[Member]:
        for member, _ in self._walk(path):
            yield member

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for member, extracted in self._walk(path, frozenset(names), dest):
            if extracted is not None and member.name not in found:
                found[member.name] = extracted
        return found
