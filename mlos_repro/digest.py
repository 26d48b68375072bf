"""Hashing and canonical JSON: the only ways bytes become identities."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
from pathlib import Path
from typing import Any

from mlos_repro.fsutil import open_regular

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 256 << 10  # measured fastest here: 4 MiB buffers cost page faults, smaller ones syscalls
MAP_AT_LEAST = 16 << 20  # from here on, mapping the file beats reading it (fewer copies)


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the form of everything that is hashed or signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, *, follow: bool = True) -> str:
    """The sha256 of a regular file, at least at the speed of `openssl dgst -sha256`: a large file
    is hashed from a read-only mapping in one call (hashlib releases the GIL; no copies), a
    small one through one reused buffer.

    Only a regular file is read (NotRegularFile otherwise: a FIFO would block, a device never
    end); with follow=False, not through a symlink either."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(path, follow=follow), "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size >= MAP_AT_LEAST:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                mapped.madvise(mmap.MADV_SEQUENTIAL)
                h.update(mapped)
            return h.hexdigest()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def sha256_range(path: Path, offset: int, size: int) -> str:
    """The sha256 of `size` bytes of the regular file at `path` from `offset` (mapped, no copy)."""
    with os.fdopen(open_regular(path), "rb", buffering=0) as f:
        if offset < 0 or size < 0 or offset + size > os.fstat(f.fileno()).st_size:
            raise ValueError(f"{path}: bytes {offset}..{offset + size} lie outside the file")
        if size == 0:
            return hashlib.sha256().hexdigest()
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(f.fileno(), size + offset - start, offset=start, access=mmap.ACCESS_READ) as mapped:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
            with memoryview(mapped) as view:
                return hashlib.sha256(view[offset - start:]).hexdigest()


def is_sha256(text: str) -> bool:
    return bool(SHA256_RE.fullmatch(text))
