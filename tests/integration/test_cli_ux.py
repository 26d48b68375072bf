"""What a person sees while the tool works: progress with estimates, a live log tail on a
terminal, quiet and colour switches, global options after the command, errors as JSON."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import MLOS, mlos, write_repo

SLOW = """
[[stage]]
name = "slow"
outputs = ["a.txt"]
run = [["sh", "-c", "for i in 1 2 3 4; do echo step-$i-@TOKEN@; sleep 1; done; echo a > /out/a.txt"]]
"""

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])(?:;[0-9]+)*m")  # a foreground colour


def on_a_terminal(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run argv on a pseudo-terminal (script(1)), as a person at a terminal would; what it printed."""
    command = " ".join(shlex.quote(a) for a in argv)
    result = subprocess.run(["script", "-qefc", command, "/dev/null"], capture_output=True, timeout=600,
                            env=env)
    return result.stdout.decode(errors="replace")


def test_progress_says_what_runs_and_how_long_it_took_last_time(shared_store: Path, repo: Callable[..., Path],
                                                                unique: str) -> None:
    recipes = repo(SLOW.replace("@TOKEN@", unique))
    out = recipes.parent / "out"
    # Not a terminal (a CI log): one line per event.
    first = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store, "--no-cache")
    assert first.code == 0, first.stderr
    lines = first.stderr.splitlines()
    assert any(re.fullmatch(r"\s*running\s+slow(\s+\(last time \d+:\d\d\))?", line) for line in lines), lines
    assert any(re.fullmatch(r"\s*done\s+slow\s+\d+\.\ds", line) for line in lines), lines
    assert "1 stage (1 built, 0 cached)" in first.stderr
    # The second time, the first run's time is the estimate.
    second = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store, "--no-cache")
    assert re.search(r"running\s+slow\s+\(last time 0:0[3-9]\)", second.stderr), second.stderr
    # -q: nothing but the result; global options after the command, too.
    quiet = mlos("build", "-q", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert quiet.code == 0 and quiet.stderr == "", quiet.stderr


def test_a_terminal_shows_the_running_stage_live_with_its_log(shared_store: Path, repo: Callable[..., Path],
                                                              unique: str, tmp_path: Path) -> None:
    recipes = repo(SLOW.replace("@TOKEN@", unique))
    argv = [*MLOS, "build", "--recipes", str(recipes), "--out", str(tmp_path / "out"),
            "--store", str(shared_store), "--no-cache", "-v"]
    shown = on_a_terminal(argv)
    plain = ANSI.sub("", shown)
    # The live line counts the seconds and shows the stage's log as it is written.
    assert re.search(r"running\s+slow.*0:0[2-4]", plain), plain
    assert f"| step-2-{unique}" in plain, plain
    assert re.search(r"done\s+slow", plain) and COLOUR.search(shown)
    # --no-color (and NO_COLOR): no colour even on a terminal.
    colourless = on_a_terminal([*argv[:-1], "--no-color"])
    assert "done" in colourless and not COLOUR.search(colourless), colourless
    by_env = on_a_terminal(argv[:-1], env={**os.environ, "NO_COLOR": "1"})
    assert "done" in by_env and not COLOUR.search(by_env), by_env


def test_errors_are_json_too_with_json(repo: Callable[..., Path], tmp_path: Path) -> None:
    recipes = repo('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\nmystery = 1\n')
    result = mlos("build", "--json", "--recipes", recipes, "--out", tmp_path / "out", "--store", tmp_path / "s")
    assert result.code == 2
    error = json.loads(result.stdout)
    assert error["exit"] == 2 and "mystery" in error["error"] and error["hint"]
    assert "mystery" in result.stderr  # and still said to the person


def test_plan_says_what_would_run_and_why(shared_store: Path, unique: str, tmp_path: Path) -> None:
    stages = f"""
        [[stage]]
        name = "words"
        outputs = ["words.txt"]
        run = [["sh", "-c", "cat /in/src/words > /out/words.txt; echo {unique} >> /out/words.txt"]]
        [stage.inputs]
        src = "path:data"

        [[stage]]
        name = "count"
        outputs = ["count.txt"]
        run = [["sh", "-c", "wc -l < /in/words/words.txt > /out/count.txt"]]
        [stage.inputs]
        words = "stage:words"
    """
    # A project this store has never seen: it keeps each project's last build by the absolute
    # path of its recipes, and a test directory's path comes back in later runs.
    recipes = write_repo(tmp_path / unique, stages)
    (recipes.parent / "data").mkdir()
    (recipes.parent / "data" / "words").write_text("one\ntwo\n")

    def plan(*extra: str) -> dict[str, dict[str, Any]]:
        result = mlos("plan", "--json", "--recipes", recipes, "--store", shared_store, *extra)
        assert result.code == 0, result.stderr
        return {s["stage"]: s for s in json.loads(result.stdout)["stages"]}

    never = plan()
    assert never["words"]["status"] == "runs" and never["words"]["why"] == ["it was never built on this store"]
    assert never["count"]["why"] == ["it needs words, which runs first"]
    assert mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store).code == 0
    built = plan()
    assert {s["status"] for s in built.values()} == {"cached"} and built["words"]["estimate_seconds"] > 0
    # An input changed: named, and what needs it runs after it.
    (recipes.parent / "data" / "words").write_text("one\ntwo\nthree\n")
    changed = plan()
    assert changed["words"]["why"] == ["input 'src' changed (path:data)"], changed
    assert changed["count"]["why"] == ["it needs words, which runs first"]
    # A recipe key changed: named with its file (the input back as it was: words is cached).
    (recipes.parent / "data" / "words").write_text("one\ntwo\n")
    (recipes / "stages.toml").write_text(stages.replace("wc -l <", "wc -l  <"))
    edited = plan()
    assert edited["words"]["status"] == "cached"
    (why,) = edited["count"]["why"]
    assert why.startswith("recipe key 'run' changed (") and "stages.toml" in why, why
    (recipes.parent / "data" / "words").write_text("one\ntwo\nthree\n")
    # On a store without the environment: nothing is assembled to find out.
    empty = mlos("plan", "--json", "--recipes", recipes, "--store", tmp_path / "empty")
    assert json.loads(empty.stdout)["stages"][0]["why"] == ["its environment 'default' is not assembled yet"]
    assert not any((tmp_path / "empty" / "envs").glob("*/root"))
    # The table a person reads, and explain.
    shown = mlos("plan", "--recipes", recipes, "--store", shared_store)
    assert "input 'src' changed (path:data)" in shown.stderr and "2 stages to run, 0 cached" in shown.stderr
    explained = mlos("explain", "count", "--recipes", recipes, "--store", shared_store)
    assert explained.code == 0, explained.stderr
    for line in ("count  (", "needs        words", "words = stage:words", "outputs      count.txt",
                 "a build      runs", "because it needs words, which runs first"):
        assert line in explained.stderr, explained.stderr


