"""The layered comparison on artifacts made here: it names the innermost member and the aspect."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from mlos_repro.inspect.layers import compare_paths
from tests.conftest import mlos


def _tar(entries: list[tuple[str, bytes, int, int]], compress: str = "") -> bytes:
    """entries: (name, content, mode, mtime)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mode, mtime in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, mtime
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if compress == "gz":
        return gzip.compress(raw, mtime=0)
    if compress == "zst":
        return subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True).stdout
    return raw


def _cpio(entries: list[tuple[str, bytes]]) -> bytes:
    """A newc archive, as the kernel's initramfs uses."""
    out = bytearray()

    def add(name: str, data: bytes, mode: int) -> None:
        nb = name.encode() + b"\0"
        fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + nb)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for name, data in entries:
        add(name, data, 0o100644)
    add("TRAILER!!!", b"", 0)
    return bytes(out)


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out.extend(f"{name:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode())
        out.extend(data + (b"\n" if len(data) % 2 else b""))
    return bytes(out)


def _compare(tmp_path: Path, a: bytes, b: bytes, name: str = "art") -> list[tuple[str, str]]:
    (tmp_path / "a").write_bytes(a)
    (tmp_path / "b").write_bytes(b)
    diffs = compare_paths(tmp_path / "a", tmp_path / "b", name, tmp_path / "work")
    return [(d.where, d.aspect) for d in diffs]


def test_identical_files_have_no_difference(tmp_path: Path) -> None:
    t = _tar([("x", b"1", 0o644, 0)], "gz")
    assert _compare(tmp_path, t, t) == []


def test_tar_gz_mtime_mode_content(tmp_path: Path) -> None:
    a = _tar([("etc/a", b"same", 0o644, 10), ("etc/b", b"one", 0o644, 10), ("etc/c", b"c", 0o644, 10)], "gz")
    b = _tar([("etc/a", b"same", 0o644, 11), ("etc/b", b"two", 0o644, 10), ("etc/c", b"c", 0o600, 10)], "gz")
    assert _compare(tmp_path, a, b) == [("art → etc/a", "mtime"), ("art → etc/c", "mode"),
                                        ("art → etc/b", "content")]


def test_order_added_removed(tmp_path: Path) -> None:
    a = _tar([("a", b"1", 0o644, 0), ("b", b"2", 0o644, 0), ("gone", b"", 0o644, 0)])
    b = _tar([("b", b"2", 0o644, 0), ("a", b"1", 0o644, 0), ("new", b"", 0o644, 0)])
    found = _compare(tmp_path, a, b)
    assert ("art → gone", "removed") in found and ("art → new", "added") in found
    assert ("art", "order") in found


def test_nested_tar_cpio_gz_names_the_innermost_file(tmp_path: Path) -> None:
    def bundle(hostname: bytes) -> bytes:
        initrd = gzip.compress(_cpio([("init", b"#!/bin/sh\n"), ("etc/hostname", hostname)]), mtime=0)
        return _tar([("boot/initrd.img", initrd, 0o644, 0), ("boot/vmlinuz", b"kernel", 0o644, 0)], "zst")

    assert _compare(tmp_path, bundle(b"mlos\n"), bundle(b"leaked-host\n"), "bundle.tar.zst") == [
        ("bundle.tar.zst → boot/initrd.img → etc/hostname", "content")]


def test_deb_like_ar_with_members(tmp_path: Path) -> None:
    def deb(readme: bytes) -> bytes:
        data = _tar([("./usr/share/doc/x/README", readme, 0o644, 0)], "gz")
        return _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", _tar([("./control", b"P", 0o644, 0)], "gz")),
                    ("data.tar.gz", data)])

    assert _compare(tmp_path, deb(b"v1"), deb(b"v2"), "x.deb") == [
        ("x.deb → data.tar.gz → usr/share/doc/x/README", "content")]


def test_same_members_different_bytes_names_the_container(tmp_path: Path) -> None:
    raw = _tar([("a", b"1", 0o644, 0)])
    a, b = gzip.compress(raw, mtime=1), gzip.compress(raw, mtime=2)  # only the gzip header differs
    assert _compare(tmp_path, a, b) == [("art", "container")]


def test_opaque_binary_is_handed_whole_to_diffoscope(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"\x7fELF\x00\x01binary")
    (tmp_path / "b").write_bytes(b"\x7fELF\x00\x02binary")
    (d,) = compare_paths(tmp_path / "a", tmp_path / "b", "prog", tmp_path / "w")
    assert d.aspect == "content" and d.opaque


@pytest.mark.parametrize("as_json", [False, True])
def test_diff_command(tmp_path: Path, as_json: bool) -> None:
    a, b = tmp_path / "one.tar.gz", tmp_path / "two.tar.gz"
    a.write_bytes(_tar([("usr/lib/os-release", b"VERSION=1\n", 0o644, 0)], "gz"))
    b.write_bytes(_tar([("usr/lib/os-release", b"VERSION=2\n", 0o644, 0)], "gz"))
    args: list[str | Path] = ["diff", a, b, "--report", tmp_path / "reports"]
    args += ["--json"] if as_json else []
    result = mlos(*args)
    assert result.code == 1
    if as_json:
        data = json.loads(result.stdout)
        assert data["differences"][0]["path"] == "one.tar.gz → usr/lib/os-release"
    else:
        assert "one.tar.gz → usr/lib/os-release: content" in result.stdout
    text = (tmp_path / "reports" / "one.tar.gz.txt").read_text()
    assert "-VERSION=1" in text and "+VERSION=2" in text  # diffoscope shows the values
    assert mlos("diff", a, a).code == 0


def test_diff_directories(tmp_path: Path) -> None:
    for side, value in (("a", "1"), ("b", "2")):
        (tmp_path / side / "sub").mkdir(parents=True)
        (tmp_path / side / "sub" / "f").write_text(value)
        (tmp_path / side / "same").write_text("x")
    result = mlos("diff", tmp_path / "a", tmp_path / "b", "--json")
    assert result.code == 1
    assert [d["path"] for d in json.loads(result.stdout)["differences"]] == ["a → sub/f"]


def test_manifests_name_the_file_without_the_bytes_and_locate_leaves(tmp_path: Path) -> None:
    from mlos_repro.digest import sha256_file
    from mlos_repro.inspect import manifest
    from mlos_repro.inspect.layers import compare, manifest_side

    def bundle(value: bytes) -> bytes:
        initrd = gzip.compress(_cpio([("init", b"#!/bin/sh\n"), ("etc/hostname", value)]), mtime=0)
        return _tar([("boot/initrd.img", initrd, 0o644, 0), ("boot/vmlinuz", b"kernel", 0o644, 0)], "gz")

    sides = []
    for name, value in (("a", b"mlos\n"), ("b", b"leaked\n")):
        path = tmp_path / f"{name}.tar.gz"
        path.write_bytes(bundle(value))
        listing = manifest.build(path, sha256_file(path), tmp_path / f"m-{name}")
        json.dumps(listing)  # it is plain JSON
        sides.append(manifest_side(listing, path, tmp_path / f"w-{name}"))
    (diff,) = compare(sides[0], sides[1], ("bundle",))
    assert (diff.where, diff.aspect) == ("bundle → boot/initrd.img → etc/hostname", "content")
    assert diff.sides is not None
    first, second = (s.file() for s in diff.sides)
    assert first is not None and second is not None
    assert (first.read_bytes(), second.read_bytes()) == (b"mlos\n", b"leaked\n")
