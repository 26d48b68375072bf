"""qcow2 images, read as the raw disk they hold (qemu-img)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlos_repro import run
from mlos_repro.inspect.members import Member, hash_and_hint


class QcowReader:
    """A qcow2 image, read as the raw disk it holds (one member, `disk.raw`, from qemu-img):
    the disk inside is then read like any raw disk, and its listing is shared with one."""

    kind = "qcow2"
    RAW = "disk.raw"

    def __init__(self) -> None:
        self.keep: Path | None = None
        self.kept: dict[str, Path] = {}

    def _raw(self, path: Path, dest: Path) -> Path:
        target = dest / self.RAW
        run.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(target)],
                stdout=subprocess.DEVNULL)
        return target

    def members(self, path: Path) -> Iterator[Member]:
        with tempfile.TemporaryDirectory(prefix="mlos-qcow2-") as tmp:
            raw = self._raw(path, self.keep or Path(tmp))
            with raw.open("rb") as f:
                digest, nested = hash_and_hint(f)
            if self.keep is not None:
                self.kept[self.RAW] = raw
            yield Member(self.RAW, "file", 0o644, 0, 0, 0, raw.stat().st_size, digest, nested=nested)

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        return {self.RAW: self._raw(path, dest)} if self.RAW in names else {}
