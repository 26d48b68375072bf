"""The Flatcar variant's stages: mlos-repro vs. the same tools run bare on the host.

    .venv/bin/python benchmarks/flatcar.py [--store DIR] [--runs N] [--quick]

"Bare" runs each stage's own commands (stage-tools/flatcar: sysext.sh with dpkg-deb and
mksquashfs; oci.sh with mmdebstrap, tar and gzip; ignition.py; overlay.py) directly on the
host (Debian's python3, python3-yaml and python3-jsonschema: scripts/install-deps installs
them), as root, in a scratch directory, with /in and /out replaced by host directories and the
stage's settings as environment variables: no sandbox, store, cache, SBOM or manifest.
"mlos-repro" is the same stages built with a cache miss forced on each (their recipes get one
more environment variable), the `packages` stage cached; its figure is the stage's own time
as `build --json` reports it (sandbox, running, storing the outputs). The median of --runs.
--quick leaves out `oci` (two mmdebstrap runs; it stays cached) and runs once (CI).
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
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.images import mlos, stage_seconds
from mlos_repro.env.assemble import local_mirror
from mlos_repro.env.lockfile import locked_environment
from mlos_repro.recipe import RecipeSet, load_recipes
from mlos_repro.store import Store, default_root

PROJECT = Path(__file__).resolve().parent.parent
STAGES = ("sysext", "ignition", "oci", "overlay")
TARGET = 1.10
NONCE = 'bench = "path:recipes/bench-nonce"'


def forced_miss_recipes(work: Path, stages: tuple[str, ...] = STAGES) -> Path:
    """A copy of the project whose Flatcar stages named in stages miss the cache: each takes
    one more input, a file holding a new nonce. The others stay cached."""
    repo = work / f"repo-{uuid.uuid4().hex[:8]}"
    shutil.copytree(PROJECT / "recipes", repo / "recipes")
    for tree in ("stage-tools", "kernel"):
        shutil.copytree(PROJECT / tree, repo / tree, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "recipes/bench-nonce").write_text(uuid.uuid4().hex)
    flatcar = repo / "recipes/flatcar.toml"
    blocks = flatcar.read_text().split("[[stage]]\n")
    for i, block in enumerate(blocks):
        if any(block.startswith(f'name = "{stage}"\n') for stage in stages):
            blocks[i] = block.replace("[stage.inputs]\n", f"[stage.inputs]\n{NONCE}\n")
    missed = "[[stage]]\n".join(blocks)
    assert missed.count(NONCE) == len(stages), "recipes/flatcar.toml: a stage without [stage.inputs]"
    flatcar.write_text(missed)
    return repo / "recipes"


def bare_inputs(recipes: RecipeSet, store: Store, built: Path, inputs: Path) -> None:
    """/in of every Flatcar stage, as host directories (tools rewritten to use them)."""
    env_spec, locked = locked_environment(recipes.builder, "target")
    local_mirror(env_spec, locked, store, inputs / "debian")
    sources = {"packages": built / "packages", "sysext": built / "sysext", "oci": built / "oci",
               "config": PROJECT / "recipes/flatcar", "overlay": PROJECT / "recipes/flatcar/overlay",
               "sources": PROJECT / "recipes/packages"}
    for name, source in sources.items():
        shutil.copytree(source, inputs / name, ignore=shutil.ignore_patterns("*.cdx.json"))


def bare(recipes: RecipeSet, stage: str, inputs: Path, work: Path) -> float:
    spec = recipes.stages[stage]
    tools = inputs / "tools"
    shutil.rmtree(tools, ignore_errors=True)
    shutil.copytree(PROJECT / "stage-tools/flatcar", tools, ignore=shutil.ignore_patterns("__pycache__"))
    out, build = work / "out", work / "build"
    for script in [*tools.glob("*.sh"), *tools.glob("*.py")]:
        script.write_text(script.read_text().replace("/in/", f"{inputs}/").replace("/out", str(out))
                          .replace('"/in"', f'"{inputs}"'))
    for d in (out, build):
        subprocess.run(["rm", "-rf", str(d)], check=True)
        d.mkdir(parents=True)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(build),
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
           "SOURCE_DATE_EPOCH": str(recipes.builder.source_date_epoch),
           "MLOS_STAGE": stage, **dict(spec.env)}
    start = time.perf_counter()
    for command in spec.run:
        argv = [a.replace("/in/", f"{inputs}/").replace("/out", str(out)) for a in command]
        if argv[0] == "python3":
            argv[0] = "/usr/bin/python3"  # Debian's, with Debian's PyYAML and jsonschema, as in the stage
        subprocess.run(argv, cwd=build, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="without oci, one run (CI)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/flatcar.py runs mmdebstrap as root (as the oci stage does)")
    stages = tuple(s for s in STAGES if not (args.quick and s == "oci"))
    runs = 1 if args.quick else args.runs
    store_root = args.store or Path(os.environ.get("MLOS_REPRO_STORE") or default_root())
    store = Store(store_root)
    recipes = load_recipes(PROJECT / "recipes")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        mlos("build", *STAGES, "--store", store_root, "--out", work / "o")  # inputs in the store
        ours: dict[str, list[float]] = {s: [] for s in stages}
        theirs: dict[str, list[float]] = {s: [] for s in stages}
        inputs = work / "in"
        bare_inputs(recipes, store, work / "o", inputs)
        for run in range(runs):
            _, summary = mlos("build", *stages, "--recipes", forced_miss_recipes(work, stages),
                              "--store", store_root, "--out", work / f"o-miss-{run}")
            for stage, seconds in stage_seconds(summary, stages).items():
                ours[stage].append(seconds)
            for stage in stages:
                theirs[stage].append(bare(recipes, stage, inputs, work / "bare"))
    print(f"Flatcar stages: mlos-repro (forced cache miss) vs. the same tools bare, median of {runs}")
    print(f"   {'stage':10} {'bare':>9} {'mlos-repro':>11} {'ratio':>7}   target <= {TARGET:.2f}x")
    for stage in stages:
        b, o = statistics.median(theirs[stage]), statistics.median(ours[stage])
        verdict = "met" if o / b <= TARGET else "not met"
        print(f"   {stage:10} {b:8.2f}s {o:10.2f}s {o / b:6.2f}x   {verdict}")


if __name__ == "__main__":
    main()
