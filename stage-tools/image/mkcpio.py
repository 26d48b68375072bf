"""Write a reproducible initramfs: a newc cpio, gzip-compressed, from a directory.

Runs inside the sandbox with Debian's python3 only:

    python3 mkcpio.py [--node PATH:TYPE:MAJOR:MINOR:MODE]... [--add SRC=DEST]... [--no-compress] DIR OUT

Members are sorted by path; every owner is root, every mtime SOURCE_DATE_EPOCH, inode numbers
count up from 1, modes are 0755 or 0644. Device nodes are written into the archive directly
(`--node dev/console:c:5:1:0600`), so no privilege is needed to make them. The gzip stream
has no name and mtime 0; --no-compress leaves it out (for members already compressed, such
as a squashfs: the kernel reads concatenated archives, compressed or not).
"""

from __future__ import annotations

import argparse
import gzip
import os
import stat
import sys
from pathlib import Path

TRAILER = "TRAILER!!!"


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int],
            name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return head + b"\0" * (-len(head) % 4)


def _members(tree: Path, adds: list[tuple[Path, str]]) -> dict[str, Path]:
    members = {p.relative_to(tree).as_posix(): p for p in tree.rglob("*")}
    for src, dest in adds:
        members[dest.strip("/")] = src
    return members


def write(tree: Path, out: Path, nodes: list[tuple[str, int, int, int]], adds: list[tuple[Path, str]],
          mtime: int, compress: bool = True) -> None:
    members = _members(tree, adds)
    for path, *_ in nodes:
        members.pop(path, None)
    entries: list[tuple[str, Path | tuple[int, int, int]]] = [(k, v) for k, v in members.items()]
    entries += [(path, (mode, major, minor)) for path, mode, major, minor in nodes]
    with out.open("wb") as raw, (gzip.GzipFile(filename="", mode="wb", compresslevel=9, mtime=0,
                                               fileobj=raw) if compress else raw) as archive:
        for ino, (name, what) in enumerate(sorted(entries), start=1):
            if isinstance(what, tuple):
                mode, major, minor = what
                archive.write(_header(ino, mode, 1, mtime, 0, (major, minor), name.encode()))
                continue
            st = what.lstat()
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(what).encode()
                mode = stat.S_IFLNK | 0o777
            elif stat.S_ISDIR(st.st_mode):
                data, mode = b"", stat.S_IFDIR | 0o755
            elif stat.S_ISREG(st.st_mode):
                data = what.read_bytes()
                mode = stat.S_IFREG | (0o755 if st.st_mode & 0o111 else 0o644)
            else:
                raise SystemExit(f"mkcpio: {what}: only files, directories and symlinks (use --node)")
            nlink = 2 if stat.S_ISDIR(mode) else 1
            archive.write(_header(ino, mode, nlink, mtime, len(data), (0, 0), name.encode()))
            archive.write(data + b"\0" * (-len(data) % 4))
        archive.write(_header(0, 0, 1, 0, 0, (0, 0), TRAILER.encode()))
    # The kernel looks for a following archive only at 4-byte offsets; it skips zeros.
    with out.open("ab") as raw:
        raw.write(b"\0" * (-out.stat().st_size % 4))


def _node(text: str) -> tuple[str, int, int, int]:
    try:
        path, kind, major, minor, perm = text.split(":")
        fmt = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[kind]
        return path.strip("/"), fmt | int(perm, 8), int(major), int(minor)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH:c|b:MAJOR:MINOR:MODE") from None


def _add(text: str) -> tuple[Path, str]:
    src, sep, dest = text.partition("=")
    if not sep or not dest:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SRC=DEST")
    return Path(src), dest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", type=_node, action="append", default=[])
    parser.add_argument("--add", type=_add, action="append", default=[],
                        help="also store file SRC at DEST (e.g. a squashfs from another input)")
    parser.add_argument("--no-compress", action="store_true")
    parser.add_argument("tree", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    write(args.tree, args.out, args.node, args.add, mtime, compress=not args.no_compress)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
