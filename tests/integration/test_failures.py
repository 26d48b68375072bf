"""Failing stages exit 4 with what a user needs; nothing partial is left behind."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlos_repro.errors import BadInputError
from mlos_repro.executor import Executor
from mlos_repro.recipe import load_recipes
from mlos_repro.sandbox.bwrap import Bwrap
from mlos_repro.store import Store
from tests.conftest import MLOS, mlos


def test_missing_output_exits_4_naming_it(shared_store: Path, repo: Callable[..., Path]) -> None:
    recipes = repo("""
        [[stage]]
        name = "forgetful"
        outputs = ["made.txt", "never.txt"]
        run = [["sh", "-c", "echo made > /out/made.txt"]]
    """)
    out = recipes.parent / "out"
    result = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store)
    assert result.code == 4, result.stderr
    assert "stage 'forgetful'" in result.stderr
    assert "declared output(s) not produced: never.txt" in result.stderr
    assert not out.exists()


def test_failing_command_exits_4_with_log_tail(shared_store: Path, repo: Callable[..., Path]) -> None:
    recipes = repo("""
        [[stage]]
        name = "broken"
        outputs = ["x"]
        run = [["sh", "-c", "echo step-one-ok"],
               ["sh", "-c", "for i in $(seq 1 40); do echo line-$i; done; echo compiler says no >&2; exit 3"]]
    """)
    result = mlos("build", "--recipes", recipes, "--out", recipes.parent / "out",
                  "--store", shared_store)
    assert result.code == 4
    err = result.stderr
    assert "exited with status 3" in err and "seq 1 40" in err
    assert "compiler says no" in err and "line-40" in err
    assert "line-10" not in err  # only the tail: the last 25 lines
    log = re.search(r"full log: (\S+)", err)
    assert log is not None
    full = Path(log.group(1)).read_text()
    assert "step-one-ok" in full and "line-1\n" in full


def test_missing_tool_exits_3_naming_the_package(shared_store: Path, repo: Callable[..., Path],
                                                tmp_path: Path) -> None:
    recipes = repo('[[stage]]\nname = "a"\noutputs = ["x"]\nrun = [["true"]]\n')
    empty = tmp_path / "empty-path"
    empty.mkdir()
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "out", "--store", shared_store,
                  env={"PATH": str(empty)})
    assert result.code == 3
    assert "bwrap" in result.stderr and "apt-get install bubblewrap" in result.stderr


def test_unfetched_pinned_input_says_run_fetch(shared_store: Path, repo: Callable[..., Path]) -> None:
    recipes = repo(f"""
        [[stage]]
        name = "needs-download"
        outputs = ["x"]
        run = [["true"]]
        [stage.inputs]
        tarball = "url:https://example.org/never-fetched.tar.gz#sha256={'e' * 64}"
    """)
    result = mlos("build", "--recipes", recipes, "--out", recipes.parent / "out",
                  "--store", shared_store)
    assert result.code == 2
    assert "'tarball'" in result.stderr and "mlos-repro fetch" in result.stderr


def test_killed_build_leaves_the_store_consistent(shared_store: Path, repo: Callable[..., Path],
                                                  tmp_path: Path, unique: str) -> None:
    recipes = repo(f"""
        [[stage]]
        name = "slow"
        outputs = ["slow.txt"]
        run = [["sh", "-c", "echo {unique} > /out/slow.txt; sleep 4"]]
    """)
    out = recipes.parent / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOS_REPRO")}
    args = [*MLOS, "build", "--recipes", str(recipes), "--out", str(out), "--store", str(shared_store)]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    work = shared_store / "tmp"
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(f"stage-slow-{proc.pid}-") for p in work.iterdir()):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the stage never started"
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()

    result = mlos("build", "--recipes", recipes, "--out", out, "--store", shared_store, "--json")
    assert result.code == 0, result.stderr
    stage = json.loads(result.stdout)["stages"]["slow"]
    assert stage["cached"] is False  # the killed run left no cache entry
    assert (out / "slow" / "slow.txt").read_text() == f"{unique}\n"
    assert not any(p.name.startswith(f"stage-slow-{proc.pid}-") for p in work.iterdir())


def test_two_builds_share_one_store(shared_store: Path, repo: Callable[..., Path],
                                    tmp_path: Path, unique: str) -> None:
    recipes = repo(f"""
        [[stage]]
        name = "shared"
        outputs = ["s.txt"]
        run = [["sh", "-c", "sleep 2; echo {unique} > /out/s.txt"]]
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOS_REPRO")}
    procs = [subprocess.Popen([*MLOS, "build", "--recipes", str(recipes), "--out", str(tmp_path / f"o{i}"),
                               "--store", str(shared_store), "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1] for r in results]
    cached = sorted(json.loads(r[0])["stages"]["shared"]["cached"] for r in results)
    assert cached == [False, True]  # it ran once; the other build waited and took it from the store
    assert (tmp_path / "o0" / "manifest.json").read_bytes() == (tmp_path / "o1" / "manifest.json").read_bytes()


@pytest.mark.root
def test_a_privileged_stage_has_root_powers_but_no_network(shared_store: Path,
                                                            repo: Callable[..., Path]) -> None:
    recipes = repo("""
        [[stage]]
        name = "owner"
        privileged = true
        outputs = ["report"]
        run = [["sh", "-c", "touch f && chown 1234:5678 f && stat -c %u:%g f > /out/report"],
               ["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort >> /out/report"]]

        [[stage]]
        name = "plain"
        outputs = ["report"]
        run = [["sh", "-c", "touch f && chown 1234:5678 f; echo $? > /out/report"]]
    """)
    result = mlos("build", "--recipes", recipes, "--out", recipes.parent / "out", "--store", shared_store,
                  "--no-cache")
    assert result.code == 0, result.stderr
    # Real ownership (what a root filesystem needs), and only the loopback interface.
    assert (recipes.parent / "out/owner/report").read_text().split() == ["1234:5678", "lo"]
    # Without `privileged`, the stage's root cannot give files away.
    assert (recipes.parent / "out/plain/report").read_text().strip() != "0"


def test_a_privileged_stage_needs_root(shared_store: Path, repo: Callable[..., Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    recipes = load_recipes(repo("""
        [[stage]]
        name = "rootfs-like"
        privileged = true
        outputs = ["x"]
        run = [["true"]]
    """))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BadInputError) as info:
        Executor(recipes, Store(shared_store), Bwrap()).build()
    assert "rootfs-like" in info.value.message and "privileged" in info.value.message
    assert info.value.hint is not None and "as root" in info.value.hint


def test_an_env_input_whose_debs_are_not_fetched_says_run_fetch(repo: Callable[..., Path]) -> None:
    recipes = repo("""
        [[stage]]
        name = "needs-mirror"
        outputs = ["x"]
        run = [["true"]]
        [stage.inputs]
        debian = "env:target"
    """)
    empty_store = recipes.parent / "store"
    result = mlos("build", "--recipes", recipes, "--out", recipes.parent / "out", "--store", empty_store)
    assert result.code == 2, result.stderr
    assert "stage 'needs-mirror': input 'debian' (env:target):" in result.stderr
    assert ".debs, e.g." in result.stderr and "run: mlos-repro fetch" in result.stderr
    assert not (recipes.parent / "out").exists()


def test_twenty_random_kills_leave_the_store_consistent(shared_store: Path, repo: Callable[..., Path],
                                                        tmp_path: Path, unique: str) -> None:
    """kill -9 at random moments of builds that copy a 256 MiB output and a tree of many files
    into the store: afterwards every entry is complete, no blob is corrupt, what the killed
    builds left in tmp/ is swept, and the build gives the same digests as an undisturbed one."""
    from mlos_repro.store_admin import check_store

    recipes = repo(f"""
        [[stage]]
        name = "big"
        outputs = ["big.bin"]
        run = [["sh", "-c", "head -c 268435456 /dev/zero > /out/big.bin; echo {unique} >> /out/big.bin"]]

        [[stage]]
        name = "many"
        outputs = ["t"]
        run = [["sh", "-c", "mkdir /out/t; for i in $(seq 400); do echo {unique} $i > /out/t/f$i; done"]]

        [[stage]]
        name = "after"
        outputs = ["sums"]
        run = [["sh", "-c", "sha256sum /in/big/big.bin /in/many/t/* > /out/sums"]]
        [stage.inputs]
        big = "stage:big"
        many = "stage:many"
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOS_REPRO")}

    def start(out: Path, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*MLOS, "build", "--recipes", str(recipes), "--out", str(out),
                                 "--store", str(shared_store), "--json", *extra],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    reference = start(tmp_path / "ref")
    stdout, stderr = reference.communicate()
    assert reference.returncode == 0, stderr
    want = {n: s["outputs"] for n, s in json.loads(stdout)["stages"].items()}

    rng = random.Random(unique)
    leftovers: list[Path] = []
    for i in range(20):
        proc = start(tmp_path / f"k{i}", "--no-cache")  # every run copies its outputs again
        time.sleep(rng.uniform(0.3, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        # What this killed build left (the next build, killed or not, sweeps it).
        leftovers += [p for p in (shared_store / "tmp").iterdir() if f"-{proc.pid}-" in p.name]
    assert leftovers, "no kill landed while a build was working"
    final = start(tmp_path / "final")
    stdout, stderr = final.communicate()
    assert final.returncode == 0, stderr
    assert {n: s["outputs"] for n, s in json.loads(stdout)["stages"].items()} == want
    assert not [p for p in leftovers if p.exists() or p.is_symlink()]
    report = check_store(Store(shared_store))
    assert report.ok, (report.corrupted, report.broken_entries)
