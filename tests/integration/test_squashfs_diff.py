"""Two squashfs images compared through their own metadata (inspect/squashfs_index.py) name
exactly what reading them whole with sqfs2tar names, in place inside an ISO as well, and fall
back to sqfs2tar where the metadata path does not apply (different compressors)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mlos_repro.inspect import layers
from mlos_repro.inspect.layers import FileSide, SquashfsSide, compare
from mlos_repro.inspect.squashfs_index import Image

EPOCH = "1700000000"
RANDOM = os.urandom(2 << 20)


def tree(root: Path, variant: str) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/models").mkdir(parents=True)
    for i in range(40):
        (root / f"usr/lib/models/w{i:02d}.bin").write_bytes(bytes([i]) * 70_000 + b"tail" * i)
    (root / "usr/lib/models/random.bin").write_bytes(RANDOM)  # the same incompressible 2 MiB on both sides
    (root / "etc/motd").write_text("MLOS\n" if variant == "a" else "MLOS changed\n")
    (root / "etc/hostname").write_text("mlos\n")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    (root / "usr/bin/tool").chmod(0o755 if variant == "a" else 0o700)
    (root / "usr/bin/link").symlink_to("tool" if variant == "a" else "other")
    if variant == "b":
        (root / "etc/added").write_text("new\n")
    os.link(root / "etc/hostname", root / "etc/hostname.hard")
    return root


def squashfs(src: Path, dest: Path, comp: str = "zstd") -> Path:
    subprocess.run(["mksquashfs", str(src), str(dest), "-noappend", "-quiet", "-comp", comp, "-all-root",
                    "-mkfs-time", EPOCH, "-all-time", EPOCH], check=True, stdout=subprocess.DEVNULL)
    return dest


def found(a: Path, b: Path, work: Path) -> set[tuple[str, str, str, str]]:
    return {(d.where.split(" → ", 1)[-1], d.aspect, d.first, d.second)
            for d in compare(FileSide(a, work), FileSide(b, work), ("img",))}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("sqfs")
    return (squashfs(tree(tmp / "a", "a"), tmp / "a.sqfs"), squashfs(tree(tmp / "b", "b"), tmp / "b.sqfs"))


def test_metadata_comparison_names_what_sqfs2tar_names(images: tuple[Path, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = images
    fast = found(a, b, tmp_path / "fast")
    with monkeypatch.context() as m:
        m.setattr(SquashfsSide, "pair", staticmethod(lambda x, y: None))  # the sqfs2tar path
        slow = found(a, b, tmp_path / "slow")
    assert fast == slow
    aspects = {(where, aspect) for where, aspect, _, _ in fast}
    assert aspects == {("etc/motd", "content"), ("usr/bin/tool", "mode"), ("usr/bin/link", "target"),
                       ("etc/added", "added")}, fast


def test_the_index_lists_what_sqfs2tar_lists(images: tuple[Path, Path]) -> None:
    from mlos_repro.inspect.squashfs import SquashfsReader

    a, _ = images
    image = Image(a)
    try:
        ours = {(e.name, e.type, e.mode, e.uid, e.mtime, e.target if e.type != "hardlink" else "")
                for e in image.entries()}
    finally:
        image.close()
    theirs = {(m.name.rstrip("/"), m.type, m.mode, m.uid, m.mtime, m.target if m.type != "hardlink" else "")
              for m in SquashfsReader().members(a)}
    assert ours == theirs


def test_in_place_inside_an_iso(images: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The squashfs inside two ISOs is compared where it lies: not copied out of either."""
    isos = []
    for image in images:
        src = tmp_path / f"iso-{image.stem}/live"
        src.mkdir(parents=True)
        os.link(image, src / "filesystem.squashfs")
        iso = tmp_path / f"{image.stem}.iso"
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(iso), str(src.parent)],
                       check=True, stderr=subprocess.DEVNULL)
        isos.append(iso)
    seen: list[object] = []
    original = SquashfsSide.pair

    def spy(x: FileSide, y: FileSide) -> object:
        seen.append((type(x).__name__, getattr(x, "materialized", None)))
        return original(x, y)
    monkeypatch.setattr(layers.SquashfsSide, "pair", staticmethod(spy))
    diffs = found(isos[0], isos[1], tmp_path / "w")
    assert ("live/filesystem.squashfs → etc/motd", "content") in {(w, a) for w, a, _, _ in diffs}
    assert ("WindowSide", False) in seen  # read in place, never extracted
    assert not list((tmp_path / "w").rglob("filesystem.squashfs*"))


def test_different_compressors_fall_back_to_sqfs2tar(images: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = images
    other = squashfs(tree(tmp_path / "b", "b"), tmp_path / "b-xz.sqfs", comp="xz")
    assert SquashfsSide.pair(FileSide(a, tmp_path), FileSide(other, tmp_path)) is None
    aspects = {(w, asp) for w, asp, _, _ in found(a, other, tmp_path / "w")}
    assert ("etc/motd", "content") in aspects and ("etc/added", "added") in aspects
