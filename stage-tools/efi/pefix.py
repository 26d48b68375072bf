"""Make a PE/COFF image (a Unified Kernel Image objcopy wrote) the same bytes on every build
and ready for Secure Boot signing:

    python3 pefix.py IMAGE

- the COFF header's TimeDateStamp, which objcopy sets to the current time (it does not read
  SOURCE_DATE_EPOCH), becomes SOURCE_DATE_EPOCH;
- the file is padded with zeros to a multiple of 8 bytes, as sbsign pads before it appends a
  signature: so `sbattach --remove` of the signed image gives back exactly this one;
- the optional header's CheckSum is computed again (the PE algorithm: 16-bit one's-complement
  sum of the file without the field, plus the file's length).

Refuses an image that is not PE32+ or already carries a signature (a certificate table).
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

PE32_PLUS = 0x20B
CERTIFICATE_TABLE = 4  # the data directory entry sbsign fills in


class Refused(Exception):
    pass


def checksum(data: bytes, field: int) -> int:
    """The PE checksum of data, whose CheckSum field (4 bytes at `field`) counts as zero."""
    blanked = data[:field] + b"\0\0\0\0" + data[field + 4:]
    if len(blanked) % 2:
        blanked += b"\0"
    total: int = sum(struct.unpack(f"<{len(blanked) // 2}H", blanked))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total + len(data)


def fix(data: bytes, when: int) -> bytes:
    if data[:2] != b"MZ":
        raise Refused("not a PE/COFF image (no MZ header)")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe:pe + 4] != b"PE\0\0":
        raise Refused("not a PE/COFF image (no PE signature)")
    optional = pe + 24
    if struct.unpack_from("<H", data, optional)[0] != PE32_PLUS:
        raise Refused("not a PE32+ image (x86-64 EFI binaries are)")
    directories = struct.unpack_from("<I", data, optional + 108)[0]
    if directories > CERTIFICATE_TABLE:
        address, size = struct.unpack_from("<II", data, optional + 112 + 8 * CERTIFICATE_TABLE)
        if address or size:
            raise Refused("the image is already signed (it has a certificate table)")
    out = bytearray(data)
    out += b"\0" * (-len(out) % 8)
    struct.pack_into("<I", out, pe + 8, when)
    struct.pack_into("<I", out, optional + 64, checksum(bytes(out), optional + 64))
    return bytes(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pefix.py IMAGE", file=sys.stderr)
        return 2
    when = os.environ.get("SOURCE_DATE_EPOCH", "")
    image = Path(argv[0])
    try:
        if not when.isdigit():
            raise Refused("SOURCE_DATE_EPOCH is not set to whole seconds")
        image.write_bytes(fix(image.read_bytes(), int(when)))
    except (Refused, OSError) as err:
        print(f"pefix.py: {image}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
