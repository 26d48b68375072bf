"""Laying out a stage's inputs for its sandbox: what the stage sees under /in.

Part of the sandbox contract: a change here can change what a stage sees, so this module's
bytes are part of every cache key (graph.contract_digest).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlos_repro.store import OutputKind, Store


@dataclass(frozen=True, slots=True)
class StageInput:
    name: str
    digest: str  # "sha256:HEX" (a blob) or "tree:HEX" (a directory tree)
    # For a stage: input, the upstream stage's outputs, name -> (digest, kind).
    outputs: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    is_stage: bool = False


def lay_out(store: Store, inputs: Iterable[StageInput], work: Path, sde: int) -> dict[str, Path]:
    """Host paths to mount read-only at /in/NAME, all materialised under work/in with
    SOURCE_DATE_EPOCH as every mtime: a single file too (a url:/deb: download or a path: file),
    which is copied rather than bound, since the store's blob carries the time it was stored."""
    mounts: dict[str, Path] = {}
    for inp in inputs:
        if inp.is_stage:
            dest = work / "in" / inp.name
            dest.mkdir(parents=True)
            for out, (digest, kind) in inp.outputs.items():
                store.materialize(digest, kind, dest / out)
            pin_mtimes(dest, sde)
            mounts[inp.name] = dest
        elif inp.digest.startswith("tree:"):
            dest = work / "in" / inp.name
            store.materialize(inp.digest.removeprefix("tree:"), OutputKind.TREE, dest)
            pin_mtimes(dest, sde)
            mounts[inp.name] = dest
        else:
            dest = work / "in" / inp.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.materialize(inp.digest, OutputKind.FILE, dest)
            os.chmod(dest, 0o444)
            os.utime(dest, (sde, sde))
            mounts[inp.name] = dest
    return mounts


def pin_mtimes(root: Path, sde: int) -> None:
    """Inputs laid out for a stage carry SOURCE_DATE_EPOCH as every mtime, not the moment they
    were copied: a stage that lists or archives its inputs must not see when it ran."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(Path(dirpath) / name, (sde, sde), follow_symlinks=False)
    os.utime(root, (sde, sde))
