"""The layered comparison: name the innermost member that differs, and how.

Two files are compared by digest; if they differ and both are a container we understand,
their member lists are compared (content, mode, owner, mtime, order, added/removed), and
every member whose content differs is extracted from both sides and compared the same way,
recursively. What remains are leaf differences, e.g.
`pkg.deb → data.tar.xz → usr/lib/os-release: content`. Everything streams; only members
that differ are extracted, to a work directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlos_repro.digest import sha256_file
from mlos_repro.verify.formats import Member, reader_for

ARROW = " → "
# Extract the named file members of side 0 (first) or 1 (second); name -> extracted file.
Extract = Callable[[set[str], int], dict[str, Path]]


@dataclass(frozen=True, slots=True)
class Difference:
    path: tuple[str, ...]
    # content, mode, owner, mtime, type, target, id, order, added, removed, container
    aspect: str
    first: str
    second: str
    # For content leaves: the two files (extracted when nested), and whether the leaf is a
    # binary format the layered comparison does not understand (diffoscope gets it whole).
    first_file: Path | None = None
    second_file: Path | None = None
    opaque: bool = False

    @property
    def where(self) -> str:
        return ARROW.join(self.path)

    def to_json(self) -> dict[str, object]:
        return {"path": self.where, "aspect": self.aspect, "first": self.first,
                "second": self.second}


class Comparison:
    """Compares files or directories; extracted members go under `work`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._n = 0

    def _scratch(self) -> Path:
        self._n += 1
        d = self.work / f"layer-{self._n:04d}"
        d.mkdir(parents=True)
        return d

    def paths(self, a: Path, b: Path, label: str) -> list[Difference]:
        if a.is_dir() and b.is_dir():
            return self.members_of((label,), list(_dir_members(a)), list(_dir_members(b)),
                                   lambda names, side: _dir_files(a if side == 0 else b, names))
        if a.is_dir() != b.is_dir():
            return [Difference((label,), "type", _kind(a), _kind(b))]
        return self.files(a, b, (label,))

    def files(self, a: Path, b: Path, path: tuple[str, ...], digests: tuple[str, str] | None = None
              ) -> list[Difference]:
        da, db = digests or (sha256_file(a), sha256_file(b))
        if da == db:
            return []
        ra, rb = reader_for(a), reader_for(b)
        if ra is None or rb is None or ra.kind != rb.kind:
            opaque = not (ra is None and rb is None and _is_text(a) and _is_text(b))
            return [Difference(path, "content", f"sha256:{da}", f"sha256:{db}", a, b, opaque=opaque)]
        first, second = list(ra.members(a)), list(rb.members(b))
        dirs = (self._scratch(), self._scratch())

        def extract(names: set[str], side: int) -> dict[str, Path]:
            reader, src = (ra, a) if side == 0 else (rb, b)
            return reader.extract(src, names, dirs[side])

        found = self.members_of(path, first, second, extract)
        if not found:
            found = [Difference(path, "container", f"sha256:{da}", f"sha256:{db}")]
        return found

    def members_of(self, path: tuple[str, ...], first: list[Member], second: list[Member],
                   extract: Extract) -> list[Difference]:
        out: list[Difference] = []
        a_by, b_by = _index(first), _index(second)
        for name in sorted(set(a_by) - set(b_by)):
            out.append(Difference((*path, name), "removed", _summary(a_by[name]), "(absent)"))
        for name in sorted(set(b_by) - set(a_by)):
            out.append(Difference((*path, name), "added", "(absent)", _summary(b_by[name])))
        common = [m.name for m in first if m.name in b_by]
        if common != [m.name for m in second if m.name in a_by]:
            out.append(Difference(path, "order", _order_excerpt(common, [m.name for m in second
                                                                            if m.name in a_by]), ""))
        differing: list[str] = []
        for name in sorted(set(a_by) & set(b_by)):
            ma, mb = a_by[name], b_by[name]
            out.extend(_metadata(path, ma, mb))
            if ma.type == mb.type == "file" and ma.sha256 != mb.sha256:  # meta: reported above
                differing.append(name)
        if differing:
            files_a = extract(set(differing), 0)
            files_b = extract(set(differing), 1)
            for name in differing:
                fa, fb = files_a.get(name), files_b.get(name)
                if fa is None or fb is None:
                    out.append(Difference((*path, name), "content", f"sha256:{a_by[name].sha256}",
                                          f"sha256:{b_by[name].sha256}"))
                    continue
                out.extend(self.files(fa, fb, (*path, name), (a_by[name].sha256, b_by[name].sha256)))
        return out


def _index(members: list[Member]) -> dict[str, Member]:
    seen: dict[str, Member] = {}
    for m in members:
        seen.setdefault(m.name.rstrip("/") or m.name, m)
    return seen


def _metadata(path: tuple[str, ...], a: Member, b: Member) -> Iterator[Difference]:
    where = (*path, a.name.rstrip("/") or a.name)
    if a.type != b.type:
        yield Difference(where, "type", a.type, b.type)
        return
    if a.type == "meta":  # an identifier of the container (GUID, serial, UUID, seed)
        if a.target != b.target:
            yield Difference(where, "id", a.target, b.target)
        return
    if a.mode != b.mode:
        yield Difference(where, "mode", f"{a.mode:04o}", f"{b.mode:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        yield Difference(where, "owner", f"{a.uid}:{a.gid}", f"{b.uid}:{b.gid}")
    if a.mtime != b.mtime:
        yield Difference(where, "mtime", str(a.mtime), str(b.mtime))
    if a.target != b.target:
        yield Difference(where, "target", a.target, b.target)


def _summary(m: Member) -> str:
    return f"{m.type} {m.mode:04o} {m.size} bytes" + (f" sha256:{m.sha256}" if m.sha256 else "")


def _order_excerpt(a: list[str], b: list[str]) -> str:
    i = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return f"member order differs from position {i}: {a[i]!r} vs {b[i]!r}"


def _kind(p: Path) -> str:
    return "directory" if p.is_dir() else "file" if p.is_file() else "absent"


def _is_text(p: Path) -> bool:
    with p.open("rb") as f:
        head = f.read(8192)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def _dir_members(root: Path) -> Iterator[Member]:
    """A directory as the store sees it: names, types, modes and contents (no owners, mtimes)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            rel = full.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                yield Member(rel, "symlink", 0o777, 0, 0, 0, 0, target=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                yield Member(rel, "dir", stat.S_IMODE(st.st_mode), 0, 0, 0, 0)
            elif stat.S_ISREG(st.st_mode):
                yield Member(rel, "file", stat.S_IMODE(st.st_mode), 0, 0, 0, st.st_size,
                             sha256_file(full))


def _dir_files(root: Path, names: set[str]) -> dict[str, Path]:
    return {name: root / name for name in names}
