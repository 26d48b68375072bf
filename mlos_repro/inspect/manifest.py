"""Member manifests: every output's layered listing, recorded when the stage is built.

A manifest is canonical JSON: {"v": 1, "sha256": HEX, "root": NODE}, where a NODE is
{"kind": KIND-or-null, "members": [MEMBER...]} and a MEMBER carries name, type, mode,
owner, mtime, size, sha256, target and, for a member that is itself a container we
understand, its own NODE under "inner". Comparing two manifests names the differing
file without reading either artifact again.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlos_repro.inspect.detect import reader_for
from mlos_repro.inspect.layers import MAX_DEPTH, dir_members
from mlos_repro.inspect.members import CONTENT_ERRORS, KeepsNested, Member, not_this_format, why

MANIFEST_VERSION = 1


@functools.cache
def readers_digest() -> str:
    """What a listing depends on besides the bytes: the code of the readers that made it."""
    here = Path(__file__).parent
    digest = hashlib.sha256(str(MANIFEST_VERSION).encode())
    # Every module of this package but the reports, which no listing depends on.
    for module in sorted(here.glob("*.py")):
        if module.name != "report.py":
            digest.update(module.name.encode() + b"\0" + module.read_bytes())
    return digest.hexdigest()[:16]


class Listings:
    """Listings of containers by content digest: the same squashfs inside an ISO and a PXE
    initrd is read once. Keys carry a digest of the readers' code, so a changed reader never
    gets an old listing. get/put (by key) default to remembering nothing."""

    def __init__(self, get: Callable[[str], dict[str, Any] | None] = lambda k: None,
                 put: Callable[[str, dict[str, Any]], None] = lambda k, n: None) -> None:
        self._get = get
        self._put = put
        self._prefix = readers_digest()

    def get(self, sha256: str) -> dict[str, Any] | None:
        return self._get(f"{self._prefix}-{sha256}")

    def put(self, sha256: str, node: dict[str, Any]) -> None:
        self._put(f"{self._prefix}-{sha256}", node)


def build(path: Path, digest: str, work: Path, listings: Listings | None = None) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    listings = listings or Listings()
    root = None if path.is_dir() else listings.get(digest)
    if root is None:
        root = _node(path, work, 0, listings)
        if not path.is_dir():
            listings.put(digest, root)
    return {"v": MANIFEST_VERSION, "sha256": digest, "root": root}


def _member(m: Member) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": m.name, "type": m.type, "mode": m.mode, "uid": m.uid,
                             "gid": m.gid, "mtime": m.mtime, "size": m.size}
    if m.sha256:
        entry["sha256"] = m.sha256
    if m.target:
        entry["target"] = m.target
    return entry


def _node(path: Path, work: Path, depth: int, listings: Listings) -> dict[str, Any]:
    if path.is_dir():
        members = list(dir_members(path))
        nested = {m.name: path / m.name for m in members if m.nested}
        return _entries("directory", members, nested, work, depth, False, listings)
    if depth > MAX_DEPTH:
        return {"kind": None, "error": f"containers nested deeper than {MAX_DEPTH} levels"}
    reader = None
    try:
        reader = reader_for(path)
        if reader is None:
            return {"kind": None}
        scratch = Path(tempfile.mkdtemp(prefix=f"d{depth}-", dir=work))
        if isinstance(reader, KeepsNested):
            reader.keep = scratch  # nested containers are kept while listing: one pass
        members = list(reader.members(path))
        wanted = {m.name for m in members if m.nested and m.type == "file"
                  and not (m.sha256 and listings.get(m.sha256) is not None)}
        nested = {n: p for n, p in getattr(reader, "kept", {}).items() if n in wanted}
        if wanted - set(nested):
            nested.update(reader.extract(path, wanted - set(nested), scratch))
    except CONTENT_ERRORS as e:
        if not not_this_format(e):
            raise  # a missing tool, an I/O error: never recorded (nor cached) as "not a container"
        kind = reader.kind if reader else "a container"
        return {"kind": None, "error": f"not readable as {kind}: {why(e)}"}
    try:
        return _entries(reader.kind, members, nested, work, depth, True, listings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _entries(kind: str, members: list[Member], nested: dict[str, Path], work: Path, depth: int,
             cleanup: bool, listings: Listings) -> dict[str, Any]:
    entries = []
    for m in members:
        entry = _member(m)
        inner = listings.get(m.sha256) if m.nested and m.sha256 else None
        if inner is None and m.name in nested:
            inner = _node(nested[m.name], work, depth + 1, listings)
            if m.sha256:
                listings.put(m.sha256, inner)
            if cleanup:
                nested[m.name].unlink(missing_ok=True)
        if inner is not None and inner.get("kind") is not None:
            entry["inner"] = inner
        entries.append(entry)
    return {"kind": kind, "members": entries}
