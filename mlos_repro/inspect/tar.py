"""tar archives (plain or gzip/xz/zstd/bzip2 compressed), and tar streams piped from a tool."""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

from mlos_repro import run
from mlos_repro.inspect.members import (
    CHUNK,
    Bounded,
    Member,
    decompressed,
    expansion_limit,
    hash_and_hint,
    limited,
    safe_name,
)

_TAR_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
              tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
              tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "file"}


STREAM_BUFFER = 1 << 20  # tarfile's default (10 KiB) makes a Python call per 10 KiB of a 1 GiB image


def _tar_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


class TarReader:
    """Also keeps the members that look like containers while listing, when `keep` is set."""

    kind = "tar"

    def __init__(self) -> None:
        self.keep: Path | None = None
        self.kept: dict[str, Path] = {}

    def _each(self, path: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        with decompressed(path) as f, tarfile.open(fileobj=f, mode="r|", bufsize=STREAM_BUFFER) as tar:
            for info in tar:
                yield info, tar

    def members(self, path: Path) -> Iterator[Member]:
        limit = expansion_limit(path.stat().st_size)
        for index, (info, tar) in enumerate(self._each(path)):
            digest, nested = "", False
            name = _tar_name(info.name)
            if info.isfile() and info.size > limit:
                raise ValueError(f"tar member {name!r} claims {info.size} bytes, more than {limit >> 20} MiB "
                                 f"from a {path.stat().st_size}-byte archive (a sparse or forged size)")
            if info.isfile():
                fobj = tar.extractfile(info)
                assert fobj is not None
                keeper = None
                if self.keep is not None and name not in self.kept and self._keep_member(name):
                    target = self.keep / safe_name(index, name)

                    def keeper(target: Path = target, name: str = name) -> IO[bytes]:
                        self.kept[name] = target
                        return target.open("wb")
                digest, nested = hash_and_hint(fobj, keep=keeper)
            yield Member(_tar_name(info.name), _TAR_TYPES.get(info.type, "other"), info.mode,
                         info.uid, info.gid, int(info.mtime), info.size, digest, info.linkname, nested)

    def _keep_member(self, name: str) -> bool:
        """Whether a member that looks like a container is copied aside while listing."""
        return True

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for index, (info, tar) in enumerate(self._each(path)):
            name = _tar_name(info.name)
            if name in names and info.isfile():  # a name twice: the last, as `tar -x` leaves it
                fobj = tar.extractfile(info)
                assert fobj is not None
                target = dest / safe_name(index, name)
                with target.open("wb") as out:
                    shutil.copyfileobj(fobj, out, CHUNK)
                found[name] = target
        return found


class PipedTar(TarReader):
    """A tar reader over a tool's stdout."""

    argv: tuple[str, ...] = ()

    exclude: tuple[str, ...] = ()  # member names the tool leaves out of the stream
    include: tuple[str, ...] = ()  # ... or the only ones it puts in

    def _each(self, path: Path) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        *options, source = [a.replace("{}", str(path)) for a in self.argv]
        argv = limited([*options, *(f"--exclude={n}" for n in self.exclude),
                        *(f"--include={n}" for n in self.include), source])
        with run.stream(argv) as raw:
            bounded = cast(IO[bytes], Bounded(raw, expansion_limit(path.stat().st_size),
                                              f"{path.name} ({self.kind})"))
            with tarfile.open(fileobj=bounded, mode="r|", bufsize=STREAM_BUFFER) as tar:
                for info in tar:
                    yield info, tar
