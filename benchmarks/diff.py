"""Layered diff vs. diffoscope alone, on large images made here, measured in the same run.

    .venv/bin/python benchmarks/diff.py [--size-mib 1024] [--disk-mib 2048] [--workdir DIR] [--quick]

1. two ISO images (~size) holding a squashfs, differing in one small file;
2. two raw GPT disk images (ESP + ext4 root, ~disk size) differing in a handful of files and ids.

For each: wall time and peak memory (max RSS of the process tree) of `mlos-repro diff` and of
`diffoscope` on the same pair. diffoscope runs under a time limit and an address-space limit
so that it cannot take the machine down; hitting either is reported as such. For the ISO pair
also the ratio to hashing both files (`openssl dgst -sha256`, same run; target <= 1.5x).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCH = 1700000000
CHUNK = 4 << 20


def measure(argv: list[str], timeout: float, mem_limit: int | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB of the largest process of the tree, outcome), via GNU time."""
    def limit() -> None:
        if mem_limit:
            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))

    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-o", rss.name, "-f", "%M", *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=limit,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
            outcome = f"exit {proc.returncode}"
            if proc.returncode not in (0, 1) and err.strip():
                outcome += " (" + err.decode(errors="replace").strip().splitlines()[-1][:80] + ")"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole tree, not only GNU time
            proc.wait()
            outcome = f"killed at the {timeout:.0f} s limit"
        seconds = time.perf_counter() - start
        text = Path(rss.name).read_text().strip().splitlines()
    peak = int(text[-1]) / 1024 if text and text[-1].isdigit() else float("nan")
    return seconds, peak, outcome


