"""File ordering: show a stage its directory inputs through disorderfs (shuffled entries)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from mlos_repro import run
from mlos_repro.errors import MlosReproError


@contextlib.contextmanager
def shuffled(inputs: Mapping[str, Path], base: Path) -> Iterator[dict[str, Path]]:
    """Mount each directory input through disorderfs; unmount them all afterwards."""
    mounted: list[Path] = []
    result = dict(inputs)
    try:
        for name, source in sorted(inputs.items()):
            if not source.is_dir():
                continue  # a single file has no order
            target = base / name
            target.mkdir(parents=True)
            run.run_or_raise(["disorderfs", "--shuffle-dirents=yes", "--multi-user=yes",
                              "-o", "allow_other,ro", str(source), str(target)],
                             MlosReproError, f"disorderfs could not mount input {name!r}",
                             hint="turn the variation off with --vary=-fileordering",
                             stdout=subprocess.DEVNULL)
            mounted.append(target)
            result[name] = target
        yield result
    finally:
        for target in reversed(mounted):
            run.run(["fusermount3", "-u", "-z", str(target)], check=False,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
