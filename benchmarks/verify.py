"""verify-iso against sha256sum on the same file, and verify of a full release, same run.

    .venv/bin/python benchmarks/verify.py [--size-mib 1024] [--runs 3] [--release DIR --keys DIR] [--quick]

1. A release-shaped directory with one SIZE MiB file (random bytes) as artifacts/iso/mlos.iso,
   SHA256SUMS signed by a throwaway key: `mlos-repro verify-iso` vs `sha256sum` of the file,
   each run RUNS times alternately after one warm-up read (the page cache holds the file for
   both); the ratio of the medians (target <= 1.1).
2. With --release and --keys (a release made by `mlos-repro release` and its key directory):
   the wall time of `mlos-repro verify` on it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLOS = str(ROOT / ".venv/bin/mlos-repro")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--release", type=Path, default=None)
    parser.add_argument("--keys", type=Path, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="small inputs, few repetitions: checks that the benchmark runs (CI)")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.runs = 16, 1
    with tempfile.TemporaryDirectory(prefix="mlos-bench-verify-") as tmp:
        work = Path(tmp)
        iso = work / "rel/artifacts/iso/mlos.iso"
        iso.parent.mkdir(parents=True)
        with iso.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        home = work / "gnupg"
        home.mkdir(mode=0o700)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-gen-key", "bench <bench@example.org>", "ed25519", "sign", "1d"],
                       check=True, capture_output=True)
        digest = subprocess.run(["sha256sum", str(iso)], check=True, capture_output=True,
                                text=True).stdout.split()[0]
        (work / "rel/SHA256SUMS").write_text(f"{digest}  iso/mlos.iso\n")
        sums = work / "rel/SHA256SUMS"
        subprocess.run([*gpg, "--detach-sign", "-o", f"{sums}.gpg", str(sums)], check=True,
                       capture_output=True)
        subprocess.run([*gpg, "--export", "-o", str(work / "release.gpg")], check=True, capture_output=True)
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
        bare, ours = [], []
        timed(["cat", str(iso)])  # into the page cache, for both
        for _ in range(args.runs):
            bare.append(timed(["sha256sum", str(iso)]))
            ours.append(timed([MLOS, "verify-iso", str(iso), "--keyring", str(work / "release.gpg")]))
        b, o = statistics.median(bare), statistics.median(ours)
        print(f"verify-iso on {args.size_mib} MiB: sha256sum {b:.2f} s, mlos-repro verify-iso {o:.2f} s "
              f"(medians of {args.runs}; all: {', '.join(f'{x:.2f}' for x in bare)} / "
              f"{', '.join(f'{x:.2f}' for x in ours)}) -> {o / b:.2f}x")
    if args.release is not None and args.keys is not None:
        seconds = timed([MLOS, "verify", str(args.release), "--root-key",
                         str(args.keys / "attestation/owner.pub.json"), "--keyring",
                         str(args.keys / "archive-keyring.gpg")])
        files = sum(1 for p in (args.release / "artifacts").rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in (args.release / "artifacts").rglob("*") if p.is_file()) >> 20
        print(f"verify of {args.release} ({files} artifacts, {size} MiB): {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
