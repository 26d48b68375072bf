"""`mlos-repro store check` against `sha256sum` of the same blobs, same run.

    .venv/bin/python benchmarks/store.py [--store DIR] [--runs 3] [--quick]

The store defaults to $MLOS_REPRO_STORE (the test suite's store holds the `small` build), else
the user's default store. After one warm-up read of every blob (the page cache holds them for
both sides), RUNS times alternately: `mlos-repro store check --json` (the whole command: start,
re-hash of every blob in parallel, every stage entry checked) and `sha256sum` over the same
files (one process at a time through xargs, as a user would run it). Prints the ratio of the
medians, also for the check limited to one hashing thread, and the target: <= 1.2x. Debian's
sha256sum hashes in portable C; `openssl dgst -sha256` (SHA extensions where the CPU has them,
as Python's hashlib) is printed as a second, faster baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlos_repro.store import Store, default_root  # noqa: E402
from mlos_repro.store_admin import blob_paths, check_store  # noqa: E402

MLOS = str(ROOT / ".venv/bin/mlos-repro")
TARGET = 1.2
QUICK_BYTES = 512 * 2**20


def sample_store(store: Store, into: Path) -> Store:
    """A store holding the first blobs of store (by digest) up to QUICK_BYTES: hard links
    where both are on one file system, copies otherwise."""
    blobs = into / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    total = 0
    for path in blob_paths(store):
        if total >= QUICK_BYTES:
            break
        try:
            os.link(path, blobs / path.name)
        except OSError:
            shutil.copyfile(path, blobs / path.name)
        total += path.stat().st_size
    return Store(into)


def timed(argv: list[str], stdin: bytes | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, input=stdin, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help=f"one run each, on a sample of {QUICK_BYTES // 2**20} MiB of the store (CI)")
    args = parser.parse_args()
    store = Store(args.store or default_root())
    if not args.quick:
        return measure(store, args.runs)
    with tempfile.TemporaryDirectory(dir=store.root.parent) as tmp:
        return measure(sample_store(store, Path(tmp) / "store"), 1)


def measure(store: Store, runs: int) -> int:
    paths = blob_paths(store)
    total = sum(p.stat().st_size for p in paths)
    print(f"store {store.root}: {len(paths)} blobs, {total / 2**20:.0f} MiB")
    listing = b"\0".join(str(p).encode() for p in paths)
    sha256sum = ["xargs", "-0", "sha256sum"]
    openssl = ["xargs", "-0", "openssl", "dgst", "-sha256"]
    check = [MLOS, "store", "check", "--store", str(store.root), "--json"]
    timed(openssl, listing)  # warm-up (the fastest reader): every blob in the page cache
    ours, theirs, single, ossl = [], [], [], []
    for _ in range(runs):
        ours.append(timed(check))
        theirs.append(timed(sha256sum, listing))
        ossl.append(timed(openssl, listing))
        start = time.perf_counter()
        check_store(store, workers=1)
        single.append(time.perf_counter() - start)
    a, b, c, d = (statistics.median(x) for x in (ours, theirs, single, ossl))
    print(f"mlos-repro store check   {a:7.2f} s  (median of {runs})")
    print(f"sha256sum (xargs)        {b:7.2f} s")
    print(f"openssl dgst (xargs)     {d:7.2f} s")
    print(f"check, one thread        {c:7.2f} s  (in-process, no start-up)")
    ratio = a / b if b else float("inf")
    print(f"store check / sha256sum: {ratio:.2f}x  (target <= {TARGET}x: "
          f"{'met' if ratio <= TARGET else 'NOT met'}); one thread: {c / b if b else 0:.2f}x; "
          f"{os.cpu_count()} CPUs")
    print(f"store check / openssl dgst: {a / d if d else 0:.2f}x; one thread: {c / d if d else 0:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
