"""What `--executor dask` costs and gains: independent CPU-bound stages on the local executor
and on a LocalCluster, against the ideal (their CPU time divided by the workers); and a build
whose every stage is in the store, both ways. Same run, same store.

    .venv/bin/python benchmarks/cluster.py [--stages 32] [--seconds 5] [--workers 2] [--quick]
                                           [--recipes recipes --profile small]
                                           [--stage NAME ...]

Each stage spins one CPU for SECONDS (a fresh token: nothing is cached), then writes a line.
Printed: both wall times and their ratio to the ideal STAGES x SECONDS / WORKERS; then the
same graph on a cluster started by the benchmark, whose scheduler's event log says when each
stage ran: the workers' span, less the stages' own time on them, spread over the stages, is
Dask's dispatch per stage (target <= 50 ms), apart from the command's fixed costs (start-up,
the SBOMs and OUT written after the last stage). The no-op build of the profile (every stage
cached: no cluster is started) into a new OUT, and rebuilt into the same OUT (what is already
there is re-hashed and linked, not written again), local and dask (target <= 2 s).

Then the shared store: the profile built cold (--no-cache) by the local executor on the local
store, and by a LocalCluster publishing every stage to an OCI registry (Debian's
docker-registry on 127.0.0.1, entries signed by a fresh builder key): ratio, target <= 1.10x.
Then the no-op rebuild through the OCI store (target <= 2 s), and another machine's first
build: a store holding only the environments and the fetched inputs, trusting that key, so
every stage comes from the registry, pulled and re-hashed.

--quick: 4 stages of 1 s, the no-op build once, and the shared-store part on the 4-stage
graph instead of the profile (the suite checks that the benchmark runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLOS = str(ROOT / ".venv/bin/mlos-repro")
sys.path.insert(0, str(ROOT))

from tests import registry  # noqa: E402  (the suite's registry, started the same way)


def graph(stages: int, seconds: int, token: str) -> str:
    return "".join(
        f'[[stage]]\nname = "spin{i}"\noutputs = ["o"]\n'
        f"run = [[\"sh\", \"-c\", \"timeout {seconds} sh -c 'while :; do :; done' || true; "
        f'echo {i} {token} > /out/o"]]\n\n' for i in range(stages))


def built(out: Path) -> bytes:
    """OUT's manifest without the signatures made after the build (GnuPG's carry their time)."""
    manifest = json.loads((out / "manifest.json").read_bytes())
    manifest.pop("signatures", None)
    return json.dumps(manifest, sort_keys=True).encode()


def rebuilt(argv: list[str], runs: int) -> float:
    """The fastest of `runs` no-op rebuilds into the OUT that `argv` names, after one that fills it."""
    timed(argv)
    return min(timed(argv) for _ in range(runs))


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return seconds


def cluster_start(workers: int) -> float:
    """Seconds to start and stop the LocalCluster `--executor dask` starts (median of 3)."""
    code = ("import time; from mlos_repro import cluster; t = time.perf_counter(); "
            f"cluster.connect(None, {workers}); cluster.close_all(); print(time.perf_counter() - t)")
    times = sorted(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout) for _ in range(3))
    return times[1]


def another_machine(store: Path, recipes: Path, profile: str, into: Path) -> None:
    """A store as a fresh machine has it after `install-deps` and `fetch`: the assembled
    environments and the pinned inputs (hard links), no blob or entry of any stage."""
    from mlos_repro.env.fetch import pinned_inputs
    from mlos_repro.recipe import load_recipes

    into.mkdir()
    subprocess.run(["cp", "-al", str(store / "envs"), str(into / "envs")], check=True)
    for digest in pinned_inputs(load_recipes(recipes, profile)):
        source = store / "blobs/sha256" / digest
        if source.exists():
            (into / "blobs/sha256").mkdir(parents=True, exist_ok=True)
            os.link(source, into / "blobs/sha256" / digest)


def stored_bytes(store: Path) -> int:
    return sum(f.stat().st_size for f in (store / "blobs").rglob("*") if f.is_file())


def shared_store(recipes: Path, profile: str, targets: list[str], tmp: Path) -> None:
    """Cold local vs. cold on a LocalCluster with the OCI store; no-op and another machine through it."""
    from mlos_repro.store import default_root

    store = Path(os.environ.get("MLOS_REPRO_STORE") or default_root())
    build = [MLOS, "build", "--recipes", str(recipes), "--profile", profile, "-q", *targets]
    keys = tmp / "keys"
    subprocess.run([MLOS, "keys", "init", str(keys)], check=True, capture_output=True)
    with registry.running(tmp / "registry") as server:
        url = f"oci://{server.address}/bench/{uuid.uuid4().hex[:12]}"
        oci = ["--executor", "dask", "--store", url]
        local = timed([*build, "--out", f"{tmp}/cold-local", "--no-cache"])
        shared = timed([*build, "--out", f"{tmp}/cold-oci", "--no-cache", *oci, "--sign-cache", str(keys)])
        same = built(tmp / "cold-local") == built(tmp / "cold-oci")
        trust = ["--cache-key", str(keys / "attestation/builder.pub.json")]
        noop = rebuilt([*build, "--out", f"{tmp}/cold-oci", *oci, *trust], 3)
        another_machine(store, recipes, profile, tmp / "machine")
        before = stored_bytes(tmp / "machine")
        start = time.perf_counter()
        pulled = subprocess.run([*build, "--out", f"{tmp}/machine-out", *oci, *trust], capture_output=True,
                                text=True, env={**os.environ, "MLOS_REPRO_STORE": str(tmp / "machine")})
        fetched = time.perf_counter() - start
        if pulled.returncode != 0:
            raise SystemExit(f"another machine's build exited {pulled.returncode}:\n{pulled.stderr[-3000:]}")
        size = stored_bytes(tmp / "machine") - before
    what = f"{profile!r}" + (f" ({' '.join(targets)})" if targets else "")
    print(f"cold build of {what} (--no-cache), manifests {'identical' if same else 'DIFFER'} "
          "(but for the repository's signatures, made after the build):")
    print(f"  local executor, local store      {local:7.1f} s")
    print(f"  LocalCluster + OCI store         {shared:7.1f} s -> {shared / local:5.2f}x local; "
          "target <= 1.10x: " + ("met" if shared / local <= 1.10 else "missed"))
    print(f"  no-op through the OCI store      {noop:7.2f} s -> {noop / local:5.3f}x the cold build; "
          "target <= 2 s: " + ("met" if noop <= 2 else "missed"))
    print(f"  another machine, all from the registry {fetched:7.1f} s ({size / 1e6:.0f} MB pulled) "
          f"-> {fetched / local:5.2f}x the cold build")
    if not same:
        raise SystemExit("the two cold builds' manifests differ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--recipes", type=Path, default=ROOT / "recipes")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--stage", action="append", default=[],
                        help="build only these stages (and what they need) in the shared-store part")
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
        # Once more on a cluster started here: its scheduler's event log says when each stage
        # ran on which worker, so the workers' span is measured apart from the command's own
        # fixed costs (start-up, the cluster's start, the SBOMs written after the last stage).
        from mlos_repro import cluster

        connection = cluster.connect(None, args.workers)  # the LocalCluster `--executor dask` starts
        try:
            attached = timed([*build, "--out", f"{tmp}/attached", "--no-cache", "--executor", "dask",
                              "--scheduler", connection.cluster.scheduler_address])
            events = [(t, e) for t, e in connection.client.get_events(cluster.EVENT_TOPIC) if e.get("ran")]
        finally:
            cluster.close_all()
        span = max(t for t, _ in events) - min(t - e["seconds"] for t, e in events)
        on_worker = statistics.median(e["seconds"] for _, e in events) - seconds
        ideal = stages * seconds / args.workers
        manifests = {built(Path(tmp) / run) for run in ("local", "dask", "attached")}
        same = len(manifests) == 1 and len(events) == stages
        print(f"{stages} independent stages of {seconds} s CPU each, {args.workers} workers "
              f"(manifests {'identical' if same else 'DIFFER'})")
        print(f"local executor   {local:7.1f} s -> {local / ideal:5.2f}x the ideal {ideal:.1f} s "
              f"({(local - stages * seconds) / stages * 1000:.0f} ms per stage beyond its {seconds} s, "
              "start-up included)")
        print(f"dask LocalCluster{dask:7.1f} s -> {dask / ideal:5.2f}x the ideal, {dask / local:5.2f}x local "
              f"(starting a cluster alone: {cluster_start(args.workers):.1f} s)")
        # The workers' span, less the stages' own time on them, spread over the stages: what
        # Dask adds between one stage and the next (the stage's own cost beyond its SECONDS is
        # the sandbox and store work the local executor does as well).
        dispatch = span * args.workers / stages - statistics.mean(e["seconds"] for _, e in events)
        print(f"on a running scheduler {attached:5.1f} s, the workers' span {span:.1f} s -> "
              f"{span / ideal:5.2f}x the ideal; per stage: its own cost on a worker beyond its {seconds} s "
              f"{on_worker * 1000:.0f} ms, Dask's dispatch {dispatch * 1000:.0f} ms, target <= 50 ms: "
              + ("met" if dispatch <= 0.05 else "missed"))
    noop = [MLOS, "build", "--recipes", str(args.recipes), "--profile", args.profile, "-q"]
    with tempfile.TemporaryDirectory(prefix="mlos-bench-noop-") as tmp:
        runs = 1 if args.quick else 3
        fresh = timed([*noop, "--out", f"{tmp}/fresh"])
        local_noop = rebuilt([*noop, "--out", f"{tmp}/l"], runs)
        dask_noop = rebuilt([*noop, "--out", f"{tmp}/d", "--executor", "dask"], runs)
    print(f"no-op build of {args.profile!r} (every stage cached) into a new OUT: {fresh:.2f} s; rebuilt into "
          f"the same OUT: local {local_noop:.2f} s, "
          f"dask {dask_noop:.2f} s -> {dask_noop / local_noop:.2f}x; target <= 2 s: "
          + ("met" if dask_noop <= 2 else "missed"))
    with tempfile.TemporaryDirectory(prefix="mlos-bench-shared-") as tmp:
        if args.quick:
            recipes = Path(tmp) / "recipes"
            recipes.mkdir()
            for name in ("builder.toml", "builder.lock"):
                (recipes / name).write_bytes((ROOT / "recipes" / name).read_bytes())
            (recipes / "spin.toml").write_text(graph(stages, seconds, uuid.uuid4().hex))
            shared_store(recipes, "small", [], Path(tmp))
        else:
            shared_store(args.recipes, args.profile, args.stage, Path(tmp))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
