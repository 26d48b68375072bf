"""Writing files so that a reader never sees half of one; reading only regular files, within bounds."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, tmp_dir: Path | None = None) -> None:
    """Replace `path` with `data` whole, or leave it as it was.

    The bytes go to a new temporary file (in `tmp_dir`, which must be on the same file system,
    else beside `path`), are flushed to disk, and the file is renamed over `path`. The rename
    replaces a symlink at `path` rather than writing through it.
    """
    payload = data.encode() if isinstance(data, str) else data
    fd, name = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, 0o644)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


class NotRegularFile(ValueError):
    """A path that must be a regular file is a symlink, FIFO, device, socket or directory,
    or is larger than the reader allows."""


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def open_regular(path: Path, *, follow: bool = False) -> int:
    """A read-only descriptor of the regular file at `path`; NotRegularFile otherwise.

    Never blocks on a FIFO and, unless `follow`, never goes through a symlink at `path`
    (FileNotFoundError passes through)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(f"{path}: a symbolic link, where a regular file must be") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(f"{path}: a {file_kind(mode)}, where a regular file must be")
    os.set_blocking(fd, True)
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at `path` (not through a symlink), at most `limit` of them."""
    with os.fdopen(open_regular(path), "rb") as f:
        if os.fstat(f.fileno()).st_size > limit:
            raise NotRegularFile(f"{path}: larger than {limit >> 20} MiB, more than such a file can be")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotRegularFile(f"{path}: larger than {limit >> 20} MiB, more than such a file can be")
    return data