def test_init_writes_recipes_that_build_as_they_are(shared_store: Path, tmp_path: Path) -> None:
    mine = tmp_path / "my-distro"
    made = mlos("init", mine)
    assert made.code == 0, made.stderr
    assert {p.relative_to(mine).as_posix() for p in mine.rglob("*") if p.is_file()} == {
        "recipes/builder.toml", "recipes/builder.lock", "recipes/hello.toml", "src/hello.c", "sbom/policy.toml"}
    # Outside the checkout, from its own directory, as a user would: no other file needed.
    built = mlos("build", "--store", shared_store, cwd=mine)
    assert built.code == 0, built.stderr
    assert (mine / "out/hello/hello.txt").read_text() == "hello from a reproducible build\n"
    assert (mine / "out/hello/hello.cdx.json").is_file()
    assert "default policy" not in built.stderr  # init wrote one
    # Without any sbom/policy.toml the built-in default applies, and the build says so.
    (mine / "sbom/policy.toml").unlink()
    again = mlos("build", "--store", shared_store, cwd=mine)
    assert again.code == 0, again.stderr
    assert "built-in default policy: there is no sbom/policy.toml" in again.stderr
    sbom = json.loads((mine / "out/hello/hello.cdx.json").read_text())
    assert "default SBOM policy" in json.dumps(sbom["metadata"])
    # init never overwrites.
    refused = mlos("init", mine)
    assert refused.code == 2 and "not an empty directory" in refused.stderr


def test_every_command_shows_an_example_and_completion_works() -> None:
    import click

    from mlos_repro.cli import main

    def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        found: list[tuple[str, ...]] = []
        for name, command in group.commands.items():
            found += commands(command, (*path, name)) if isinstance(command, click.Group) else [(*path, name)]
        return found

    every = commands(main)
    assert len(every) >= 18
    for path in every:
        shown = mlos(*path, "--help")
        assert shown.code == 0 and "Example:" in shown.stdout and "mlos-repro" in shown.stdout, path
        # scripts/install-deps installed its man page, made from this help.
        page = subprocess.run(["man", "-w", "-".join(("mlos-repro", *path))], capture_output=True, text=True,
                              env={**os.environ, "MANPATH": f"{Path(sys.executable).parent.parent / 'share/man'}:"})
        assert page.returncode == 0, (path, page.stderr)
        assert "Example:" in Path(page.stdout.strip()).read_text(), path
    # click's own completion, as docs/cli.md tells a user to enable it (for the installed command).
    installed = [str(Path(sys.executable).parent / "mlos-repro")]
    script = subprocess.run(installed, env={**os.environ, "_MLOS_REPRO_COMPLETE": "bash_source"},
                            capture_output=True, text=True, check=True).stdout
    assert "complete -o nosort -F _mlos_repro_completion mlos-repro" in script
    offered = subprocess.run(installed, capture_output=True, text=True, check=True, env={
        **os.environ, "_MLOS_REPRO_COMPLETE": "bash_complete", "COMP_WORDS": "mlos-repro ver", "COMP_CWORD": "1"})
    assert {"plain,verify", "plain,verify-iso"} <= set(offered.stdout.split()), offered.stdout
