"""Hostile images and archives against `mlos-repro diff` (the readers every verifier and SBOM
uses): each is refused by name in bounded time, memory and disk, never with exit 70 or a hang.

Each case compares a hostile file with a benign one of the same format, as a user comparing a
download with a known-good copy would. The real tools make the files (tar, gzip, qemu-img,
mksquashfs); the limits are the readers' own (inspect/members.py, gpt.py, ar.py, qcow2.py).
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MLOS

LIMIT_SECONDS = 300  # a hang is a failure; no case should come near this


def diff(a: Path, b: Path, tmp: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, object], str]:
    scratch = tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    full = {**os.environ, "TMPDIR": str(scratch), **(env or {})}
    start = time.perf_counter()
    p = subprocess.run([*MLOS, "diff", str(a), str(b), "--json"], capture_output=True, text=True, env=full,
                       timeout=LIMIT_SECONDS)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert "internal error" not in p.stderr and p.returncode != 70, p.stderr
    leftover = sum(f.stat().st_size for f in scratch.rglob("*") if f.is_file())
    assert leftover == 0, f"{leftover} bytes left in the temporary directory"
    print(f"{a.name}: exit {p.returncode} in {seconds:.1f} s, peak RSS of children so far "
          f"{usage.ru_maxrss >> 10} MiB")
    return p.returncode, json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}, p.stderr


def aspects(report: dict[str, object]) -> dict[str, str]:
    found = {}
    differences: list[dict[str, str]] = report.get("differences", [])  # type: ignore[assignment]
    for d in differences:
        found[d["aspect"]] = f"{d['path']}: {d['first']} | {d['second']}"
    return found


def ar_archive(path: Path, members: list[tuple[bytes, bytes, str | None]]) -> None:
    """An ar archive; a member's size field may be forged (the third item)."""
    out = bytearray(b"!<arch>\n")
    for name, data, size in members:
        field = (size if size is not None else str(len(data))).encode()
        out += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8) + \
            field.ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))


def gpt_disk(path: Path, count: int = 128, part: tuple[int, int] = (2048, 4095)) -> None:
    sectors = 8192
    disk = bytearray(sectors * 512)
    disk[510:512] = b"\x55\xaa"
    header = bytearray(92)
    header[0:8] = b"EFI PART"
    struct.pack_into("<QQ", header, 40, 34, sectors - 34)
    struct.pack_into("<QII", header, 72, 2, count, 128)
    disk[512:604] = header
    entry = bytearray(128)
    entry[0:16] = b"\x01" * 16
    entry[16:32] = b"\x02" * 16
    struct.pack_into("<QQ", entry, 32, *part)
    disk[1024:1152] = entry
    path.write_bytes(bytes(disk))


def gzip_bomb(path: Path, gib: float) -> None:
    """Concatenated gzip members of zeros: a few MiB that expand to `gib` GiB."""
    block = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    with path.open("wb") as f:
        for _ in range(int(gib * 16)):
            f.write(block)


def nested_gzip(path: Path, levels: int, inner: bytes) -> None:
    data = inner
    for _ in range(levels):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def tar_with(path: Path, members: list[tuple[str, bytes]]) -> None:
    import io

    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


Case = Callable[[Path], tuple[Path, Path]]


def _ar_negative(tmp: Path) -> tuple[Path, Path]:
    ar_archive(tmp / "good.ar", [(b"a", b"hello", None)])
    ar_archive(tmp / "bad.ar", [(b"a", b"hello", "-60")])
    return tmp / "good.ar", tmp / "bad.ar"


def _ar_huge(tmp: Path) -> tuple[Path, Path]:
    ar_archive(tmp / "good.ar", [(b"a", b"hello", None)])
    ar_archive(tmp / "bad.ar", [(b"a", b"hello", "9999999999")])
    return tmp / "good.ar", tmp / "bad.ar"


def _gzip_bomb(tmp: Path) -> tuple[Path, Path]:
    gzip_bomb(tmp / "bomb.gz", 1.25)
    (tmp / "good.gz").write_bytes(gzip.compress(b"hello", mtime=0))
    return tmp / "good.gz", tmp / "bomb.gz"


def _nested_600(tmp: Path) -> tuple[Path, Path]:
    nested_gzip(tmp / "a.gz", 600, b"first")
    nested_gzip(tmp / "b.gz", 600, b"second")
    return tmp / "a.gz", tmp / "b.gz"


