"""Hashing and canonical JSON: the only ways bytes become identities."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from mlos_repro.fsutil import open_regular

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 4 << 20  # large reads: hashing runs at the speed of sha256sum


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the form of everything that is hashed or signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, *, follow: bool = True) -> str:
    """hashlib releases the GIL and reads into one reused buffer: the speed of sha256sum.

    Only a regular file is read (NotRegularFile otherwise: a FIFO would block, a device never
    end); with follow=False, not through a symlink either."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(path, follow=follow), "rb", buffering=0) as f:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def is_sha256(text: str) -> bool:
    return bool(SHA256_RE.match(text))
