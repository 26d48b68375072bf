"""The layered comparison: name the innermost member that differs, and how.

Two sides are compared by digest; if they differ and both are a container we understand,
their member lists are compared (content, mode, owner, mtime, order, added/removed, ids),
and every member whose content differs is compared the same way, recursively. What remains
are leaf differences, e.g. `pkg.deb → data.tar.xz → usr/lib/os-release: content`.

A side is either a file read now (FileSide: streamed, only differing members extracted) or
a member manifest recorded at build time (ManifestSide: no bytes read at all until
diffoscope needs a leaf, which is then extracted along its path only).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mlos_repro.digest import sha256_file
from mlos_repro.inspect.detect import reader_for
from mlos_repro.inspect.members import (
    CONTENT_ERRORS,
    KeepsNested,
    Member,
    Reader,
    looks_nested,
    not_this_format,
    safe_name,
    walk_members,
    why,
)
from mlos_repro.inspect.squashfs_index import MAGIC, Entry, Image

ARROW = " → "
MAX_DEPTH = 32  # containers nested deeper are compared as leaves, with that said


class Side(Protocol):
    @property
    def digest(self) -> str: ...

    def known_digest(self) -> str | None:
        """The digest if it costs nothing to know (recorded, or listed by the parent)."""
        ...

    def kind(self) -> str | None:
        """The container kind, or None for a leaf."""
        ...

    def listing(self) -> list[Member]: ...

    def children(self, names: set[str]) -> dict[str, Side]: ...

    def file(self) -> Path | None:
        """The bytes, as a file, for diffoscope (extracted on demand)."""
        ...


@dataclass
class Difference:
    path: tuple[str, ...]
    # content, mode, owner, mtime, type, target, id, order, added, removed, container,
    # unreadable (a side that looks like a container but cannot be read as one: why)
    aspect: str
    first: str
    second: str
    sides: tuple[Side, Side] | None = field(default=None, repr=False, compare=False)
    opaque: bool = False  # a binary leaf whose format we do not understand

    @property
    def where(self) -> str:
        return ARROW.join(self.path)

    def to_json(self) -> dict[str, object]:
        return {"path": self.where, "aspect": self.aspect, "first": self.first,
                "second": self.second}


class FileSide:
    """A file on disk; containers are read with the readers, members extracted on demand."""

    def __init__(self, path: Path, work: Path, digest: str | None = None) -> None:
        self.path = path
        self.work = work
        self._digest = digest
        self._reader: Reader | bool | None = False
        self._listing: list[Member] | None = None
        self.error: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = sha256_file(self.path)
        return self._digest

    def known_digest(self) -> str | None:
        return self._digest

    def _read(self) -> Reader | None:
        if self._reader is False:
            reader = None
            try:
                reader = reader_for(self.path)
                if isinstance(reader, KeepsNested):
                    reader.keep = _scratch(self.work)  # nested containers, kept while listing
                if reader is not None:
                    self._listing = list(reader.members(self.path))
                self._reader = reader
            except CONTENT_ERRORS as e:
                if not not_this_format(e):
                    raise  # a missing tool, an I/O error: not the bytes' fault, said as such
                self.error = f"not readable as {reader.kind if reader else 'a container'}: {why(e)}"
                self._reader, self._listing = None, None
        return self._reader if not isinstance(self._reader, bool) else None

    def kind(self) -> str | None:
        reader = self._read()
        return reader.kind if reader is not None else None

    def listing(self) -> list[Member]:
        self._read()
        return self._listing or []

    def children(self, names: set[str]) -> dict[str, Side]:
        reader = self._read()
        if reader is None:
            return {}
        digests = {m.name: m.sha256 for m in self.listing()}
        found = {n: p for n, p in getattr(reader, "kept", {}).items() if n in names}
        extents: dict[str, tuple[int, int]] = getattr(reader, "_extents", {})
        windows: dict[str, Side] = {
            n: WindowSide(self.path, n, *extents[n], reader=reader, work=self.work,
                          digest=digests.get(n) or None)
            for n in names - set(found) if n in extents}
        names = names - set(windows)
        if names - set(found):
            try:
                found.update(reader.extract(self.path, names - set(found), _scratch(self.work)))
            except CONTENT_ERRORS as e:
                if not not_this_format(e):
                    raise
                self.error = f"members cannot be extracted: {why(e)}"
        return {**{n: FileSide(p, self.work, digests.get(n) or None) for n, p in found.items()}, **windows}

    def file(self) -> Path | None:
        return self.path


class WindowSide(FileSide):
    """A member stored contiguously inside its container (a file of an ISO): a squashfs image is
    compared in place; anything else is extracted the first time its bytes are needed."""

    def __init__(self, parent: Path, name: str, offset: int, size: int, *, reader: Reader, work: Path,
                 digest: str | None) -> None:
        super().__init__(parent, work, digest)
        self.parent, self.name, self.offset, self.size, self.reader = parent, name, offset, size, reader
        self.materialized = False

    def _materialize(self) -> None:
        if not self.materialized:
            found = self.reader.extract(self.parent, {self.name}, _scratch(self.work))
            if self.name not in found:
                raise ValueError(f"{self.parent.name}: member {self.name!r} cannot be extracted")
            self.path, self.materialized = found[self.name], True

    def source(self) -> tuple[Path, int, int | None]:
        return (self.path, 0, None) if self.materialized else (self.parent, self.offset, self.size)

    @property
    def digest(self) -> str:
        self._materialize()
        return super().digest

    def _read(self) -> Reader | None:
        self._materialize()
        return super()._read()

    def file(self) -> Path | None:
        self._materialize()
        return self.path


class SquashfsSide(FileSide):
    """One of two squashfs images compared through their metadata (squashfs_index): files whose
    stored blocks are equal on both sides are equal and never decompressed; only the others
    (and those on one side only) are read and hashed. Used when both images share compressor
    and block size, else the images are read as any container (sqfs2tar)."""

    def __init__(self, side: FileSide, image: Image, entries: list[Entry], members: list[Member]) -> None:
        super().__init__(side.path, side.work, side.known_digest())
        self.side = side
        self.image = image
        self._members = members
        self._entries = {e.name: e for e in entries if e.type == "file"}

    @staticmethod
    def pair(a: FileSide, b: FileSide) -> tuple[SquashfsSide, SquashfsSide] | None:
        sa, sb = (s.source() if isinstance(s, WindowSide) else (s.path, 0, None) for s in (a, b))
        if not all(_starts(path, offset, MAGIC) for path, offset, _ in (sa, sb)):
            return None
        try:
            ia, ib = _both(lambda: Image(*sa), lambda: Image(*sb))
        except CONTENT_ERRORS as e:
            if not not_this_format(e):
                raise
            return None  # read as any container below, which names what is wrong
        if (ia.compressor, ia.block_size) != (ib.compressor, ib.block_size):
            ia.close()
            ib.close()
            return None
        ea, eb = _both(lambda: list(ia.entries()), lambda: list(ib.entries()))
        keys_a, keys_b = _both(lambda: {e.name: ia.content_key(e) for e in ea if e.type == "file"},
                               lambda: {e.name: ib.content_key(e) for e in eb if e.type == "file"})
        # Equal stored bytes: equal contents (named by the key). Otherwise: the real digest.
        read_a = {n for n in keys_a if keys_b.get(n) != keys_a[n]}
        read_b = {n for n in keys_b if keys_a.get(n) != keys_b[n]}
        by_a, by_b = {e.name: e for e in ea}, {e.name: e for e in eb}
        real_a, real_b = _both(lambda: {n: _real_digest(ia, by_a[n]) for n in sorted(read_a)},
                               lambda: {n: _real_digest(ib, by_b[n]) for n in sorted(read_b)})

        def members(entries: list[Entry], keys: dict[str, str],
                    real: dict[str, tuple[str, bool]]) -> list[Member]:
            def digest(e: Entry) -> str:
                if e.name in real:
                    return real[e.name][0]
                return "key:" + keys[e.name] if e.type == "file" else ""
            return [Member(e.name, e.type, e.mode, e.uid, e.gid, e.mtime, e.size, digest(e), e.target,
                           real.get(e.name, ("", False))[1]) for e in entries]
        return (SquashfsSide(a, ia, ea, members(ea, keys_a, real_a)),
                SquashfsSide(b, ib, eb, members(eb, keys_b, real_b)))

    def kind(self) -> str | None:
        return "squashfs"

    @property
    def digest(self) -> str:
        return self.side.digest

    def file(self) -> Path | None:
        return self.side.file()

    def listing(self) -> list[Member]:
        return self._members

    def children(self, names: set[str]) -> dict[str, Side]:
        digests = {m.name: m.sha256 for m in self._members}
        out: dict[str, Side] = {}
        scratch = _scratch(self.work)
        for index, name in enumerate(sorted(names & set(self._entries))):
            target = scratch / safe_name(index, name)
            with target.open("wb") as f:
                for block in self.image.read(self._entries[name]):
                    f.write(block)
            out[name] = FileSide(target, self.work, digests.get(name) or None)
        return out


def _starts(path: Path, offset: int, magic: bytes) -> bool:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(len(magic)) == magic


def _real_digest(image: Image, entry: Entry) -> tuple[str, bool]:
    """(sha256 of the decompressed contents, whether they start like a container)."""
    h = hashlib.sha256()
    nested = None
    for block in image.read(entry):
        if nested is None:
            nested = looks_nested(block)
        h.update(block)
    return h.hexdigest(), bool(nested)


class ManifestSide:
    """A node of a member manifest recorded at build time."""

    def __init__(self, node: dict[str, Any], digest: str, locate: _Locate) -> None:
        self.node = node
        self._digest = digest
        self.locate = locate

    @property
    def digest(self) -> str:
        return self._digest

    def known_digest(self) -> str | None:
        return self._digest

    def kind(self) -> str | None:
        kind: str | None = self.node.get("kind")
        return kind

    def listing(self) -> list[Member]:
        return [member_from_json(m) for m in self.node.get("members", [])]

    def children(self, names: set[str]) -> dict[str, Side]:
        out: dict[str, Side] = {}
        for m in self.node.get("members", []):
            if m["name"] in names and m["name"] not in out:
                out[m["name"]] = ManifestSide(m.get("inner") or {"kind": None}, m["sha256"],
                                              self.locate.child(m["name"]))
        return out

    def file(self) -> Path | None:
        return self.locate.file()


class _Locate:
    """The path of a manifest node inside the root file, resolved only when bytes are needed."""

    def __init__(self, root: Path, work: Path, chain: tuple[str, ...] = ()) -> None:
        self.root, self.work, self.chain = root, work, chain

    def child(self, name: str) -> _Locate:
        return _Locate(self.root, self.work, (*self.chain, name))

    def file(self) -> Path | None:
        current = self.root
        for name in self.chain:
            if current.is_dir():
                current = current / name
                continue
            reader = reader_for(current)
            if reader is None:
                return None
            found = reader.extract(current, {name}, _scratch(self.work))
            if name not in found:
                return None
            current = found[name]
        return current if current.is_file() else None


def manifest_side(manifest: dict[str, Any], root: Path, work: Path) -> ManifestSide:
    return ManifestSide(manifest["root"], manifest["sha256"], _Locate(root, work))


def member_from_json(m: dict[str, Any]) -> Member:
    return Member(m["name"], m["type"], m["mode"], m["uid"], m["gid"], m["mtime"], m["size"],
                  m.get("sha256", ""), m.get("target", ""), bool(m.get("inner")))


def _scratch(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="layer-", dir=work))  # both sides extract at once


class DirSide:
    """A directory as the store sees it: names, types, modes and contents (no owners, mtimes)."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work

    @property
    def digest(self) -> str:
        return "directory:" + str(self.root)  # never equal: members decide

    def known_digest(self) -> str | None:
        return None

    def kind(self) -> str | None:
        return "directory"

    def listing(self) -> list[Member]:
        return list(dir_members(self.root))

    def children(self, names: set[str]) -> dict[str, Side]:
        return {n: FileSide(self.root / n, self.work) for n in names if (self.root / n).is_file()}

    def file(self) -> Path | None:
        return None


