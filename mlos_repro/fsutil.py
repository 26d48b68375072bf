"""Writing files so that a reader never sees half of one; reading only regular files, within bounds."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, tmp_dir: Path | None = None) -> None:
    """Replace `path` with `data` whole, or leave it as it was.

    The bytes go to a new temporary file (in `tmp_dir`, which must be on the same file system,
    else beside `path`), are flushed to disk, and the file is renamed over `path`. The rename
    replaces a symlink at `path` rather than writing through it.
    """
    payload = data.encode() if isinstance(data, str) else data
    while True:
        fd, name = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.")
        if claim(fd, Path(name)):  # alive: a store's sweep leaves it alone
            break
        os.close(fd)
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


def claim(fd: int, path: Path) -> bool:
    """Lock what was just created at `path` (open as `fd`) as in use, and say whether it is
    still there: a store's sweep removes only what no one holds locked, and may have removed it
    between its creation and this lock (then the caller creates another)."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


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


# Deeper than any tree a build makes on purpose; a stage's output tree is refused beyond it.
MAX_TREE_DEPTH = 256


class TreeTooDeep(ValueError):
    """A directory tree nests deeper than MAX_TREE_DEPTH."""


def walk_tree(top: Path, *, skip: frozenset[str] = frozenset(),
              max_depth: int = MAX_TREE_DEPTH) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below `top` as (relative POSIX path, lstat), parents before their children.

    Iterative (no recursion limit to hit) and never through a symlink: a link is an entry, not a
    directory to enter. Names in `skip` are left out with everything below them."""
    todo: list[tuple[str, int]] = [("", 0)]
    while todo:
        rel, depth = todo.pop()
        with os.scandir(top / rel if rel else top) as it:
            entries = sorted((e for e in it if e.name not in skip), key=lambda e: e.name)
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            st = e.stat(follow_symlinks=False)
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 >= max_depth:
                    shown = path if len(path) <= 60 else f"{path[:40]}…{path[-16:]}"
                    raise TreeTooDeep(f"directories nest more than {max_depth} deep (at {shown})")
                todo.append((path, depth + 1))


def remove_tree(path: Path) -> None:
    """Remove `path` and all below it: iteratively, one descriptor at a time (no depth or path
    length limit), never through a symlink, making read-only directories writable first.
    OSError passes through for what cannot be removed (e.g. a mount point)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    entered: list[str] = []
    try:
        _writable(fd)
        while True:
            child, seen = None, False
            with os.scandir(fd) as it:
                for e in it:
                    seen = True
                    if e.is_dir(follow_symlinks=False):
                        child = e.name
                        break
                    os.unlink(e.name, dir_fd=fd)
            if child is not None:
                inner = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=fd)
                os.close(fd)
                fd = inner
                _writable(fd)
                entered.append(child)
                continue
            if seen:
                continue  # unlinking while listing may have hidden entries: list again
            if not entered:
                break
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(entered.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _writable(fd: int) -> None:
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o700)


@contextlib.contextmanager
def staged_directory(out: Path, *, replace: bool = False) -> Iterator[Path]:
    """A directory that appears at `out` whole or not at all: filled under a hidden sibling
    name, renamed into place when the block ends, removed if it raises. `out` must be absent or
    empty, unless `replace`: then an existing `out` is swapped for the new one at the end (and
    stays as it was if the block raises)."""
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        if out.exists() and replace:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.exists():
                out.rmdir()
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
