"""qcow2 images, read as the raw disk they hold (qemu-img)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlos_repro import run
from mlos_repro.inspect.members import Member, expansion_limit, hash_and_hint, limited


class QcowReader:
    """A qcow2 image, read as the raw disk it holds (one member, `disk.raw`, from qemu-img):
    the disk inside is then read like any raw disk, and its listing is shared with one."""

    kind = "qcow2"
    RAW = "disk.raw"

    def __init__(self) -> None:
        self.keep: Path | None = None
        self.kept: dict[str, Path] = {}

    def _raw(self, path: Path, dest: Path) -> Path:
        return raw_disk(path, dest / self.RAW)

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


def raw_disk(path: Path, target: Path) -> Path:
    """The raw disk a qcow2 image holds, written to `target` by qemu-img, once `qemu-img info`
    shows it holds nothing but its own bytes: a backing file or an external data file would make
    qemu-img read a file of this host. ValueError when the image is refused."""
    info = run.run(limited(["qemu-img", "info", "--output=json", "-f", "qcow2", "--", str(path)]),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, timeout=60)
    if info.returncode != 0:
        raise ValueError(f"qemu-img info: {info.stderr.decode(errors='replace').strip()[:200]}")
    try:
        meta = json.loads(info.stdout)
        virtual = int(meta["virtual-size"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"qemu-img info gave no virtual size ({e})") from None
    data = (meta.get("format-specific") or {}).get("data") or {}
    outside = meta.get("backing-filename") or meta.get("full-backing-filename") or data.get("data-file")
    if outside:
        raise ValueError(f"qcow2 image refers to a file outside it ({str(outside)[:100]!r}): refused")
    if virtual > expansion_limit(path.stat().st_size):
        raise ValueError(f"qcow2 image of {path.stat().st_size} bytes claims a {virtual}-byte disk: "
                         "refused")
    done = run.run(limited(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", "--", str(path),
                            str(target)]),
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        target.unlink(missing_ok=True)
        raise ValueError(f"qemu-img convert: {done.stderr.decode(errors='replace').strip()[:200]}")
    return target