def compare_paths(a: Path, b: Path, label: str, work: Path) -> list[Difference]:
    if a.is_dir() and b.is_dir():
        return compare(DirSide(a, work), DirSide(b, work), (label,))
    if a.is_dir() != b.is_dir():
        return [Difference((label,), "type", _kind(a), _kind(b))]
    return compare(FileSide(a, work), FileSide(b, work), (label,))


def compare(a: Side, b: Side, path: tuple[str, ...]) -> list[Difference]:
    """Both sides are read in parallel (two threads: hashing and the tools release the GIL)."""
    da, db = a.known_digest(), b.known_digest()
    if da is not None and da == db:
        return []
    if len(path) > MAX_DEPTH:
        return [Difference(path, "unreadable", f"containers nested deeper than {MAX_DEPTH} levels",
                           "compared as bytes"), _leaf(a, b, path, both_unknown=False)]
    if isinstance(a, FileSide) and isinstance(b, FileSide) and not isinstance(a, SquashfsSide):
        pair = SquashfsSide.pair(a, b)
        if pair is not None:  # two squashfs images: through their metadata, not sqfs2tar
            a, b = pair
    ka, kb = _both(a.kind, b.kind)
    errors = [getattr(a, "error", None), getattr(b, "error", None)]
    unreadable = [Difference(path, "unreadable", errors[0] or "read", errors[1] or "read")
                  ] if any(errors) else []
    if ka is None or kb is None or ka != kb:
        da, db = _both(lambda: a.digest, lambda: b.digest)
        return [] if da == db else [*unreadable, _leaf(a, b, path, both_unknown=ka is None and kb is None)]
    out = _members(a, b, path)
    if not out:
        # Same members, same metadata: identical, or different only in the container's own bytes.
        da, db = _both(lambda: a.digest, lambda: b.digest)
        if da != db:
            out = [Difference(path, "container", f"sha256:{da}", f"sha256:{db}", (a, b))]
    return out


