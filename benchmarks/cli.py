"""How fast the command line answers: `mlos-repro --help` and `mlos-repro plan` on the warm
graph, against the bare Python interpreter's start, same run.

    .venv/bin/python benchmarks/cli.py [--recipes recipes] [--profile small] [--runs 15] [--quick]

Each command runs RUNS times, interleaved; medians are printed with their ratio to the bare
interpreter (`python -c pass`). Target: `plan` <= 0.5 s. `plan` reads the store named by
MLOS_REPRO_STORE (or the default one): it should hold a build of the profile, so that every
stage is cached (the script says how many are not). Bytecode is written and used, as an
installed toolkit does.

--quick: 3 runs (the suite checks that the benchmark runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv/bin/python")
MLOS = str(ROOT / ".venv/bin/mlos-repro")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return seconds, p.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", type=Path, default=ROOT / "recipes")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    commands = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "mlos-repro --help": [MLOS, "--help"],
        "mlos-repro plan": [MLOS, "plan", "--recipes", str(args.recipes), "--profile", args.profile,
                            "--json"],
    }
    for argv in commands.values():  # warm: bytecode written, files in the page cache
        timed(argv, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    output = ""
    for _ in range(runs):
        for name, argv in commands.items():
            seconds, out = timed(argv, env)
            times[name].append(seconds)
            if name == "mlos-repro plan":
                output = out
    stages = json.loads(output)["stages"]
    to_run = [s["stage"] for s in stages if s["status"] != "cached"]
    print(f"plan of {len(stages)} stages of profile {args.profile!r}: "
          + (f"{len(to_run)} not cached ({', '.join(to_run)})" if to_run else "all cached"))
    base = statistics.median(times["python -c pass"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:6.3f} s (median of {runs}) -> {median / base:5.1f}x the bare interpreter")
    plan = statistics.median(times["mlos-repro plan"])
    print(f"plan {plan:.3f} s; target <= 0.5 s: " + ("met" if plan <= 0.5 else "missed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
