"""A squashfs 4.0 image read through its own metadata (superblock, inode, directory, fragment and
id tables), without decompressing file data: what `diff` needs to compare two large images at
the speed of hashing them.

Each file gets a *content key*: the sha256 of its compressed blocks as stored, its size and the
location of its tail in a fragment block (with that block's stored bytes). Two images made with
the same compressor and block size store equal contents as equal bytes, so equal keys mean
equal contents; only files whose keys differ are decompressed (`read`) and hashed for real.
The layout follows the squashfs format as documented by squashfs-tools and squashfs-tools-ng;
every offset and size is checked against the image (ValueError, a content error, otherwise).
"""

from __future__ import annotations

import hashlib
import lzma
import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlos_repro.inspect.members import expansion_limit

MAGIC = b"hsqs"
METADATA = 8192
NO_FRAGMENT = 0xFFFFFFFF
UNCOMPRESSED_BLOCK = 1 << 24
MAX_ENTRIES = 10_000_000
_TYPES = {1: "dir", 2: "file", 3: "symlink", 4: "block", 5: "char", 6: "fifo", 7: "socket",
          8: "dir", 9: "file", 10: "symlink", 11: "block", 12: "char", 13: "fifo", 14: "socket"}


def _decompressor(compressor: int) -> Callable[[bytes, int], bytes]:
    if compressor == 1:
        return lambda data, limit: zlib.decompressobj().decompress(data, limit)
    if compressor == 4:
        return lambda data, limit: lzma.LZMADecompressor().decompress(data, limit)
    if compressor == 6:
        import zstandard

        context = zstandard.ZstdDecompressor()

        def zstd(data: bytes, limit: int) -> bytes:
            try:
                return context.decompress(data, max_output_size=limit)
            except zstandard.ZstdError as e:
                raise ValueError(f"zstd: {e}") from None
        return zstd
    raise ValueError(f"squashfs compressor {compressor} is not read here (gzip, xz and zstd are)")


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    type: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    target: str = ""
    blocks_start: int = 0
    block_sizes: tuple[int, ...] = ()
    fragment: int = NO_FRAGMENT
    fragment_offset: int = 0


