"""What every reader yields and the helpers they share: Member, the Reader protocol, hashing
while streaming, container hints, safe extraction names, directory walks, decompression."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import stat
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, cast, runtime_checkable

from mlos_repro import run
from mlos_repro.digest import sha256_bytes
from mlos_repro.errors import MlosReproError

run.TOOLS.update({"sqfs2tar": "squashfs-tools-ng", "bsdtar": "libarchive-tools", "xorriso": "xorriso",
                  "fuse2fs": "fuse2fs", "qemu-img": "qemu-utils", "prlimit": "util-linux"})


CHUNK = 1 << 20

# What bytes that are not what their magic promised make a reader raise. Such a container is
# then a leaf, with the reason recorded: a function of the bytes and the readers' code, so it
# may be cached. Everything else (a missing tool, an I/O error, a full disk: an OSError with
# an errno) says the bytes cannot be read *here*; it is raised, and nothing is cached.
CONTENT_ERRORS = (EOFError, ValueError, struct.error, tarfile.TarError, lzma.LZMAError, zlib.error, OSError)


def not_this_format(e: BaseException) -> bool:
    """Whether `e` (one of CONTENT_ERRORS) is about the bytes, not about this machine."""
    if isinstance(e, MlosReproError):
        return False
    if isinstance(e, OSError) and e.errno is not None:
        return False
    return isinstance(e, CONTENT_ERRORS)


# A container's content may expand its bytes at most this much (and always to 1 GiB): beyond
# it, a decompression bomb or a sparse member claiming a terabyte is refused, not hashed.
EXPANSION_FLOOR = 1 << 30
EXPANSION_RATIO = 200


def expansion_limit(packed: int) -> int:
    return max(EXPANSION_FLOOR, EXPANSION_RATIO * packed)


class Bounded:
    """A stream that refuses to yield more than `limit` bytes (ValueError naming `what`)."""

    def __init__(self, f: IO[bytes], limit: int, what: str) -> None:
        self.f, self.limit, self.what, self.done = f, limit, what, 0

    def read(self, n: int = -1, /) -> bytes:
        want = self.limit + 1 - self.done if n is None or n < 0 else min(n, self.limit + 1 - self.done)
        data = self.f.read(max(want, 0))
        self.done += len(data)
        if self.done > self.limit:
            raise ValueError(f"{self.what} expands beyond {self.limit >> 20} MiB "
                             f"({EXPANSION_RATIO}x its size, at least {EXPANSION_FLOOR >> 30} GiB): "
                             "a decompression bomb?")
        return data


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)]}


def printable(text: str) -> str:
    """`text` with control characters shown as \\xNN: a member name from a hostile image can
    neither clear the screen nor begin a line of its own."""
    return text.translate(_CONTROL)


# Every external tool that reads untrusted bytes runs under these limits (prlimit, util-linux):
# a hostile image can make it neither eat the machine's memory nor spin for ever.
TOOL_MEMORY = 4 << 30  # address space, bytes
TOOL_CPU_SECONDS = 900


def limited(argv: list[str]) -> list[str]:
    """argv run under prlimit's memory and CPU-time limits (the tool itself must exist: exit 3)."""
    run.require(argv[0])
    return ["prlimit", f"--as={TOOL_MEMORY}", f"--cpu={TOOL_CPU_SECONDS}", "--", *argv]


def why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


COMPRESSIONS: dict[str, bytes] = {
    "gzip": b"\x1f\x8b",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "bzip2": b"BZh",
}


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


def hash_stream(f: _Readable, out: IO[bytes] | None = None, limit: int | None = None) -> str:
    return hash_and_hint(f, out, limit)[0]


def hash_and_hint(f: _Readable, out: IO[bytes] | None = None, limit: int | None = None,
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


def safe_name(index: int, name: str) -> str:
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
                    digest, nested = hash_and_hint(f)
                yield Member(rel, "file", stat.S_IMODE(st.st_mode), uid, gid, mtime, st.st_size,
                             digest, nested=nested)
            else:
                yield Member(rel, "other", stat.S_IMODE(st.st_mode), uid, gid, mtime, 0)


def compression_of(head: bytes) -> str | None:
    return next((name for name, magic in COMPRESSIONS.items() if head.startswith(magic)), None)


@contextmanager
def decompressed(path: Path) -> Iterator[IO[bytes]]:
    """A stream of path's content with any single compression layer removed, bounded by
    expansion_limit (a decompression bomb raises ValueError instead of filling the disk)."""
    with path.open("rb") as raw:
        comp = compression_of(raw.read(8))
    limit = expansion_limit(path.stat().st_size)
    if comp == "gzip":
        with gzip.open(path, "rb") as g:
            yield cast(IO[bytes], Bounded(cast(IO[bytes], g), limit, f"{path.name} (gzip)"))
    elif comp == "xz":
        with lzma.open(path, "rb") as x:
            yield cast(IO[bytes], Bounded(cast(IO[bytes], x), limit, f"{path.name} (xz)"))
    elif comp == "bzip2":
        with bz2.open(path, "rb") as b:
            yield cast(IO[bytes], Bounded(cast(IO[bytes], b), limit, f"{path.name} (bzip2)"))
    elif comp == "zstd":
        with run.stream(limited(["zstd", "-dc", "--", str(path)])) as z:
            yield cast(IO[bytes], Bounded(z, limit, f"{path.name} (zstd)"))
    else:
        with path.open("rb") as f:
            yield f


def peek(path: Path, size: int = 512) -> bytes:
    with decompressed(path) as f:
        data = f.read(size)
    return data


def meta_member(name: str, value: str) -> Member:
    return Member(name, "meta", 0, 0, 0, 0, len(value), sha256_bytes(value.encode()), value)


def copy_range(src: Path, dest: Path, offset: int, length: int) -> None:
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
