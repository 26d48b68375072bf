"""An independent rebuild against the builder's own cold build, and verify with rebuilders
against verify without, same machine, same run.

    .venv/bin/python benchmarks/rebuild.py [--recipes recipes] [--profile small] [--rebuilders 2]
                                           [--vary SPEC] [--work DIR] [--quick]

1. The builder: a fresh store holding only the profile's pinned inputs (copied from
   MLOS_REPRO_STORE or the default store, so neither side downloads), `mlos-repro build`:
   environments assembled and every stage built (timed: the baseline). Then `keys init` and
   `release --with-inputs` (not timed).
2. Each rebuilder: its own empty store and key, `mlos-repro rebuild RELEASE --mirror` a closed
   port on 127.0.0.1 (everything comes from the release's inputs/), varied as --vary says
   (timed). Target: <= 1.10x the cold build.
3. After each rebuilder: `verify RELEASE` (the baseline) and `verify … --rebuild` the rebuilders so
   far `--threshold` their number, each RUNS times alternately. Target: <= 1.2x.

--quick uses the toy graph of the test suite (tests/integration/test_sbom.py) instead of the
project's recipes, so the suite can check that the benchmark runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLOS = str(ROOT / ".venv/bin/mlos-repro")
sys.path.insert(0, str(ROOT))


def run(*argv: object) -> float:
    start = time.perf_counter()
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} exited {p.returncode}:\n"
                         f"{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return time.perf_counter() - start


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", type=Path, default=ROOT / "recipes")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--rebuilders", type=int, default=2)
    parser.add_argument("--vary", default=None, help="variations of each rebuild [default: all]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="keep everything here [default: a temp dir]")
    parser.add_argument("--quick", action="store_true", help="the suite's toy graph (CI)")
    args = parser.parse_args()
    from mlos_repro.env.fetch import pinned_inputs
    from mlos_repro.recipe import load_recipes
    from mlos_repro.store import default_root

    source_store = Path(os.environ.get("MLOS_REPRO_STORE") or default_root())
    with tempfile.TemporaryDirectory(prefix="mlos-bench-rebuild-", dir=args.work) as tmp:
        work = Path(tmp)
        recipes = args.recipes
        if args.quick:
            from tests.conftest import write_repo
            from tests.integration.test_sbom import STAGES

            recipes = write_repo(work / "repo", STAGES.replace("@VERSION@", "1.0"))
            args.vary = args.vary or "-umask,-locales"  # what the toy graph does not withstand
            args.runs = 1
        builder_store = work / "store-builder"
        stores = [builder_store, *(work / f"store-{i}" for i in range(args.rebuilders))]
        if args.quick:
            # Environments already assembled (hard links to the suite's store): the stages only.
            for store in stores:
                store.mkdir()
                subprocess.run(["cp", "-al", str(source_store / "blobs"), str(source_store / "envs"),
                                str(store)], check=True)
        else:
            # The builder's store: only the pinned inputs, as `fetch` would leave them; the
            # rebuilders' stores are empty.
            blobs = builder_store / "blobs/sha256"
            blobs.mkdir(parents=True)
            for digest in pinned_inputs(load_recipes(recipes, args.profile)):
                shutil.copyfile(source_store / "blobs/sha256" / digest, blobs / digest)
                os.chmod(blobs / digest, 0o444)
        cold = run(MLOS, "build", "--recipes", recipes, "--profile", args.profile, "--out", work / "out",
                   "--store", builder_store)
        run(MLOS, "keys", "init", work / "keys")
        rel = work / "release"
        run(MLOS, "release", "--keys", work / "keys", "--out", rel, "--from", work / "out",
            "--recipes", recipes, "--profile", args.profile, "--store", builder_store, "--with-inputs",
            "--release-version", "1.0")
        trust = ["--root-key", work / "keys/attestation/owner.pub.json",
                 "--keyring", work / "keys/archive-keyring.gpg"]
        print(f"builder: cold build {cold:.1f} s", flush=True)
        mirror = f"http://127.0.0.1:{closed_port()}/debian"
        for i in range(args.rebuilders):
            run(MLOS, "keys", "init", work / f"keys-{i}")
            vary = [f"--vary={args.vary}"] if args.vary else []
            seconds = run(MLOS, "rebuild", rel, "--keys", work / f"keys-{i}", "--out", work / f"rebuild-{i}",
                          "--store", stores[i + 1], "--mirror", mirror, *trust, *vary)
            where = "environments pre-assembled (--quick)" if args.quick else "an empty store"
            print(f"rebuilder {i + 1}: {seconds:.1f} s from release --with-inputs on {where} vs the "
                  f"builder's cold build {cold:.1f} s -> {seconds / cold:.2f}x; target <= 1.10x: "
                  + ("met" if seconds <= 1.10 * cold else "missed"), flush=True)
            # verify counting the rebuilders so far (all of them must agree), against verify without.
            counting = [*trust, "--threshold", str(i + 1)]
            for j in range(i + 1):
                counting += ["--rebuild", work / f"rebuild-{j}",
                             "--rebuilder-key", work / f"keys-{j}/attestation/builder.pub.json"]
            plain, counted = [], []
            for _ in range(args.runs):
                plain.append(run(MLOS, "verify", rel, *trust))
                counted.append(run(MLOS, "verify", rel, *counting))
            p, c = statistics.median(plain), statistics.median(counted)
            print(f"verify --threshold {i + 1}: {c:.2f} s vs verify without rebuilders {p:.2f} s "
                  f"(medians of {args.runs}) -> {c / p:.2f}x; target <= 1.2x: "
                  + ("met" if c <= 1.2 * p else "missed"), flush=True)
        for i in range(args.rebuilders + 1):
            name = "keys" if i == args.rebuilders else f"keys-{i}"
            subprocess.run(["gpgconf", "--homedir", str(work / name / "gnupg"), "--kill", "gpg-agent"],
                           check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