def fill(root: Path, mib: int, seed: int = 7) -> None:
    """Incompressible payload files, identical on both sides."""
    rng = os.urandom  # content need not be the same run to run, only on both sides
    data_dir = root / "usr/lib/mlos-models"
    data_dir.mkdir(parents=True)
    block = rng(CHUNK)
    for i in range(max(1, mib // 8)):
        with (data_dir / f"weights-{i:04d}.bin").open("wb") as f:
            for j in range(2):
                f.write(bytes([i % 251, j]) + block[2:])
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/motd").write_text("MLOS\n")


def clamp(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        os.utime(p, (EPOCH, EPOCH), follow_symlinks=False)


def sh(*argv: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, **(env or {})})


def make_isos(work: Path, mib: int) -> tuple[Path, Path]:
    base = work / "iso-root"
    fill(base, mib)
    isos = []
    for side, release in (("a", "ID=mlos\n"), ("b", "ID=mlos\nBUILD_ID=leaked\n")):
        root = work / f"root-{side}"
        shutil.copytree(base, root, copy_function=os.link)
        (root / "usr/lib/os-release").write_text(release)
        clamp(root)
        tree = work / f"tree-{side}"
        (tree / "live").mkdir(parents=True)
        sh("mksquashfs", str(root), str(tree / "live/filesystem.squashfs"), "-quiet", "-noappend",
           "-reproducible", "-mkfs-time", str(EPOCH), "-all-time", str(EPOCH), "-all-root",
           "-noI", "-noD", "-noF", "-noX")
        clamp(tree)
        iso = work / f"mlos-{side}.iso"
        sh("xorriso", "-as", "mkisofs", "-quiet", "-o", str(iso), "-V", "MLOS", "-R", "-J", str(tree),
           env={"SOURCE_DATE_EPOCH": str(EPOCH)})
        shutil.rmtree(tree)
        shutil.rmtree(root)
        isos.append(iso)
    shutil.rmtree(base)
    return isos[0], isos[1]


def make_disks(work: Path, mib: int) -> tuple[Path, Path]:
    base = work / "disk-root"
    fill(base, int(mib * 0.7))
    disks = []
    for side, (host, guid, seed) in {
        "a": ("mlos", "aaaaaaaa-0000-0000-0000-000000000002", "01234567-89ab-cdef-0123-456789abcdef"),
        "b": ("leaked", "aaaaaaaa-0000-0000-0000-000000000003", "fedcba98-7654-3210-fedc-ba9876543210"),
    }.items():
        root = work / f"droot-{side}"
        shutil.copytree(base, root, copy_function=os.link)
        for name in ("hostname", "machine-id", "issue"):
            (root / f"etc/{name}").write_text(f"{host} {name}\n")
        clamp(root)
        disk = work / f"mlos-{side}.img"
        with disk.open("wb") as f:
            f.truncate(mib << 20)
        table = (f"label: gpt\nfirst-lba: 2048\n"
                 'start=2048, size=65536, type=U, name="ESP"\n'
                 f'start=67584, type=L, name="root", uuid={guid}\n')
        subprocess.run(["sfdisk", "-q", str(disk)], input=table.encode(), check=True)
        sh("mkfs.ext4", "-q", "-F", "-U", seed, "-E", f"offset={67584 * 512},hash_seed={seed}",
           "-d", str(root), str(disk), f"{mib - 40}M", env={"E2FSPROGS_FAKE_TIME": str(EPOCH)})
        shutil.rmtree(root)
        disks.append(disk)
    shutil.rmtree(base)
    return disks[0], disks[1]


def with_manifests(a: Path, b: Path, work: Path) -> tuple[float, float, list[str]]:
    """(seconds to record one manifest at build time, seconds to compare two, differences)."""
    from mlos_repro.digest import sha256_file
    from mlos_repro.inspect import manifest
    from mlos_repro.inspect.layers import compare, manifest_side

    start = time.perf_counter()
    ma = manifest.build(a, sha256_file(a), work / "ma")
    record = time.perf_counter() - start
    mb = manifest.build(b, sha256_file(b), work / "mb")
    start = time.perf_counter()
    diffs = compare(manifest_side(ma, a, work / "la"), manifest_side(mb, b, work / "lb"), (a.name,))
    return record, time.perf_counter() - start, [f"{d.where}: {d.aspect}" for d in diffs]


def report(title: str, ours: tuple[float, float, str], theirs: tuple[float, float, str],
           manifests: tuple[float, float, list[str]]) -> None:
    print(title)
    print(f"   mlos-repro diff: {ours[0]:8.1f} s  peak {ours[1]:8.0f} MiB  ({ours[2]})")
    print(f"   diffoscope:      {theirs[0]:8.1f} s  peak {theirs[1]:8.0f} MiB  ({theirs[2]})")
    print(f"   => {theirs[0] / ours[0]:.1f}x faster, {theirs[1] / max(ours[1], 1):.1f}x less memory")
    record, compared, found = manifests
    print(f"   with member manifests recorded at build time ({record:.1f} s per artifact to record):")
    print(f"   comparing the manifests: {compared * 1000:8.1f} ms  => "
          f"{theirs[0] / compared:.0f}x faster than diffoscope")
    for line in found[:6]:
        print(f"     {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--disk-mib", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--diffoscope-timeout", type=float, default=300)
    parser.add_argument("--diffoscope-mem-gib", type=int, default=12)
    parser.add_argument("--no-diffoscope", action="store_true", help="measure mlos-repro diff only")
    parser.add_argument("--quick", action="store_true",
                        help="small inputs, few repetitions: checks that the benchmark runs (CI)")
    args = parser.parse_args()
    if args.quick:
        # diffoscope may hit these limits on the disk pair; the benchmark reports that as such.
        args.size_mib, args.disk_mib, args.diffoscope_timeout, args.diffoscope_mem_gib = 32, 256, 60, 1
    mlos = [sys.executable, "-m", "mlos_repro", "diff"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        a, b = make_isos(work, args.size_mib)
        print(f"ISO pair: {a.stat().st_size >> 20} MiB each")
        measure(["cat", str(a), str(b)], 600)  # both in the page cache, for both measurements
        hashing = measure(["openssl", "dgst", "-sha256", str(a), str(b)], 600)
        ours = measure([*mlos, str(a), str(b)], 600)
        print(f"   hashing both (openssl dgst): {hashing[0]:.2f} s; mlos-repro diff {ours[0]:.2f} s -> "
              f"{ours[0] / hashing[0]:.2f}x (target <= 1.5x)")
        if args.no_diffoscope:
            return
        theirs = measure(["diffoscope", "--no-progress", "--text", str(work / "d.txt"), str(a), str(b)],
                         args.diffoscope_timeout, args.diffoscope_mem_gib << 30)
        report("1. ISO + squashfs, one differing file", ours, theirs, with_manifests(a, b, work / "m1"))
        a.unlink()
        b.unlink()
        a, b = make_disks(work, args.disk_mib)
        print(f"GPT disk pair: {a.stat().st_size >> 20} MiB each")
        ours = measure([*mlos, str(a), str(b)], 600)
        theirs = measure(["diffoscope", "--no-progress", "--text", str(work / "e.txt"), str(a), str(b)],
                         args.diffoscope_timeout, args.diffoscope_mem_gib << 30)
        report("2. GPT disk (ESP + ext4), a handful of files and ids", ours, theirs,
               with_manifests(a, b, work / "m2"))


if __name__ == "__main__":
    main()
