"""Readers for the containers our artifacts are made of, streaming, never whole files in memory.

Each reader lists a container's members (name, type, metadata, sha256 of the content) in
one pass, and extracts chosen members in another. Containers are recognised by their bytes
(magic numbers), not by their names.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, cast, runtime_checkable

from mlos_repro import run

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type: str  # file, dir, symlink, hardlink, char, block, fifo
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    sha256: str = ""  # files only
    target: str = ""  # symlinks and hard links
    nested: bool = False  # the content starts like a container we may understand


class Reader(Protocol):
    kind: str

    def members(self, path: Path) -> Iterator[Member]: ...

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        """Write the named file members under dest; returns name -> extracted file."""
        ...


@runtime_checkable
class KeepsNested(Protocol):
    """A reader that can keep the nested containers it passes while listing (set `keep`)."""

    keep: Path | None
    kept: dict[str, Path]


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _hash_stream(f: _Readable, out: IO[bytes] | None = None, limit: int | None = None) -> str:
    return _hash_and_hint(f, out, limit)[0]


def _hash_and_hint(f: _Readable, out: IO[bytes] | None = None, limit: int | None = None,
                   keep: Callable[[], IO[bytes]] | None = None) -> tuple[str, bool]:
    """sha256 of the stream, and whether its first bytes look like a container.

    With `keep`, a stream that looks like a container is also written to the file keep()
    opens, so that the caller need not read the outer container a second time for it.
    """
    h = hashlib.sha256()
    remaining = limit
    nested: bool | None = None
    own: IO[bytes] | None = None
    try:
        while remaining is None or remaining > 0:
            chunk = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                break
            if nested is None:
                nested = looks_nested(chunk)
                if nested and keep is not None and out is None:
                    out = own = keep()
            h.update(chunk)
            if out is not None:
                out.write(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    finally:
        if own is not None:
            own.close()
    return h.hexdigest(), bool(nested)


def looks_nested(head: bytes) -> bool:
    """A cheap test on the first bytes: might this be a container a reader understands?"""
    return (head.startswith((b"!<arch>\n", b"070701", b"070702", b"hsqs"))
            or compression_of(head) is not None
            or head[257:262] == b"ustar"
            or head[32769:32774] == b"CD001"
            or head[512:520] == b"EFI PART"
            or head[1080:1082] == b"\x53\xef"
            or (head[510:512] == b"\x55\xaa" and b"FAT" in (head[54:57], head[82:85])))


def file_hint(path: Path) -> bool:
    with path.open("rb") as f:
        return looks_nested(f.read(40 << 10))


def _safe_name(index: int, name: str) -> str:
    """A flat, collision-free file name for an extracted member."""
    tail = name.rstrip("/").rsplit("/", 1)[-1] or "member"
    return f"{index:05d}-{tail}"


def walk_members(root: Path, *, exact: bool) -> Iterator[Member]:
    """A directory tree as members, sorted. exact=False drops owners and mtimes (how the store
    sees a tree); exact=True keeps them (a mounted file system)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            rel = full.relative_to(root).as_posix()
            uid, gid, mtime = (st.st_uid, st.st_gid, int(st.st_mtime)) if exact else (0, 0, 0)
            if stat.S_ISLNK(st.st_mode):
                yield Member(rel, "symlink", 0o777, uid, gid, mtime, 0, target=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                yield Member(rel, "dir", stat.S_IMODE(st.st_mode), uid, gid, mtime, 0)
            elif stat.S_ISREG(st.st_mode):
                with full.open("rb") as f:
                    digest, nested = _hash_and_hint(f)
                yield Member(rel, "file", stat.S_IMODE(st.st_mode), uid, gid, mtime, st.st_size,
                             digest, nested=nested)
            else:
                yield Member(rel, "other", stat.S_IMODE(st.st_mode), uid, gid, mtime, 0)


# -- compression ----------------------------------------------------------------

COMPRESSIONS: dict[str, bytes] = {
    "gzip": b"\x1f\x8b",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "bzip2": b"BZh",
}


def compression_of(head: bytes) -> str | None:
    return next((name for name, magic in COMPRESSIONS.items() if head.startswith(magic)), None)


@contextmanager
def decompressed(path: Path) -> Iterator[IO[bytes]]:
    """A stream of path's content with any single compression layer removed."""
    with path.open("rb") as raw:
        comp = compression_of(raw.read(8))
    if comp == "gzip":
        with gzip.open(path, "rb") as g:
            yield cast(IO[bytes], g)
    elif comp == "xz":
        with lzma.open(path, "rb") as x:
            yield cast(IO[bytes], x)
    elif comp == "bzip2":
        with bz2.open(path, "rb") as b:
            yield cast(IO[bytes], b)
    elif comp == "zstd":
        with run.stream(["zstd", "-dc", "--", str(path)]) as z:
            yield z
    else:
        with path.open("rb") as f:
            yield f


def _peek(path: Path, size: int = 512) -> bytes:
    with decompressed(path) as f:
        data = f.read(size)
    return data


# -- tar --------------------------------------------------------------------------

_TAR_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
              tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
              tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "file"}