class Image:
    def __init__(self, path: Path, offset: int = 0, length: int | None = None) -> None:
        """The image in `path`, or in its `length` bytes from `offset` (e.g. a file inside an ISO)."""
        self.path = path
        self.f = path.open("rb")
        whole = os.fstat(self.f.fileno()).st_size
        self.base = offset
        self.size = whole - offset if length is None else length
        if self.size < 96 or offset < 0 or offset + self.size > whole:
            raise ValueError("not a squashfs image")
        self.map = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        sb = self.map[offset:offset + 96]
        if len(sb) < 96 or sb[:4] != MAGIC:
            raise ValueError("not a squashfs image")
        (_, self.inode_count, _, self.block_size, self.fragment_count, self.compressor, block_log, flags,
         id_count, major, _minor) = struct.unpack_from("<IIIIIHHHHHH", sb, 0)
        (self.root_ref, self.bytes_used, self.id_table, _xattr, self.inode_table, self.dir_table,
         self.fragment_table, _export) = struct.unpack_from("<QQQQQQQQ", sb, 32)
        if major != 4 or self.block_size != 1 << block_log or not 4096 <= self.block_size <= 1 << 20:
            raise ValueError(f"squashfs {major}.x with block size {self.block_size}: not read here")
        if not 96 <= self.inode_table < self.dir_table <= self.bytes_used <= self.size:
            raise ValueError("squashfs tables lie outside the image")
        self.decompress = _decompressor(self.compressor)
        self._fragment_digests: dict[int, bytes] = {}
        self.uncompressed_fragments = bool(flags & 0x0008)
        self.ids = self._table(self.id_table, id_count, 4, "<I")
        self.fragments = self._table(self.fragment_table, self.fragment_count, 16, "<QI") \
            if self.fragment_count and self.fragment_table != 0xFFFFFFFFFFFFFFFF else []
        self.inodes = self._metadata_region(self.inode_table, self.dir_table)
        end = min(x for x in (self.fragment_table, self.id_table, self.bytes_used) if x > self.dir_table)
        self.dirs = self._metadata_region(self.dir_table, end)

    def close(self) -> None:
        self.map.close()
        self.f.close()

    # -- metadata ---------------------------------------------------------------------------

    def _read_at(self, offset: int, size: int) -> memoryview:
        """Bytes of the image, without a copy (a view of its mapping)."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"squashfs: {size} bytes at {offset} lie outside the {self.size}-byte image")
        return memoryview(self.map)[self.base + offset:self.base + offset + size]

    def _metadata_block(self, offset: int) -> tuple[bytes, int]:
        """(the block's data, the offset of the next block)."""
        (header,) = struct.unpack("<H", self._read_at(offset, 2))
        size = header & 0x7FFF
        raw = bytes(self._read_at(offset + 2, size))
        data = raw if header & 0x8000 else self.decompress(raw, METADATA)
        if len(data) > METADATA:
            raise ValueError("squashfs metadata block larger than 8 KiB")
        return data, offset + 2 + size

    def _metadata_region(self, start: int, end: int) -> _Region:
        blocks: dict[int, int] = {}
        data = bytearray()
        offset = start
        while offset < end:
            blocks[offset - start] = len(data)
            block, offset = self._metadata_block(offset)
            data += block
        return _Region(bytes(data), blocks)

    def _table(self, start: int, count: int, size: int, fmt: str) -> list[tuple[int, ...]]:
        """A table stored as metadata blocks, found through a list of 64-bit block pointers."""
        if count > MAX_ENTRIES:
            raise ValueError(f"squashfs table of {count} entries")
        blocks = -(-count // (METADATA // size))
        pointers = struct.unpack(f"<{blocks}Q", self._read_at(start, 8 * blocks))
        data = b"".join(self._metadata_block(p)[0] for p in pointers)
        if len(data) < count * size:
            raise ValueError("squashfs table shorter than its count")
        return [struct.unpack_from(fmt, data, i * size) for i in range(count)]

    # -- the tree --------------------------------------------------------------------------

    def entries(self) -> Iterator[Entry]:
        """Every entry below the root, depth first, each directory's entries in stored (sorted)
        order; a second name of one inode is a hard link to the first (as sqfs2tar has it)."""
        root = self._inode(self.root_ref, "")
        yield from self._walk(root, "", 0, {})

    def _walk(self, directory: Entry, prefix: str, depth: int, seen: dict[int, str]) -> Iterator[Entry]:
        if depth > 256:
            raise ValueError("squashfs directories nested deeper than 256")
        for name, ref in self._listing(directory):
            entry = self._inode(ref, prefix + name)
            if entry.type != "dir" and ref in seen:
                entry = Entry(entry.name, "hardlink", entry.mode, entry.uid, entry.gid, entry.mtime, 0,
                              target=seen[ref])
            elif entry.type != "dir":
                seen[ref] = entry.name
            yield entry
            if entry.type == "dir":
                yield from self._walk(entry, f"{prefix}{name}/", depth + 1, seen)

    def _listing(self, directory: Entry) -> Iterator[tuple[str, int]]:
        start, offset, size = directory.blocks_start, directory.fragment_offset, directory.size
        data = self.dirs.at(start, offset, max(size - 3, 0))
        pos = 0
        while pos + 12 <= len(data):
            count, inode_block, _ = struct.unpack_from("<IIi", data, pos)
            pos += 12
            for _ in range(count + 1):
                if pos + 8 > len(data):
                    raise ValueError(f"squashfs directory {directory.name!r} truncated")
                inode_offset, _delta, _type, name_size = struct.unpack_from("<HhHH", data, pos)
                name = data[pos + 8:pos + 9 + name_size].decode("utf-8", "surrogateescape")
                pos += 9 + name_size
                if not name or "/" in name or name in (".", ".."):
                    raise ValueError(f"squashfs directory {directory.name!r} holds the name {name!r}")
                yield name, (inode_block << 16) | inode_offset

    def _inode(self, ref: int, name: str) -> Entry:
        data = self.inodes.at(ref >> 16, ref & 0xFFFF, 64, exact=False)  # the longest fixed part
        kind, mode, uid, gid, mtime, _ = struct.unpack_from("<HHHHII", data, 0)
        if kind not in _TYPES:
            raise ValueError(f"squashfs inode of {name!r} has type {kind}")
        try:
            owner, group = self.ids[uid][0], self.ids[gid][0]
        except IndexError:
            raise ValueError(f"squashfs inode of {name!r} names an owner outside the id table") from None
        common = dict(name=name, type=_TYPES[kind], mode=mode & 0o7777, uid=owner, gid=group, mtime=mtime)
        if kind == 1:
            start, _, size, offset, _ = struct.unpack_from("<IIHHI", data, 16)
            return Entry(**common, size=size, blocks_start=start, fragment_offset=offset)
        if kind == 8:
            _, size, start, _, _, offset = struct.unpack_from("<IIIIHH", data, 16)
            return Entry(**common, size=size, blocks_start=start, fragment_offset=offset)
        if kind in (2, 9):
            if kind == 2:
                start, fragment, frag_offset, size = struct.unpack_from("<IIII", data, 16)
                head = 32
            else:
                start, size, _, _, fragment, frag_offset, _ = struct.unpack_from("<QQQIIII", data, 16)
                head = 56
            count = size // self.block_size if fragment != NO_FRAGMENT else -(-size // self.block_size)
            if size > expansion_limit(self.size) or count > MAX_ENTRIES:
                raise ValueError(f"squashfs file {name!r} claims {size} bytes from a {self.size}-byte image")
            raw = self.inodes.at(ref >> 16, (ref & 0xFFFF) + head, 4 * count)
            sizes = struct.unpack(f"<{count}I", raw)
            if fragment != NO_FRAGMENT and fragment >= len(self.fragments):
                raise ValueError(f"squashfs file {name!r} names fragment {fragment} of {len(self.fragments)}")
            return Entry(**common, size=size, blocks_start=start, block_sizes=sizes,
                         fragment=fragment, fragment_offset=frag_offset)
        if kind in (3, 10):
            _, length = struct.unpack_from("<II", data, 16)
            target = self.inodes.at(ref >> 16, (ref & 0xFFFF) + 24, length)
            return Entry(**common, size=0, target=target.decode("utf-8", "surrogateescape"))
        return Entry(**common, size=0)

    # -- contents ----------------------------------------------------------------------------

    def _stored(self, entry: Entry) -> Iterator[tuple[int, int, bool]]:
        """(offset, stored size, compressed) of each data block; a sparse block has size 0."""
        offset = entry.blocks_start
        for word in entry.block_sizes:
            size = word & (UNCOMPRESSED_BLOCK - 1)
            yield offset, size, not word & UNCOMPRESSED_BLOCK
            offset += size

    def content_key(self, entry: Entry) -> str:
        h = hashlib.sha256(f"{entry.size}:{len(entry.block_sizes)}:".encode())
        for offset, size, compressed in self._stored(entry):
            h.update(struct.pack("<I?", size, compressed))
            h.update(self._read_at(offset, size))
        if entry.fragment != NO_FRAGMENT:
            h.update(struct.pack("<II", entry.fragment_offset, entry.size % self.block_size))
            h.update(self._fragment_digest(entry.fragment))
        return h.hexdigest()

    def _fragment_digest(self, index: int) -> bytes:
        if index not in self._fragment_digests:
            start, word = self.fragments[index]
            stored = self._read_at(start, word & (UNCOMPRESSED_BLOCK - 1))
            h = hashlib.sha256(struct.pack("<I", word))
            h.update(stored)
            self._fragment_digests[index] = h.digest()
        return self._fragment_digests[index]

    def read(self, entry: Entry) -> Iterator[bytes]:
        """The file's decompressed contents, block by block."""
        left = entry.size
        for offset, size, compressed in self._stored(entry):
            want = min(self.block_size, left)
            if size == 0:
                block = bytes(want)
            else:
                raw = bytes(self._read_at(offset, size))
                block = self.decompress(raw, self.block_size) if compressed else raw
            if len(block) < want:
                raise ValueError(f"squashfs file {entry.name!r}: a block decompresses short")
            yield block[:want]
            left -= want
        if entry.fragment != NO_FRAGMENT and left:
            start, word = self.fragments[entry.fragment]
            size = word & (UNCOMPRESSED_BLOCK - 1)
            raw = bytes(self._read_at(start, size))
            block = raw if word & UNCOMPRESSED_BLOCK else self.decompress(raw, self.block_size)
            tail = block[entry.fragment_offset:entry.fragment_offset + left]
            if len(tail) != left:
                raise ValueError(f"squashfs file {entry.name!r}: its tail lies outside its fragment")
            yield tail


class _Region:
    """Decompressed metadata blocks, addressed as squashfs does: (block start, offset in it)."""

    def __init__(self, data: bytes, blocks: dict[int, int]) -> None:
        self.data, self.blocks = data, blocks

    def at(self, block: int, offset: int, size: int, *, exact: bool = True) -> bytes:
        if block not in self.blocks:
            raise ValueError(f"squashfs metadata reference to block {block}, which does not exist")
        start = self.blocks[block] + offset
        if start > len(self.data) or (exact and start + size > len(self.data)):
            raise ValueError("squashfs metadata reference past the table's end")
        return self.data[start:start + size]
