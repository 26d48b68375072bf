"""pefix.py, which makes the Unified Kernel Images the same bytes on every build and ready for
signing, on PE headers made here (the real images and sbsign are in test_images)."""

from __future__ import annotations

import re
import struct

import pefix
import pytest

OPTIONAL = 0x40 + 24


def pe_image(*, magic: int = pefix.PE32_PLUS, signed: bool = False, extra: int = 3) -> bytes:
    """A PE32+ header with 16 empty data directories and `extra` bytes after it."""
    data = bytearray(OPTIONAL + 112 + 16 * 8 + extra)
    data[:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, 0x40)
    data[0x40:0x44] = b"PE\0\0"
    struct.pack_into("<I", data, 0x40 + 8, 1234567)  # the time objcopy wrote
    struct.pack_into("<H", data, OPTIONAL, magic)
    struct.pack_into("<I", data, OPTIONAL + 108, 16)
    if signed:
        struct.pack_into("<II", data, OPTIONAL + 112 + 8 * pefix.CERTIFICATE_TABLE, len(data), 8)
    return bytes(data)


def test_the_time_is_source_date_epoch_and_the_length_a_multiple_of_eight() -> None:
    fixed = pefix.fix(pe_image(), 1700000000)
    assert len(fixed) % 8 == 0 and len(fixed) >= len(pe_image())
    assert struct.unpack_from("<I", fixed, 0x40 + 8)[0] == 1700000000
    assert fixed[len(pe_image()):] == b"\0" * (len(fixed) - len(pe_image()))


def test_the_checksum_is_the_pe_sum_and_fixing_twice_changes_nothing() -> None:
    fixed = pefix.fix(pe_image(), 1700000000)
    stored = struct.unpack_from("<I", fixed, OPTIONAL + 64)[0]
    words = struct.unpack(f"<{len(fixed) // 2}H", fixed[:OPTIONAL + 64] + b"\0" * 4 + fixed[OPTIONAL + 68:])
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert stored == total + len(fixed)
    assert pefix.fix(fixed, 1700000000) == fixed


@pytest.mark.parametrize(("image", "said"), [
    (b"ELF" + b"\0" * 300, "no MZ header"),
    (b"MZ" + b"\0" * 300, "no PE signature"),
    (pe_image(magic=0x10B), "not a PE32+ image"),
    (pe_image(signed=True), "already signed"),
])
def test_what_is_not_an_unsigned_pe32_plus_image_is_refused(image: bytes, said: str) -> None:
    with pytest.raises(pefix.Refused, match=re.escape(said)):
        pefix.fix(image, 1)
