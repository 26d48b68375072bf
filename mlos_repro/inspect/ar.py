"""ar archives, such as .deb files."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mlos_repro.inspect.members import Member, hash_and_hint, hash_stream, safe_name


class ArReader:
    kind = "ar"

    def _each(self, path: Path) -> Iterator[tuple[Member, IO[bytes]]]:
        total = path.stat().st_size
        with path.open("rb") as f:
            if f.read(8) != b"!<arch>\n":
                return
            while True:
                header = f.read(60)
                if len(header) < 60:
                    return
                name = header[0:16].decode(errors="replace").rstrip().rstrip("/")
                mtime = int(header[16:28].strip() or 0)
                uid = int(header[28:34].strip() or 0)
                gid = int(header[34:40].strip() or 0)
                mode = int(header[40:48].strip() or b"0", 8)
                size = int(header[48:58].strip())
                start = f.tell()
                if header[58:60] != b"`\n" or not 0 <= size <= total - start:
                    raise ValueError(f"ar member {name!r} at byte {start - 60}: size {size} or header end "
                                     f"{header[58:60]!r} does not fit the {total}-byte archive")
                yield Member(name, "file", stat.S_IMODE(mode), uid, gid, mtime, size), f
                f.seek(start + size + (size % 2))

    def members(self, path: Path) -> Iterator[Member]:
        for member, f in self._each(path):
            digest, nested = hash_and_hint(f, limit=member.size)
            yield Member(member.name, member.type, member.mode, member.uid, member.gid,
                         member.mtime, member.size, digest, nested=nested)

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for index, (member, f) in enumerate(self._each(path)):
            if member.name in names:  # a name twice: the last, as `ar x` leaves it
                target = dest / safe_name(index, member.name)
                with target.open("wb") as out:
                    hash_stream(f, out, limit=member.size)
                found[member.name] = target
        return found