def _sparse_tib(tmp: Path) -> tuple[Path, Path]:
    big = tmp / "src/f"
    big.parent.mkdir()
    with big.open("wb") as f:
        f.truncate(1 << 40)
    subprocess.run(["tar", "--sparse", "-C", str(big.parent), "-cf", str(tmp / "sparse.tar"), "f"], check=True)
    tar_with(tmp / "good.tar", [("f", b"hello")])
    return tmp / "good.tar", tmp / "sparse.tar"


def _gpt_whole_disk(tmp: Path) -> tuple[Path, Path]:
    gpt_disk(tmp / "good.img")
    gpt_disk(tmp / "bad.img", part=(0, 8191))
    return tmp / "good.img", tmp / "bad.img"


def _gpt_many_entries(tmp: Path) -> tuple[Path, Path]:
    gpt_disk(tmp / "good.img")
    gpt_disk(tmp / "bad.img", count=2**32 - 1)
    return tmp / "good.img", tmp / "bad.img"


def _qcow2(tmp: Path, *options: str, size: str = "1M") -> tuple[Path, Path]:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / "good.qcow2"), "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(tmp / "bad.qcow2"), size],
                   check=True)
    return tmp / "good.qcow2", tmp / "bad.qcow2"


def _qcow2_backing(tmp: Path) -> tuple[Path, Path]:
    secret = tmp / "host-secret"
    secret.write_bytes(b"root:$6$hash:19000:0:99999:7:::\n".ljust(1 << 20, b"\0"))
    return _qcow2(tmp, "-b", str(secret), "-F", "raw")


def _qcow2_data_file(tmp: Path) -> tuple[Path, Path]:
    secret = tmp / "host-secret"
    secret.write_bytes(b"root:$6$hash:19000:0:99999:7:::\n".ljust(1 << 20, b"\0"))
    return _qcow2(tmp, "-o", f"data_file={secret},data_file_raw=on")


def _qcow2_tib(tmp: Path) -> tuple[Path, Path]:
    return _qcow2(tmp, size="1T")


def _qcow2_malformed(tmp: Path) -> tuple[Path, Path]:
    good, bad = _qcow2(tmp)
    data = bytearray(bad.read_bytes())
    data[20:28] = b"\xff" * 8  # the L1 table and cluster bits are garbage now
    bad.write_bytes(bytes(data[:4096]))
    return good, bad


