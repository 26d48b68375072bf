"""A single compressed file (gzip, xz, zstd, bzip2) as one member: its decompressed content."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from mlos_repro.inspect.members import CHUNK, Member, decompressed


class CompressedReader:
    """gzip/xz/zstd/bzip2 around something that is not a tar or cpio: one member."""

    kind = "compressed"

    def _name(self, path: Path) -> str:
        return "(decompressed)"

    def members(self, path: Path) -> Iterator[Member]:
        with decompressed(path) as f:
            h = hashlib.sha256()
            size = 0
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
        yield Member(self._name(path), "file", 0o644, 0, 0, 0, size, h.hexdigest())

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        target = dest / "00000-decompressed"
        with decompressed(path) as f, target.open("wb") as out:
            shutil.copyfileobj(f, out, CHUNK)
        return {self._name(path): target}
