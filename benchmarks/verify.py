"""verify-iso against `openssl dgst -sha256` of the same file, and verify of a full release, same run.

    .venv/bin/python benchmarks/verify.py [--sizes-mib 98,1024] [--runs 5] [--release DIR --keys DIR]
                                          [--quick]

1. Per size, a release-shaped directory with one SIZE MiB file (random bytes) as
   artifacts/iso/mlos.iso, its SBOM, SHA256SUMS and release.json, both signed by a throwaway
   OpenPGP key: `mlos-repro verify-iso` with every signature check it makes (SHA256SUMS,
   release.json, the SBOM's digest) vs `openssl dgst -sha256` of the file, run RUNS times
   alternately after one warm-up read (the page cache holds the file for both). Prints the
   ratio of the medians and the targets: <= 1.1x + 0.3 s at the small ISO's size (98 MiB),
   <= 1.1x at 1 GiB.
2. With --release and --keys (a release made by `mlos-repro release` and its key directory):
   the wall time of `mlos-repro verify` on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlos_repro.attest.release_meta import FORMAT

ROOT = Path(__file__).resolve().parent.parent
MLOS = str(ROOT / ".venv/bin/mlos-repro")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def release_of(work: Path, size_mib: int, gpg: list[str]) -> Path:
    """A release-shaped directory holding one ISO of random bytes, signed as `release` signs."""
    rel = work / f"rel-{size_mib}"
    iso = rel / "artifacts/iso/mlos.iso"
    iso.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with iso.open("wb") as f:
        for _ in range(size_mib):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    sbom = {"bomFormat": "CycloneDX", "specVersion": "1.6",
            "metadata": {"component": {"name": "mlos.iso", "hashes": [{"alg": "SHA-256",
                                                                       "content": digest.hexdigest()}]}},
            "components": [{"type": "operating-system", "name": "linux", "version": "6.1"},
                           *({"type": "library", "name": f"p{i}", "version": "1"} for i in range(140))]}
    (rel / "sbom/iso").mkdir(parents=True)
    (rel / "sbom/iso/mlos.iso.cdx.json").write_text(json.dumps(sbom))
    sums = f"{digest.hexdigest()}  iso/mlos.iso\n".encode()
    (rel / "SHA256SUMS").write_bytes(sums)
    listing = subprocess.run([*gpg, "--with-colons", "--list-secret-keys"], check=True, capture_output=True,
                             text=True).stdout
    fingerprint = listing.split("fpr:::::::::")[1].split(":")[0]
    info = {"format": FORMAT, "name": "MLOS Linux", "version": "1.0", "profile": "small",
            "build_date": "2025-12-01T00:00:00Z", "released": "2026-01-01T00:00:00Z",
            "expires": "2099-01-01T00:00:00Z", "release_key": fingerprint, "stages": {},
            "signed_after_build": [],
            "files": {"SHA256SUMS": hashlib.sha256(sums).hexdigest(),
                      "sbom/iso/mlos.iso.cdx.json": hashlib.sha256(
                          (rel / "sbom/iso/mlos.iso.cdx.json").read_bytes()).hexdigest()}}
    (rel / "release.json").write_text(json.dumps(info, indent=2))
    for name in ("SHA256SUMS", "release.json"):
        subprocess.run([*gpg, "--detach-sign", "-o", str(rel / f"{name}.gpg"), str(rel / name)], check=True,
                       capture_output=True)
    return iso


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="98,1024")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--release", type=Path, default=None)
    parser.add_argument("--keys", type=Path, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="small inputs, few repetitions: checks that the benchmark runs (CI)")
    args = parser.parse_args()
    if args.quick:
        args.sizes_mib, args.runs = "16", 1
    with tempfile.TemporaryDirectory(prefix="mlos-bench-verify-") as tmp:
        work = Path(tmp)
        home = work / "gnupg"
        home.mkdir(mode=0o700)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        subprocess.run([*gpg, "--quick-gen-key", "bench <bench@example.org>", "ed25519", "sign", "1d"],
                       check=True, capture_output=True)
        subprocess.run([*gpg, "--export", "-o", str(work / "release.gpg")], check=True, capture_output=True)
        env_state = {**os.environ, "XDG_STATE_HOME": str(work / "state")}
        for size in (int(s) for s in args.sizes_mib.split(",")):
            iso = release_of(work, size, gpg)
            bare, ours = [], []
            timed(["cat", str(iso)])  # into the page cache, for both
            command = [MLOS, "verify-iso", str(iso), "--keyring", str(work / "release.gpg")]
            check = subprocess.run(command, capture_output=True, text=True, env=env_state)
            if check.returncode != 0 or "kernel 6.1, 140 packages" not in check.stdout:
                print(f"verify-iso did not verify the benchmark release: {check.stdout}{check.stderr}")
                return 1
            for _ in range(args.runs):
                bare.append(timed(["openssl", "dgst", "-sha256", str(iso)]))
                start = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env_state)
                ours.append(time.perf_counter() - start)
            b, o = statistics.median(bare), statistics.median(ours)
            allowed = 1.1 * b + (0.3 if size < 512 else 0.0)
            target = "<= 1.1x + 0.3 s" if size < 512 else "<= 1.1x"
            print(f"verify-iso on {size} MiB: openssl dgst {b:.2f} s, mlos-repro verify-iso {o:.2f} s "
                  f"(medians of {args.runs}; all: {', '.join(f'{x:.2f}' for x in bare)} / "
                  f"{', '.join(f'{x:.2f}' for x in ours)}) -> {o / b:.2f}x, +{o - b:.2f} s; target {target}: "
                  + ("met" if o <= allowed else f"missed by {o - allowed:.2f} s"))
            iso.unlink()
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
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
