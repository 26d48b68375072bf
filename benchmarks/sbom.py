"""What an SBOM costs: mlos-repro's SBOM of an image vs. listing its packages by hand, same run.

    .venv/bin/python benchmarks/sbom.py [--store DIR]

Builds (or takes from the store) the small profile's rootfs, iso and disk stages, then for
rootfs.squashfs, mlos.iso and mlos.raw measures wall time and peak memory of
1. mlos-repro making the SBOM from the bytes, uncached (catalogue, CycloneDX document, schema
   and NTIA check), from the member manifest recorded at build time;
2. the bare baseline: sha256sum of the artifact, extracting the squashfs (xorriso or the
   partition's bytes), unsquashfs of var/lib/dpkg and usr/share/doc, dpkg-query -W.
Also the whole build's SBOMs: a build whose stages are all cached, with and without its SBOMs
in the store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.diff import measure  # noqa: E402
from mlos_repro.store import default_root  # noqa: E402

MLOS = [str(ROOT / ".venv/bin/mlos-repro")]
PY = str(ROOT / ".venv/bin/python")

REGENERATE = """
import json, sys
from pathlib import Path
from mlos_repro.sbom.cache import Sboms
from mlos_repro.sbom.policy import load_policy
from mlos_repro.store import Store
store, key, output = Store(Path(sys.argv[1])), sys.argv[2], sys.argv[3]
entry = store.get_stage(key)
kernels = json.loads(sys.argv[4])
sboms = Sboms(store, load_policy(Path(sys.argv[5])), 1764547200)
print(sboms.for_stage("bench", "bench", entry, kernels, use_cache=False)[output])
"""

BARE = {
    "rootfs.squashfs": "sha256sum {a} >/dev/null && unsquashfs -no-progress -d {w}/r {a} var/lib/dpkg "
                       "usr/share/doc >/dev/null && dpkg-query --admindir={w}/r/var/lib/dpkg -W >/dev/null",
    "mlos.iso": "sha256sum {a} >/dev/null && xorriso -osirrox on -indev {a} -extract /live/rootfs.squashfs "
                "{w}/s 2>/dev/null && unsquashfs -no-progress -d {w}/r {w}/s var/lib/dpkg usr/share/doc "
                ">/dev/null && dpkg-query --admindir={w}/r/var/lib/dpkg -W >/dev/null",
    "mlos.raw": "sha256sum {a} >/dev/null && start=$(sfdisk -J {a} | python3 -c 'import json,sys; "
                "p=[p for p in json.load(sys.stdin)[\"partitiontable\"][\"partitions\"] if p.get(\"name\")=="
                "\"mlos-root\"][0]; print(p[\"start\"], p[\"size\"])') && set -- $start && "
                "dd if={a} of={w}/s bs=512 skip=$1 count=$2 status=none && unsquashfs -no-progress -d {w}/r "
                "{w}/s var/lib/dpkg usr/share/doc >/dev/null && dpkg-query --admindir={w}/r/var/lib/dpkg -W "
                ">/dev/null",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path,
                        default=Path(os.environ.get("MLOS_REPRO_STORE") or default_root()))
    parser.add_argument("--quick", action="store_true",
                        help="the root filesystem's SBOM only, not the images' or the whole build's (CI)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlos-bench-sbom-") as tmp:
        work = Path(tmp)
        out = work / "out"
        built = subprocess.run([*MLOS, "build", "iso", "disk", "--recipes", str(ROOT / "recipes"), "--out",
                                str(out), "--store", str(args.store)], capture_output=True, text=True)
        if built.returncode != 0:
            print(built.stderr)
            return 1
        manifest = json.loads((out / "manifest.json").read_text())
        kernels = json.dumps([json.loads((out / "kernel/kernel.json").read_text())])
        print(f"{'artifact':<18} {'mlos-repro sbom':>17} {'by hand':>14} {'ratio':>7}  "
              "peak RSS (ours / bare)")
        artifacts = (("rootfs", "rootfs.squashfs"), ("iso", "mlos.iso"), ("disk", "mlos.raw"))
        for stage, output in artifacts[:1] if args.quick else artifacts:
            key = manifest["stages"][stage]["key"]
            ours, ours_rss, outcome = measure([PY, "-c", REGENERATE, str(args.store), key, output, kernels,
                                               str(ROOT)], timeout=1800)
            scratch = work / f"bare-{output}"
            scratch.mkdir()
            bare, bare_rss, bare_outcome = measure(
                ["sh", "-c", BARE[output].format(a=out / stage / output, w=scratch)], timeout=1800)
            shutil.rmtree(scratch)
            print(f"{output:<18} {ours:>15.1f} s {bare:>12.1f} s {ours / bare:>6.2f}x  "
                  f"{ours_rss:.0f} / {bare_rss:.0f} MiB  ({outcome}; bare {bare_outcome})")
        if args.quick:
            return 0
        # A build whose stages are all cached: with its SBOMs stored, and after forgetting them.
        start = time.perf_counter()
        build = [*MLOS, "build", "--recipes", str(ROOT / "recipes")]
        subprocess.run([*build, "--out", str(work / "o2"), "--store", str(args.store)], check=True,
                       capture_output=True)
        warm = time.perf_counter() - start
        isolated = work / "store"
        isolated.mkdir()
        for part in ("blobs", "stages", "envs", "locks", "tmp"):
            (isolated / part).symlink_to(args.store / part)  # the same entries, no SBOM or listing index
        start = time.perf_counter()
        subprocess.run([*build, "--out", str(work / "o3"), "--store", str(isolated)], check=True,
                       capture_output=True)
        cold = time.perf_counter() - start
        print(f"whole small build, every stage cached: SBOMs stored {warm:.1f} s; "
              f"SBOMs (and listings) made anew {cold:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
