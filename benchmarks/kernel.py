"""Kernel stage cost: cold through mlos-repro vs. the same commands run bare, and warm (cached).

    .venv/bin/python benchmarks/kernel.py [--store DIR] [--order bare-first|cold-first] [--quick]

"Bare" runs kernel/scripts/build.sh directly on the host, in a scratch directory, with the
same inputs and environment variables and no sandbox, store or manifests; the difference is
our overhead. Needs the kernel builder's packages on the host (build-essential, bc, bison,
flex, libelf-dev, libssl-dev, cpio, kmod, rsync, fakeroot, dpkg-dev).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlos_repro.recipe import load_recipes
from mlos_repro.store import Store, default_root

PROJECT = Path(__file__).resolve().parent.parent


def timed(argv: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def bare(store: Store, work: Path) -> float:
    """build.sh with /in, /out and /build replaced by host directories; no sandbox or store."""
    recipes = load_recipes(PROJECT / "recipes")
    source = next(i for i in recipes.stages["kernel"].inputs if i.name == "source")
    assert source.sha256 is not None
    for d in ("out", "build"):
        (work / d).mkdir(parents=True)
    shutil.copytree(PROJECT / "kernel", work / "kernel")
    script = (PROJECT / "kernel/scripts/build.sh").read_text()
    for old, new in (("/in/kernel", work / "kernel"), ("/in/source", store.blob_path(source.sha256)),
                     ("/out", work / "out"), ("/build/", f"{work}/build/")):
        script = script.replace(old, str(new))
    (work / "build.sh").write_text(script)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(work / "build"), "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "TZ": "UTC", "MLOS_STAGE": "kernel", "MLOS_PROFILE": "small",
           "SOURCE_DATE_EPOCH": str(recipes.builder.source_date_epoch)}
    return timed(["sh", str(work / "build.sh")], cwd=work / "build", env=env)


def quick(mlos: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        timed([*mlos, "--out", str(work / "o1")], cwd=PROJECT)  # into the store, if it is not there
        warm = timed([*mlos, "--out", str(work / "o2")], cwd=PROJECT)
        startup = timed([sys.executable, "-m", "mlos_repro", "--version"], cwd=PROJECT)
    print("kernel stage (small profile), --quick: the cached build only")
    print(f"   mlos-repro build, warm (cached): {warm:6.2f} s")
    print(f"   baseline: mlos-repro start-up:   {startup:6.2f} s   ratio {warm / startup:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--order", choices=["bare-first", "cold-first"], default="bare-first")
    parser.add_argument("--quick", action="store_true",
                        help="only the warm (cached) build against interpreter start-up; builds the kernel "
                             "once if the store lacks it (CI)")
    args = parser.parse_args()
    store_root = args.store or Path(os.environ.get("MLOS_REPRO_STORE") or default_root())
    mlos = [sys.executable, "-m", "mlos_repro", "build", "kernel", "--store", str(store_root)]
    order = args.order
    if args.quick:
        quick(mlos)
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        # The first build reads the 1.3 GB source and the compiler from disk; --order lets a
        # second run put the other side first, so page-cache warmth cancels out.
        if order == "bare-first":
            baseline = bare(Store(store_root), work / "bare")
        cold = timed([*mlos, "--no-cache", "--out", str(work / "o1")], cwd=PROJECT)
        warm = timed([*mlos, "--out", str(work / "o2")], cwd=PROJECT)
        if order == "cold-first":
            baseline = bare(Store(store_root), work / "bare")
    print(f"kernel stage (small profile), {order}")
    print(f"   bare build.sh on the host:      {baseline:7.1f} s")
    print(f"   mlos-repro build, cold:         {cold:7.1f} s   ratio {cold / baseline:5.2f}x "
          f"(overhead {cold - baseline:+.1f} s)")
    print(f"   mlos-repro build, warm (cached): {warm:6.2f} s")


if __name__ == "__main__":
    main()