def _squashfs_truncated(tmp: Path) -> tuple[Path, Path]:
    src = tmp / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(1 << 20))
    subprocess.run(["mksquashfs", str(src), str(tmp / "good.sqfs"), "-noappend", "-quiet", "-comp", "gzip"],
                   check=True, stdout=subprocess.DEVNULL)
    data = (tmp / "good.sqfs").read_bytes()
    (tmp / "bad.sqfs").write_bytes(data[:len(data) // 2])
    return tmp / "good.sqfs", tmp / "bad.sqfs"


# case: (make the pair, the aspect of the difference that says why, words of it)
HOSTILE: dict[str, tuple[Case, str, str]] = {
    "ar member with a negative size": (_ar_negative, "unreadable", "does not fit"),
    "ar member larger than the archive": (_ar_huge, "unreadable", "does not fit"),
    "gzip bomb (1.25 GiB of zeros in 1.3 MB)": (_gzip_bomb, "unreadable", "a decompression bomb"),
    "gzip nested 600 levels": (_nested_600, "unreadable", "nested deeper than 32 levels"),
    "sparse tar member of 1 TiB": (_sparse_tib, "unreadable", "claims 1099511627776 bytes"),
    "GPT partition holding the whole disk": (_gpt_whole_disk, "unreadable", "lie outside the usable"),
    "GPT header claiming 2^32-1 entries": (_gpt_many_entries, "unreadable", "claims 4294967295 entries"),
    "qcow2 with a backing file on the host": (_qcow2_backing, "unreadable", "refers to a file outside it"),
    "qcow2 with an external data file on the host": (_qcow2_data_file, "unreadable",
                                                     "refers to a file outside it"),
    "qcow2 of 1 TiB virtual size": (_qcow2_tib, "unreadable", "claims a 1099511627776-byte disk"),
    "malformed qcow2": (_qcow2_malformed, "unreadable", "qemu-img"),
    "truncated squashfs": (_squashfs_truncated, "unreadable", "sqfs2tar exit"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_is_refused_by_name(case: str, tmp_path: Path) -> None:
    make, aspect, words = HOSTILE[case]
    good, bad = make(tmp_path)
    code, report, err = diff(good, bad, tmp_path)
    assert code == 1, (report, err)
    found = aspects(report)
    assert aspect in found and words in found[aspect], found
    assert "shadow" not in json.dumps(report) and "root:$6$" not in json.dumps(report)


def test_member_names_are_shown_escaped(tmp_path: Path) -> None:
    """A name carrying a terminal escape and a newline that forges an 'identical' line."""
    forged = "a\x1b[2J\nrootfs/rootfs.tar: identical"
    tar_with(tmp_path / "a.tar", [(forged, b"one")])
    tar_with(tmp_path / "b.tar", [(forged, b"two")])
    p = subprocess.run([*MLOS, "diff", str(tmp_path / "a.tar"), str(tmp_path / "b.tar")], capture_output=True,
                       text=True, timeout=LIMIT_SECONDS)
    assert p.returncode == 1, p.stderr
    out = p.stdout + p.stderr
    assert "\x1b" not in out and "\\x1b[2J\\x0arootfs/rootfs.tar: identical" in out
    assert not any(line.startswith("rootfs/rootfs.tar: identical") for line in out.splitlines())


def test_a_name_twice_compares_what_extraction_leaves(tmp_path: Path) -> None:
    """tar -x leaves the last of two members of one name: that one is compared, both are named."""
    tar_with(tmp_path / "a.tar", [("etc/motd", b"same"), ("etc/motd", b"first")])
    tar_with(tmp_path / "b.tar", [("etc/motd", b"same"), ("etc/motd", b"second")])
    code, report, err = diff(tmp_path / "a.tar", tmp_path / "b.tar", tmp_path)
    assert code == 1, err
    found = aspects(report)
    assert "holds 2 members of this name" in found["duplicate"]
    assert found["content"].startswith("a.tar → etc/motd") or "etc/motd" in found["content"]
    subprocess.run(["tar", "-C", str(tmp_path), "-xf", str(tmp_path / "a.tar")], check=True)
    assert (tmp_path / "etc/motd").read_bytes() == b"first"  # what was compared is what tar leaves


def test_a_missing_tool_is_named_not_taken_for_an_opaque_file(tmp_path: Path) -> None:
    """Without sqfs2tar, two squashfs images that must be read whole (made with different
    compressors, so not comparable through their metadata) are not 'different blobs': exit 3."""
    good, _ = _squashfs_truncated(tmp_path)
    subprocess.run(["mksquashfs", str(tmp_path / "src"), str(tmp_path / "other.sqfs"), "-noappend", "-quiet",
                    "-comp", "xz"], check=True, stdout=subprocess.DEVNULL)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bsdtar", "zstd", "diffoscope", "qemu-img", "xorriso", "prlimit"):
        if shutil.which(tool):
            (tools / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    p = subprocess.run([*MLOS, "diff", str(good), str(tmp_path / "other.sqfs")], capture_output=True, text=True,
                       env={**os.environ, "PATH": str(tools)}, timeout=LIMIT_SECONDS)
    assert p.returncode == 3 and "sqfs2tar" in p.stderr and "squashfs-tools-ng" in p.stderr, p.stderr


def test_a_tool_failing_midway_is_not_a_short_listing(tmp_path: Path) -> None:
    """zstd that stops on a corrupt frame: the listing is refused, not cut short."""
    tar_with(tmp_path / "t.tar", [(f"f{i}", os.urandom(4096)) for i in range(64)])
    subprocess.run(["zstd", "-q", "-f", str(tmp_path / "t.tar"), "-o", str(tmp_path / "good.tar.zst")], check=True)
    data = bytearray((tmp_path / "good.tar.zst").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
    (tmp_path / "bad.tar.zst").write_bytes(bytes(data))
    code, report, err = diff(tmp_path / "good.tar.zst", tmp_path / "bad.tar.zst", tmp_path)
    assert code == 1, err
    assert "zstd exit" in aspects(report).get("unreadable", ""), aspects(report)


def test_crc_is_not_needed_to_refuse(tmp_path: Path) -> None:
    """zlib's own checks: a gzip whose CRC is wrong is unreadable, named."""
    good = gzip.compress(b"hello world" * 100, mtime=0)
    bad = bytearray(good)
    struct.pack_into("<I", bad, len(bad) - 8, zlib.crc32(b"x"))
    (tmp_path / "good.gz").write_bytes(good)
    (tmp_path / "bad.gz").write_bytes(bytes(bad))
    code, report, err = diff(tmp_path / "good.gz", tmp_path / "bad.gz", tmp_path)
    assert code == 1 and "unreadable" in aspects(report), (report, err)


def ext4_image(path: Path, content: bytes) -> None:
    src = path.with_suffix(".src")
    src.mkdir()
    (src / "file").write_bytes(content)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(src), str(path), "4M"], check=True)


def test_a_mount_left_by_a_killed_reader_is_swept(tmp_path: Path) -> None:
    """fuse2fs mounts of a reader killed with -9 are unmounted and removed by the next run."""
    ext4_image(tmp_path / "a.img", b"one")
    ext4_image(tmp_path / "b.img", b"two")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"mlos-ext4-{dead.pid}-stale"
    stale.mkdir()
    fuse = subprocess.Popen(["fuse2fs", "-f", str(tmp_path / "a.img"), str(stale), "-o", "ro,fakeroot"])
    try:
        for _ in range(50):
            if os.path.ismount(stale):
                break
            time.sleep(0.1)
        assert os.path.ismount(stale)
    finally:
        fuse.kill()  # as kill -9 would leave it: a dead FUSE mount
        fuse.wait()
    p = subprocess.run([*MLOS, "diff", str(tmp_path / "a.img"), str(tmp_path / "b.img")], capture_output=True,
                       text=True, timeout=LIMIT_SECONDS)
    assert p.returncode == 1 and "file: content" in p.stdout + p.stderr, p.stdout + p.stderr
    assert not stale.exists()
    assert not any(Path(tempfile.gettempdir()).glob(f"mlos-ext4-{os.getpid()}-*"))


def test_a_fat_directory_containing_itself_is_refused(tmp_path: Path) -> None:
    """A FAT directory entry pointing back at its own directory: refused, not walked for ever."""
    from mlos_repro.inspect.fat import _Fat

    for name in ("good", "bad"):
        img = tmp_path / f"{name}.img"
        subprocess.run(["mkfs.fat", "-C", "-i", "12345678", str(img), "2048"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["mmd", "-i", str(img), "::/d"], check=True)
        (tmp_path / "f").write_bytes(name.encode())
        subprocess.run(["mcopy", "-i", str(img), str(tmp_path / "f"), "::/d/f"], check=True)
    bad = tmp_path / "bad.img"
    with bad.open("r+b") as f:
        fat = _Fat(f)
        f.seek(fat.root_start)
        root = f.read(fat.root_size)
        entry = next(root[i:i + 32] for i in range(0, len(root), 32) if root[i:i + 11] == b"D          ")
        cluster = struct.unpack_from("<H", entry, 26)[0]
        start = fat.data_start + (cluster - 2) * fat.per_cluster * fat.sector
        f.seek(start)
        listing = f.read(fat.per_cluster * fat.sector)
        free = next(i for i in range(0, len(listing), 32) if listing[i] == 0)
        loop = bytearray(entry)
        loop[0:11] = b"LOOP       "
        f.seek(start + free)
        f.write(bytes(loop))  # a subdirectory LOOP whose cluster is d's own
    code, report, err = diff(tmp_path / "good.img", bad, tmp_path)
    assert code == 1, err
    assert "loops back to cluster" in aspects(report).get("unreadable", ""), aspects(report)


def test_an_absent_xorriso_is_named(tmp_path: Path) -> None:
    """Without xorriso an ISO's El Torito images cannot be read: exit 3, not a silent omission."""
    for name in ("a", "b"):
        src = tmp_path / f"src-{name}"
        src.mkdir()
        (src / "file").write_text(name)
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-o", str(tmp_path / f"{name}.iso"), str(src)],
                       check=True, stderr=subprocess.DEVNULL)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bsdtar", "prlimit", "diffoscope"):
        if shutil.which(tool):
            (tools / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]
    p = subprocess.run([*MLOS, "diff", str(tmp_path / "a.iso"), str(tmp_path / "b.iso")], capture_output=True,
                       text=True, env={**os.environ, "PATH": str(tools)}, timeout=LIMIT_SECONDS)
    assert p.returncode == 3 and "xorriso" in p.stderr, p.stderr
