"""ISO 9660 images with Rock Ridge (through bsdtar) and their El Torito boot images (xorriso)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlos_repro import run
from mlos_repro.digest import sha256_file, sha256_range
from mlos_repro.inspect.members import Member, copy_range, file_hint, limited, looks_nested, safe_name
from mlos_repro.inspect.tar import PipedTar, _tar_name

BOOT_PREFIX = "[el-torito]/"
IN_PLACE_AT_LEAST = 1 << 20  # smaller members are cheaper streamed than looked up


def _after_parent(members: list[Member], name: str) -> int:
    """Where bsdtar would have listed `name`: after its directory's entry and its earlier siblings."""
    parent = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
    at = next((i + 1 for i, m in enumerate(members) if m.name in (parent, parent.rstrip("/"))), 0)
    while at < len(members) and members[at].name.startswith(parent) and members[at].name < name:
        at += 1
    return at


class IsoReader(PipedTar):
    """ISO 9660 with Rock Ridge through bsdtar, plus the El Torito boot images through xorriso."""

    kind = "iso9660"
    argv = ("bsdtar", "-cf", "-", "--format=pax", "@{}")

    def __init__(self) -> None:
        super().__init__()
        self._extents: dict[str, tuple[int, int]] = {}

    def members(self, path: Path) -> Iterator[Member]:
        # Large files stored in one extent are hashed where they lie and left out of bsdtar's
        # stream (not piped, not copied aside); a comparison later reads them in place too.
        self._extents = {n: e for n, e in self.extents(path).items()
                         if e[1] >= IN_PLACE_AT_LEAST and not set(n) & set("*?[]\\")}
        self.exclude = tuple(sorted(self._extents))
        try:
            streamed = list(super().members(path))
        finally:
            self.exclude = ()
        for name in sorted(self._extents):
            streamed.insert(_after_parent(streamed, name), self._in_place(path, name))
        yield from streamed
        with tempfile.TemporaryDirectory(prefix="mlos-eltorito-") as tmp:
            for name, file in self._boot_images(path, Path(tmp)).items():
                yield Member(name, "file", 0o644, 0, 0, 0, file.stat().st_size, sha256_file(file),
                             nested=file_hint(file))

    def _keep_member(self, name: str) -> bool:
        return name not in self._extents

    def _in_place(self, path: Path, name: str) -> Member:
        """A member read where it lies: its metadata from bsdtar's header alone, its bytes hashed
        in the ISO itself."""
        offset, size = self._extents[name]
        self.include = (name,)
        try:
            info = next((i for i, _ in self._each(path) if _tar_name(i.name) == name), None)
        finally:
            self.include = ()
        if info is None or not info.isfile() or info.size != size:
            raise ValueError(f"{name}: xorriso and bsdtar disagree about this member of {path.name}")
        with path.open("rb") as f:
            f.seek(offset)
            nested = looks_nested(f.read(40 << 10))
        return Member(name, "file", info.mode, info.uid, info.gid, int(info.mtime), size,
                      sha256_range(path, offset, size), nested=nested)

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
        extents = self.extents(path)
        found: dict[str, Path] = {}
        for index, name in enumerate(sorted(names & set(extents))):  # copied by the kernel, not streamed
            (dest / "in-place").mkdir(exist_ok=True)
            target = dest / "in-place" / safe_name(index, name)
            copy_range(path, target, *extents[name])
            found[name] = target
        rest = {n for n in names - set(found) if not n.startswith(BOOT_PREFIX)}
        if rest:
            found.update(super().extract(path, rest, dest))
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
