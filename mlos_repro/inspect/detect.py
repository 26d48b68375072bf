"""Which reader understands a file: recognised by its bytes (magic numbers), never its name."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

from mlos_repro.inspect.ar import ArReader
from mlos_repro.inspect.compressed import CompressedReader
from mlos_repro.inspect.cpio import CpioReader
from mlos_repro.inspect.ext4 import Ext4Reader
from mlos_repro.inspect.fat import FatReader
from mlos_repro.inspect.gpt import SECTOR, GptReader
from mlos_repro.inspect.iso import IsoReader
from mlos_repro.inspect.members import Reader, compression_of, peek
from mlos_repro.inspect.qcow2 import QcowReader
from mlos_repro.inspect.squashfs import SquashfsReader
from mlos_repro.inspect.tar import TarReader


def reader_for(path: Path) -> Reader | None:
    """The reader that understands path's bytes, or None."""

    if not path.is_file():
        return None
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(b"!<arch>\n"):
        return ArReader()
    if (image := image_reader_for(path)) is not None:
        return image
    try:
        inner = peek(path, 512)
    except (OSError, EOFError, lzma.LZMAError):
        return None
    if inner[:6] in (b"070701", b"070702"):
        return CpioReader()
    if len(inner) >= 262 and inner[257:262] == b"ustar":
        return TarReader()
    if compression_of(head) is not None:
        return CompressedReader()
    return None


def image_reader_for(path: Path) -> Reader | None:
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(510)
        mbr_sig = f.read(2)
        f.seek(54)
        fat16 = f.read(3)
        f.seek(82)
        fat32 = f.read(3)
        f.seek(SECTOR)
        gpt = f.read(8)
        f.seek(1024)
        ext_sb = f.read(64)
        ext_magic = ext_sb[56:58]
        f.seek(32769)
        iso = f.read(5)
    if head == b"hsqs":
        return SquashfsReader()
    if head == b"QFI\xfb":
        return QcowReader()
    if iso == b"CD001":
        return IsoReader()
    if gpt == b"EFI PART":
        return GptReader()
    # The magic is two bytes only: also ask for a sane block size and inode count.
    if ext_magic == b"\x53\xef" and len(ext_sb) == 64 and \
            struct.unpack_from("<I", ext_sb, 24)[0] <= 6 and struct.unpack_from("<I", ext_sb, 0)[0] > 0:
        return Ext4Reader()
    if mbr_sig == b"\x55\xaa" and b"FAT" in (fat16, fat32):
        return FatReader()
    return None
