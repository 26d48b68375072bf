"""The layered comparison inside real images made with the real tools (mksquashfs, xorriso,
mkfs.vfat, mkfs.ext4, sfdisk): it names the innermost differing file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import mlos

EPOCH = "1700000000"


def _sh(*argv: str, **kw: object) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def _squashfs(root: Path, dest: Path) -> None:
    _sh("mksquashfs", str(root), str(dest), "-quiet", "-noappend", "-reproducible",
        "-mkfs-time", "0", "-all-time", "0", "-all-root")


def _esp(dest: Path, payload: str, serial: str) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "MTOOLS_SKIP_CHECK": "1"}
    _sh("mkfs.vfat", "-C", "-i", serial, "-n", "ESP", str(dest), "4096", env=env)
    cfg = dest.with_name(dest.name + ".grub.cfg")
    cfg.write_text(payload)
    os.utime(cfg, (int(EPOCH), int(EPOCH)))
    _sh("mcopy", "-m", "-i", str(dest), str(cfg), "::/grub.cfg", env=env)  # -m: keep the mtime
    cfg.unlink()


def _shared_esp(tmp: Path) -> Path:
    """One ESP image per test: mkfs.vfat without --invariant stamps the current time."""
    esp = tmp / "esp.img"
    if not esp.exists():
        _esp(esp, "menuentry mlos {}\n", "1234ABCD")
    return esp


def _iso(tmp: Path, name: str, os_release: str) -> Path:
    root = tmp / f"{name}-root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(os_release)
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("MLOS\n")
    tree = tmp / f"{name}-tree"
    (tree / "live").mkdir(parents=True)
    _squashfs(root, tree / "live/filesystem.squashfs")
    shutil.copyfile(_shared_esp(tmp), tree / "efi.img")
    iso = tmp / f"{name}.iso"
    _mkiso(tree, iso)
    return iso


def _mkiso(tree: Path, iso: Path) -> None:
    """xorriso takes volume dates from SOURCE_DATE_EPOCH; file dates come from the tree."""
    for p in [tree, *tree.rglob("*")]:
        os.utime(p, (int(EPOCH), int(EPOCH)))
    iso.unlink(missing_ok=True)
    _sh("xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "MLOS", "-R", "-J",
        "-e", "efi.img", "-no-emul-boot", str(tree), env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH})


def test_iso_squashfs_names_the_file(tmp_path: Path) -> None:
    a = _iso(tmp_path, "a", "ID=mlos\n")
    b = _iso(tmp_path, "b", "ID=mlos\nBUILD_HOST=leaked\n")
    result = mlos("diff", a, b, "--json", "--report", tmp_path / "r")
    assert result.code == 1, result.stderr
    diffs = json.loads(result.stdout)["differences"]
    assert [(d["path"], d["aspect"]) for d in diffs] == [
        ("a.iso → live/filesystem.squashfs → usr/lib/os-release", "content")]
    assert "+BUILD_HOST=leaked" in (tmp_path / "r" / "a.iso.txt").read_text()


def test_iso_el_torito_image_is_compared(tmp_path: Path) -> None:
    a = _iso(tmp_path, "a", "ID=mlos\n")
    b = _iso(tmp_path, "b", "ID=mlos\n")
    assert mlos("diff", a, b).code == 0  # made twice, bit for bit
    tree = tmp_path / "b-tree"
    (tree / "efi.img").unlink()
    _esp(tree / "efi.img", "menuentry mlos {}\n", "CAFEF00D")
    _mkiso(tree, b)
    diffs = json.loads(mlos("diff", a, b, "--json").stdout)["differences"]
    found = {(d["path"], d["aspect"], d["first"], d["second"]) for d in diffs}
    assert ("a.iso → efi.img → (volume serial)", "id", "1234ABCD", "CAFEF00D") in found


def _disk(tmp: Path, name: str, hostname: str, part_uuid: str) -> Path:
    root = tmp / f"{name}-root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text(hostname)
    (root / "etc/os-release").write_text("ID=mlos\n")
    for p in (root / "etc/hostname", root / "etc/os-release", root / "etc", root):
        os.utime(p, (int(EPOCH), int(EPOCH)))
    disk = tmp / f"{name}.img"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    table = ("label: gpt\nlabel-id: 11111111-2222-3333-4444-555555555555\nfirst-lba: 2048\n"
             'start=2048, size=8192, type=U, name="ESP", uuid=aaaaaaaa-0000-0000-0000-000000000001\n'
             f'start=10240, type=L, name="root", uuid={part_uuid}\n')
    subprocess.run(["sfdisk", "-q", str(disk)], input=table.encode(), check=True)
    esp = _shared_esp(tmp)
    _sh("dd", f"if={esp}", f"of={disk}", "bs=512", "seek=2048", "conv=notrunc")
    _sh("mkfs.ext4", "-q", "-F", "-U", "01234567-89ab-cdef-0123-456789abcdef",
        "-E", f"offset={10240 * 512},hash_seed=01234567-89ab-cdef-0123-456789abcdef",
        "-d", str(root), str(disk), "24M", env={**os.environ, "E2FSPROGS_FAKE_TIME": EPOCH})
    return disk


def test_gpt_disk_names_files_and_ids(tmp_path: Path) -> None:
    a = _disk(tmp_path, "a", "mlos\n", "aaaaaaaa-0000-0000-0000-000000000002")
    b = _disk(tmp_path, "b", "leaked-host\n", "aaaaaaaa-0000-0000-0000-000000000003")
    result = mlos("diff", a, b, "--json")
    assert result.code == 1, result.stderr
    found = {(d["path"], d["aspect"]) for d in json.loads(result.stdout)["differences"]}
    assert ("a.img → p2-root → etc/hostname", "content") in found
    assert ("a.img → p2-root (partition guid)", "id") in found
    assert not any("os-release" in p for p, _ in found)


def test_fat_names_a_file_whose_time_differs(tmp_path: Path) -> None:
    """FAT keeps local time: a build's time zone leaking into an ESP is named per file."""
    images = {}
    for tz in ("UTC", "Etc/GMT-14"):
        env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "MTOOLS_SKIP_CHECK": "1", "TZ": tz}
        img = tmp_path / f"esp-{tz.replace('/', '-')}.img"
        _sh("mkfs.vfat", "-C", "--invariant", "-i", "1234ABCD", "-n", "ESP", str(img), "4096", env=env)
        cfg = tmp_path / "grub.cfg"
        cfg.write_text("menuentry mlos {}\n")
        _sh("mmd", "-i", str(img), "::/EFI", env=env)
        _sh("mcopy", "-i", str(img), str(cfg), "::/EFI/grub.cfg", env=env)  # dated SOURCE_DATE_EPOCH
        images[tz] = img
    result = mlos("diff", images["UTC"], images["Etc/GMT-14"], "--json")
    assert result.code == 1, result.stderr
    found = {(d["path"], d["aspect"], d["first"], d["second"])
             for d in json.loads(result.stdout)["differences"]}
    name = images["UTC"].name
    assert (f"{name} → EFI/grub.cfg", "mtime", EPOCH, str(int(EPOCH) + 14 * 3600)) in found
    assert (f"{name} → EFI", "mtime", EPOCH, str(int(EPOCH) + 14 * 3600)) in found
    assert not any(aspect == "content" for _, aspect, _, _ in found)
