"""Reproducible tars, gzip and file digests, shared by the Flatcar stage tools."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path

RUNTIME_MOUNTS = ("dev", "proc", "sys", "run")


class Refused(Exception):
    """What the tool was given cannot be packed; the message says what."""


def epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value.isdigit():
        raise Refused("SOURCE_DATE_EPOCH is not set to whole seconds")
    return int(value)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _entries(root: Path, runtime_mounts: bool) -> list[Path]:
    """Every path under root (not below a container runtime's mount points, with
    runtime_mounts), sorted by the bytes of its name relative to root: a directory always
    comes before what it holds."""
    everything = []
    stack = [root]
    while stack:
        top = stack.pop()
        for name in os.listdir(top):
            path = top / name
            everything.append(path)
            kept_empty = runtime_mounts and top == root and name in RUNTIME_MOUNTS
            if path.is_dir() and not path.is_symlink() and not kept_empty:
                stack.append(path)
    return sorted(everything, key=lambda p: os.fsencode(p.relative_to(root)))


def write_tar(root: Path, dest: Path, when: int, *, all_root: bool,
              runtime_mounts: bool = False) -> None:
    """The uncompressed tar of what root holds: entries sorted by name, every mtime `when`, no
    owner names or extended attributes; every entry root-owned with all_root, else with its
    numeric owners. With runtime_mounts, /dev, /proc, /sys and /run are kept empty."""
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _entries(root, runtime_mounts):
            name = path.relative_to(root).as_posix()
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.mtime = when
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = (0, 0) if all_root else (st.st_uid, st.st_gid)
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
                    info.type, info.linkname = tarfile.LNKTYPE, links[(st.st_dev, st.st_ino)]
                    tar.addfile(info)
                    continue
                links[(st.st_dev, st.st_ino)] = name
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                raise Refused(f"{path}: a device node outside /dev")
            else:
                raise Refused(f"{path}: neither a file, a directory nor a link (a socket or FIFO)")


def gzip_file(src: Path, dest: Path) -> None:
    """gzip with no file name and time 0 in its header: the same bytes for the same data. Level
    6, gzip's own default: a third of level 9's time, for layers under 1 % larger."""
    with src.open("rb") as f, dest.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as out:
        while chunk := f.read(1 << 20):
            out.write(chunk)


def write_tar_gz(root: Path, dest: Path, scratch: Path, when: int, *, all_root: bool,
                 runtime_mounts: bool = False) -> str:
    """write_tar of root, gzipped into dest (the tar itself in scratch, removed after); the
    sha256 of the uncompressed tar (an OCI layer's diff_id)."""
    tar = scratch / f"{dest.name}.tar"
    write_tar(root, tar, when, all_root=all_root, runtime_mounts=runtime_mounts)
    digest = file_digest(tar)
    gzip_file(tar, dest)
    tar.unlink()
    return digest