T = TypeVar("T")


def _both(fa: Callable[[], T], fb: Callable[[], T]) -> tuple[T, T]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.submit(fa), pool.submit(fb)
        return first.result(), second.result()


def _leaf(a: Side, b: Side, path: tuple[str, ...], both_unknown: bool) -> Difference:
    fa, fb = (a.file(), b.file()) if isinstance(a, FileSide) and isinstance(b, FileSide) else (None, None)
    opaque = not both_unknown or (fa is not None and fb is not None and not (_is_text(fa) and _is_text(fb)))
    return Difference(path, "content", f"sha256:{a.digest}", f"sha256:{b.digest}", (a, b), opaque)


def _members(a: Side, b: Side, path: tuple[str, ...]) -> list[Difference]:
    first, second = a.listing(), b.listing()
    out: list[Difference] = [*_duplicates(path, "first", first), *_duplicates(path, "second", second)]
    a_by, b_by = _index(first), _index(second)
    for name in sorted(set(a_by) - set(b_by)):
        out.append(Difference((*path, name), "removed", _summary(a_by[name]), "(absent)"))
    for name in sorted(set(b_by) - set(a_by)):
        out.append(Difference((*path, name), "added", "(absent)", _summary(b_by[name])))
    common_a = [m.name for m in first if m.name in b_by]
    common_b = [m.name for m in second if m.name in a_by]
    if common_a != common_b:
        out.append(Difference(path, "order", _order_excerpt(common_a, common_b), ""))
    differing: list[str] = []
    for name in sorted(set(a_by) & set(b_by)):
        ma, mb = a_by[name], b_by[name]
        out.extend(_metadata(path, ma, mb))
        if ma.type == mb.type == "file" and ma.sha256 != mb.sha256:  # meta: reported above
            differing.append(name)
    if differing:
        ca, cb = _both(lambda: a.children(set(differing)), lambda: b.children(set(differing)))
        for name in differing:
            if name in ca and name in cb:
                out.extend(compare(ca[name], cb[name], (*path, name)))
            else:
                out.append(Difference((*path, name), "content", f"sha256:{a_by[name].sha256}",
                                      f"sha256:{b_by[name].sha256}"))
    return out


def _index(members: list[Member]) -> dict[str, Member]:
    """Members by name; a name listed twice is the last (what `tar -x` leaves on disk)."""
    return {m.name.rstrip("/") or m.name: m for m in members}


def _duplicates(path: tuple[str, ...], side: str, members: list[Member]) -> Iterator[Difference]:
    count: dict[str, list[Member]] = {}
    for m in members:
        count.setdefault(m.name.rstrip("/") or m.name, []).append(m)
    for name, same in sorted(count.items()):
        if len(same) > 1:
            yield Difference((*path, name), "duplicate",
                             f"{side} holds {len(same)} members of this name ("
                             + ", ".join(f"{m.type} sha256:{m.sha256[:12]}" if m.sha256 else m.type
                                         for m in same)
                             + "); the last is compared, as extracting would leave it", "")


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


def dir_members(root: Path) -> Iterator[Member]:
    """A directory as the store sees it: names, types, modes and contents."""
    return walk_members(root, exact=False)
