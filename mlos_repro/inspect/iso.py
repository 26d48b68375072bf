"""ISO 9660 images with Rock Ridge (through bsdtar) and their El Torito boot images (xorriso)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlos_repro import run
from mlos_repro.digest import sha256_file
from mlos_repro.inspect.members import Member, file_hint, limited
from mlos_repro.inspect.tar import PipedTar

BOOT_PREFIX = "[el-torito]/"


class IsoReader(PipedTar):
    """ISO 9660 with Rock Ridge through bsdtar, plus the El Torito boot images through xorriso."""

    kind = "iso9660"
    argv = ("bsdtar", "-cf", "-", "--format=pax", "@{}")

    def __init__(self) -> None:
        super().__init__()
        self._extents: dict[str, tuple[int, int]] = {}

    def members(self, path: Path) -> Iterator[Member]:
        self._extents = self.extents(path)  # read in place later: not copied while listing
        yield from super().members(path)
        with tempfile.TemporaryDirectory(prefix="mlos-eltorito-") as tmp:
            for name, file in self._boot_images(path, Path(tmp)).items():
                yield Member(name, "file", 0o644, 0, 0, 0, file.stat().st_size, sha256_file(file),
                             nested=file_hint(file))

    def _keep_member(self, name: str) -> bool:
        return name not in self._extents

    def extents(self, path: Path) -> dict[str, tuple[int, int]]:
        """{member: (byte offset, size)} of the files stored in one extent (ISO 9660 keeps a
        file's data contiguous), as xorriso reports them: such a member can be read in place."""
        argv = ["xorriso", "-indev", str(path), "-find", "/", "-type", "f", "-exec", "report_lba", "--"]
        done = run.run(limited(argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            return {}
        found = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            fields = [f.strip() for f in line.removeprefix("File data lba:").split(",", 4)]
            if not line.startswith("File data lba:") or len(fields) != 5 or fields[0] != "0":
                continue
            start, blocks, size, name = int(fields[1]), int(fields[2]), int(fields[3]), fields[4]
            whole = blocks * 2048 >= size
            if whole and name.startswith("'/") and name.endswith("'") and "'" not in name[1:-1]:
                found[name[2:-1]] = (start * 2048, size)
        return found

    def extract(self, path: Path, names: set[str], dest: Path) -> dict[str, Path]:
        found = super().extract(path, names, dest)
        if any(n.startswith(BOOT_PREFIX) for n in names):
            images = self._boot_images(path, dest / "el-torito")
            found.update({n: f for n, f in images.items() if n in names})
        return found

    def _boot_images(self, path: Path, into: Path) -> dict[str, Path]:
        """El Torito images as pseudo-members `[el-torito]/NAME`: they may lie outside the tree."""
        into.mkdir(parents=True, exist_ok=True)
        done = run.run(limited(["xorriso", "-osirrox", "on", "-indev", str(path), "-extract_boot_images",
                                str(into)]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)  # no xorriso: exit 3
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-2:]
            raise ValueError(f"xorriso cannot read the El Torito boot images (exit {done.returncode}): "
                             + " / ".join(tail))
        return {BOOT_PREFIX + p.name: p for p in sorted(into.iterdir()) if p.is_file()}