def _tar_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


class TarReader:
    """Also keeps the members that look like containers while listing, when `keep` is set."""

    kind = "tar"

    def __init__(self) -> None:
        self.keep: Path | None = None
        self.kept: dict[str, Path] = {}

    def _each(self, path: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        with decompressed(path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                yield info, tar

    def members(self, path: Path) -> Iterator[Member]:
        for index, (info, tar) in enumerate(self._each(path)):
            digest, nested = "", False
            name = _tar_name(info.name)
            if info.isfile():
                fobj = tar.extractfile(info)
                assert fobj is not None
                keeper = None
                if self.keep is not None and name not in self.kept:
                    target = self.keep / _safe_name(index, name)

                    def keeper(target: Path = target, name: str = name) -> IO[bytes]:
                        self.kept[name] = target
                        return target.open("wb")
                digest, nested = _hash_and_hint(fobj, keep=keeper)
            yield Member(_tar_name(info.name), _TAR_TYPES.get(info.type, "other"), info.mode,
                         info.uid, info.gid, int(info.mtime), info.size, digest, info.linkname, nested)

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for index, (info, tar) in enumerate(self._each(path)):
            name = _tar_name(info.name)
            if name in names and info.isfile() and name not in found:
                fobj = tar.extractfile(info)
                assert fobj is not None
                target = dest / _safe_name(index, name)
                with target.open("wb") as out:
                    shutil.copyfileobj(fobj, out, CHUNK)
                found[name] = target
        return found


# -- ar (.deb) ------------------------------------------------------------------------

class ArReader:
    kind = "ar"

    def _each(self, path: Path) -> Iterator[tuple[Member, IO[bytes]]]:
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
                yield Member(name, "file", stat.S_IMODE(mode), uid, gid, mtime, size), f
                f.seek(start + size + (size % 2))

    def members(self, path: Path) -> Iterator[Member]:
        for member, f in self._each(path):
            digest, nested = _hash_and_hint(f, limit=member.size)
            yield Member(member.name, member.type, member.mode, member.uid, member.gid,
                         member.mtime, member.size, digest, nested=nested)

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for index, (member, f) in enumerate(self._each(path)):
            if member.name in names and member.name not in found:
                target = dest / _safe_name(index, member.name)
                with target.open("wb") as out:
                    _hash_stream(f, out, limit=member.size)
                found[member.name] = target
        return found


# -- cpio (newc) ------------------------------------------------------------------

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
                    extracted = dest / _safe_name(index, name)
                    with extracted.open("wb") as out:
                        digest, nested = _hash_and_hint(f, out, limit=size)
                else:
                    digest, nested = _hash_and_hint(f, limit=size)
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


# -- a single compressed file -----------------------------------------------------------

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


def reader_for(path: Path) -> Reader | None:
    """The reader that understands path's bytes, or None."""
    from mlos_repro.verify.images import image_reader_for

    if not path.is_file():
        return None
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(b"!<arch>\n"):
        return ArReader()
    if (image := image_reader_for(path)) is not None:
        return image
    try:
        inner = _peek(path, 512)
    except (OSError, EOFError, lzma.LZMAError):
        return None
    if inner[:6] in (b"070701", b"070702"):
        return CpioReader()
    if len(inner) >= 262 and inner[257:262] == b"ustar":
        return TarReader()
    if compression_of(head) is not None:
        return CompressedReader()
    return None
