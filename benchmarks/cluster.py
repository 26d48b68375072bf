"""What `--executor dask` costs and gains: independent CPU-bound stages on the local executor
and on a LocalCluster, against the ideal (their CPU time divided by the workers); and a build
whose every stage is in the store, both ways. Same run, same store.

    .venv/bin/python benchmarks/cluster.py [--stages 32] [--seconds 5] [--workers 2] [--quick]
                                           [--recipes recipes --profile small]

Each stage spins one CPU for SECONDS (a fresh token: nothing is cached), then writes a line.
Printed: both wall times, their ratio to the ideal STAGES x SECONDS / WORKERS, and the
scheduling overhead per stage: (dask - local / WORKERS) x WORKERS / STAGES, i.e. what a
stage costs on a worker beyond what it costs locally (the cluster's start included). Target
<= 50 ms. The no-op build of the profile (every stage cached: no cluster is started) is
compared with the local one (target <= 2 s).

--quick: 4 stages of 1 s and the no-op build once (the suite checks that the benchmark runs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLOS = str(ROOT / ".venv/bin/mlos-repro")


def graph(stages: int, seconds: int, token: str) -> str:
    return "".join(
        f'[[stage]]\nname = "spin{i}"\noutputs = ["o"]\n'
        f"run = [[\"sh\", \"-c\", \"timeout {seconds} sh -c 'while :; do :; done' || true; "
        f'echo {i} {token} > /out/o"]]\n\n' for i in range(stages))


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return seconds


def cluster_start(workers: int) -> float:
    """Seconds to start and stop a LocalCluster as `--executor dask` does (median of 3)."""
    code = ("import logging, time; from distributed import Client, LocalCluster; t = time.perf_counter(); "
            f"c = LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, "
            "dashboard_address=None, memory_limit=0, silence_logs=logging.CRITICAL); "
            "Client(c).close(); c.close(); print(time.perf_counter() - t)")
    times = sorted(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout) for _ in range(3))
    return times[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--recipes", type=Path, default=ROOT / "recipes")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    stages, seconds = (4, 1) if args.quick else (args.stages, args.seconds)
    with tempfile.TemporaryDirectory(prefix="mlos-bench-cluster-") as tmp:
        recipes = Path(tmp) / "recipes"
        recipes.mkdir()
        for name in ("builder.toml", "builder.lock"):
            (recipes / name).write_bytes((ROOT / "recipes" / name).read_bytes())
        (recipes / "spin.toml").write_text(graph(stages, seconds, uuid.uuid4().hex))
        build = [MLOS, "build", "--recipes", str(recipes), "-q"]
        timed([*build, "--out", f"{tmp}/warm", "spin0"])  # the environment, assembled or found, once
        local = timed([*build, "--out", f"{tmp}/local", "--no-cache"])
        dask = timed([*build, "--out", f"{tmp}/dask", "--no-cache", "--executor", "dask"])
        ideal = stages * seconds / args.workers
        manifests = [(Path(tmp) / run / "manifest.json").read_bytes() for run in ("local", "dask")]
        same = manifests[0] == manifests[1]
        print(f"{stages} independent stages of {seconds} s CPU each, {args.workers} workers "
              f"(manifests {'identical' if same else 'DIFFER'})")
        print(f"local executor   {local:7.1f} s -> {local / ideal:5.2f}x the ideal {ideal:.1f} s")
        print(f"dask LocalCluster{dask:7.1f} s -> {dask / ideal:5.2f}x the ideal, {dask / local:5.2f}x local")
        overhead = (dask - local / args.workers) * args.workers / stages
        start = cluster_start(args.workers)
        scheduling = overhead - start * args.workers / stages
        print(f"overhead per stage {overhead * 1000:6.0f} ms, of which starting the cluster "
              f"({start:.1f} s) {(overhead - scheduling) * 1000:.0f} ms; "
              f"scheduling {scheduling * 1000:.0f} ms, target <= 50 ms: "
              + ("met" if scheduling <= 0.05 else "missed"))
    noop = [MLOS, "build", "--recipes", str(args.recipes), "--profile", args.profile, "-q"]
    with tempfile.TemporaryDirectory(prefix="mlos-bench-noop-") as tmp:
        runs = 1 if args.quick else 3
        local_noop = min(timed([*noop, "--out", f"{tmp}/l{i}"]) for i in range(runs))
        dask_noop = min(timed([*noop, "--out", f"{tmp}/d{i}", "--executor", "dask"]) for i in range(runs))
    print(f"no-op build of {args.profile!r} (every stage cached): local {local_noop:.2f} s, "
          f"dask {dask_noop:.2f} s -> {dask_noop / local_noop:.2f}x; target <= 2 s: "
          + ("met" if dask_noop <= 2 else "missed"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
