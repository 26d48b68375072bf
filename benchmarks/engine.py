"""Engine figures, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/engine.py [--store DIR] [--skip-env] [--quick]

1. no-op rebuild of a 20-stage toy graph (target <= 2 s), vs. bare interpreter start-up;
2. sandbox overhead per stage (target <= 50 ms), vs. the same command run bare;
3. builder environment assembly from a warm store, vs. mmdebstrap alone on the same mirror.
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
from collections.abc import Callable
from pathlib import Path

from mlos_repro.env.assemble import environment, local_mirror
from mlos_repro.env.lockfile import locked_environment
from mlos_repro.recipe import load_recipes
from mlos_repro.run import host_env
from mlos_repro.sandbox import SandboxSpec, stage_environment
from mlos_repro.sandbox.bwrap import bwrap_argv
from mlos_repro.store import Store, default_root

PROJECT = Path(__file__).resolve().parent.parent
MLOS = [sys.executable, "-m", "mlos_repro"]


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(argv: list[str], **kw: object) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def _repeat(argv: list[str], times: int) -> None:
    for _ in range(times):
        run(argv)


def toy_graph(root: Path, stages: int = 20) -> Path:
    recipes = root / "recipes"
    recipes.mkdir(parents=True)
    for name in ("builder.toml", "builder.lock"):
        (recipes / name).write_bytes((PROJECT / "recipes" / name).read_bytes())
    shutil.copytree(PROJECT / "sbom", root / "sbom")  # every output gets an SBOM, under this policy
    (root / "data").mkdir()
    (root / "data" / "seed").write_text(f"{time.time_ns()}\n")
    text = []
    for i in range(stages):
        inputs = '[stage.inputs]\nseed = "path:data/seed"\n' if i == 0 else \
            f'[stage.inputs]\nprev = "stage:s{i - 1}"\n' + (f'other = "stage:s{i // 2}"\n' if i > 2 else "")
        script = f"cat /in/*/* 2>/dev/null | sha256sum > /out/o.txt; echo {i} >> /out/o.txt"
        text.append(f'[[stage]]\nname = "s{i}"\noutputs = ["o.txt"]\n'
                    f'run = [["sh", "-c", "{script}"]]\n' + inputs)
    (recipes / "toy.toml").write_text("\n".join(text))
    return recipes


def bench_noop(store: Path, work: Path) -> None:
    recipes = toy_graph(work / "toy")
    args = [*MLOS, "build", "--recipes", str(recipes), "--out", str(work / "out"), "--store", str(store)]
    cold = timed(lambda: run(args), 1)[0]
    noop = statistics.median(timed(lambda: run(args), 5))
    startup = statistics.median(timed(lambda: run([*MLOS, "--version"]), 5))
    print("1. no-op rebuild, 20-stage toy graph")
    print(f"   cold build (20 stages run):   {cold:7.3f} s")
    print(f"   no-op rebuild (median of 5):  {noop:7.3f} s   (target <= 2 s)")
    print(f"   baseline `mlos-repro --version`: {startup:7.3f} s   ratio {noop / startup:5.2f}x")


def bench_sandbox(store_root: Path, work: Path) -> None:
    recipes = load_recipes(PROJECT / "recipes")
    env_spec, locked = locked_environment(recipes.builder, "default")
    env = environment(env_spec, locked, recipes.builder.source_date_epoch, Store(store_root))
    out, build = work / "sb-out", work / "sb-build"
    out.mkdir()
    build.mkdir()
    spec = SandboxSpec(root=env.root, env_digest=env.digest,
                       env_tarball=store_root / "blobs" / "sha256" / env.digest, inputs={},
                       out=out, build=build, env=stage_environment("bench", 0))
    command = ["sh", "-c", "echo hi > /out/x"]
    n = 50
    sandboxed = timed(lambda: run(bwrap_argv(spec, command), env={"PATH": host_env()["PATH"]}), n)
    bare = timed(lambda: run(["sh", "-c", f"echo hi > {out}/x"]), n)
    overhead = statistics.median(sandboxed) - statistics.median(bare)
    print("2. sandbox overhead per command (median of 50)")
    print(f"   bare:       {statistics.median(bare) * 1000:7.2f} ms")
    print(f"   bubblewrap: {statistics.median(sandboxed) * 1000:7.2f} ms")
    print(f"   overhead:   {overhead * 1000:7.2f} ms   (target <= 50 ms)   "
          f"ratio {statistics.median(sandboxed) / statistics.median(bare):5.2f}x")

    # The whole per-stage cost through the engine: 20 trivial stages with --no-cache.
    recipes_dir = toy_graph(work / "toy2")
    args = [*MLOS, "build", "--no-cache", "--recipes", str(recipes_dir), "--out", str(work / "o2"),
            "--store", str(store_root)]
    run(args)
    engine = statistics.median(timed(lambda: run(args), 3))
    bare_stage = ["sh", "-c", "echo x | sha256sum > /dev/null"]
    bare20 = statistics.median(timed(lambda: _repeat(bare_stage, 20), 3))
    per_stage = (engine - bare20) / 20
    print(f"   engine, 20 stages --no-cache: {engine:7.3f} s; the same 20 commands bare: {bare20:7.3f} s")
    print(f"   => engine overhead per stage (incl. cache key, store, start-up share): "
          f"{per_stage * 1000:7.1f} ms")


def bench_env(store_root: Path, work: Path) -> None:
    recipes = load_recipes(PROJECT / "recipes")
    env_spec, locked = locked_environment(recipes.builder, "default")
    store = Store(store_root)
    sde = recipes.builder.source_date_epoch
    ours = timed(lambda: environment(env_spec, locked, sde, store, rebuild=True), 1)[0]
    mirror = work / "mirror"
    local_mirror(env_spec, locked, store, mirror)
    argv = ["mmdebstrap", "--quiet", f"--variant={env_spec.variant}", "--format=null",
            f"--include={','.join(env_spec.packages)}", env_spec.suite, "/dev/null",
            f"deb [trusted=yes] copy://{mirror} {env_spec.suite} main"]
    bare = timed(lambda: run(argv, env=host_env({"SOURCE_DATE_EPOCH": str(sde)})), 1)[0]
    print(f"3. builder environment assembly from a warm store ({len(locked.packages)} .debs)")
    print(f"   mlos-repro (mirror, mmdebstrap, hash, extract): {ours:6.1f} s")
    print(f"   baseline: mmdebstrap alone on the same mirror:  {bare:6.1f} s   ratio {ours / bare:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--skip-env", action="store_true", help="skip the ~40 s assembly benchmark")
    parser.add_argument("--quick", action="store_true",
                        help="small inputs, few repetitions: checks that the benchmark runs (CI)")
    args = parser.parse_args()
    store = args.store or Path(os.environ.get("MLOS_REPRO_STORE") or default_root())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_noop(store, work)
        bench_sandbox(store, work)
        if not (args.skip_env or args.quick):
            bench_env(store, work)


if __name__ == "__main__":
    main()
