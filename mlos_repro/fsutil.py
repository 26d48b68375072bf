"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import os
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
