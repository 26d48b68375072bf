"""build --executor dask: real Dask (LocalCluster), the same digests and errors as the local executor."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlos_repro.cluster import EVENT_TOPIC
from tests.conftest import MLOS, mlos


def hidden_graph(token: str, stages: int = 10, *, seed: int, extra: str = "") -> str:
    """A graph whose shape the executor cannot guess: each stage takes up to two random earlier
    stages, writes a file and (every third) a tree, from its inputs and `token`."""
    rng = random.Random(seed)
    text = []
    for i in range(stages):
        ups = sorted(rng.sample(range(i), min(i, rng.randint(0, 2))))
        inputs = "".join(f'u{j} = "stage:s{u}"\n' for j, u in enumerate(ups))
        tree = i % 3 == 0
        outputs = '["o.txt", "t"]' if tree else '["o.txt"]'
        script = (f"{{ echo s{i} {token}; cat /in/*/o.txt 2>/dev/null || true; }} | sha256sum > /out/o.txt"
                  + ("; mkdir -p /out/t/d && cp /out/o.txt /out/t/d/copy && ln -s d/copy /out/t/link"
                     if tree else ""))
        text.append(f'[[stage]]\nname = "s{i}"\noutputs = {outputs}\nrun = [["sh", "-euc", "{script}"]]\n'
                    f"[stage.inputs]\n{inputs}\n")
    return "\n".join(text) + extra


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A scheduler with two worker processes in this test process: builds reach it with
    --scheduler, the tests watch and kill its workers."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit=0) as local, Client(local) as client:
        yield client


def _events(client: Any, since: float) -> list[dict[str, Any]]:
    return [event for when, event in client.get_events(EVENT_TOPIC) if when >= since]


def test_a_graph_on_dask_gives_the_local_digests(repo: Callable[..., Path], unique: str, tmp_path: Path,
                                                 shared_store: Path) -> None:
    """A LocalCluster of this machine's cores (no scheduler named) and the local executor
    build a graph of 10 stages to the same manifest, byte for byte."""
    recipes = repo(hidden_graph(unique, seed=int(unique[:8], 16)))
    dask = mlos("build", "--recipes", recipes, "--out", tmp_path / "dask", "--executor", "dask",
                "--store", shared_store)
    assert dask.code == 0, dask.stderr
    assert "10 stages (10 built, 0 cached)" in dask.stderr
    local = mlos("build", "--recipes", recipes, "--out", tmp_path / "local", "--no-cache", "--store", shared_store)
    assert local.code == 0, local.stderr
    assert (tmp_path / "dask/manifest.json").read_bytes() == (tmp_path / "local/manifest.json").read_bytes()
    assert (tmp_path / "dask/s0/t/link").readlink() == Path("d/copy")
    # Everything in the store now: no cluster is started, every stage is a hit.
    again = mlos("build", "--recipes", recipes, "--out", tmp_path / "again", "--executor", "dask",
                 "--store", shared_store)
    assert again.code == 0 and "10 stages (0 built, 10 cached)" in again.stderr
    # --no-cache reaches the workers: every stage runs again.
    fresh = mlos("build", "--recipes", recipes, "--out", tmp_path / "fresh", "--executor", "dask", "--no-cache",
                 "--store", shared_store)
    assert fresh.code == 0 and "10 stages (10 built, 0 cached)" in fresh.stderr, fresh.stderr


def test_a_failing_stage_fails_as_it_does_locally(repo: Callable[..., Path], unique: str, tmp_path: Path,
                                                  shared_store: Path, cluster: Any) -> None:
    broken = ('[[stage]]\nname = "broken"\noutputs = ["x"]\n'
              f'run = [["sh", "-c", "echo {unique[:8]} the widget is broken >&2; exit 3"]]\n'
              '[stage.inputs]\nu = "stage:s1"\n'
              '[[stage]]\nname = "after"\noutputs = ["y"]\nrun = [["sh", "-c", "cp /in/b/x /out/y"]]\n'
              '[stage.inputs]\nb = "stage:broken"\n')
    recipes = repo(hidden_graph(unique, 4, seed=7, extra=broken))
    address = cluster.scheduler.address
    dask = mlos("build", "--recipes", recipes, "--out", tmp_path / "dask", "--executor", "dask",
                "--scheduler", address, "--store", shared_store)
    local = mlos("build", "--recipes", recipes, "--out", tmp_path / "local", "--store", shared_store)
    assert dask.code == local.code == 4, (dask.stderr, local.stderr)

    def error(stderr: str) -> str:
        return stderr[stderr.index("error:"):]

    assert error(dask.stderr) == error(local.stderr)
    assert f"{unique[:8]} the widget is broken" in error(dask.stderr)
    assert "exited with status 3" in error(dask.stderr)
    assert not (tmp_path / "dask").exists() and not (tmp_path / "local").exists()


def test_a_worker_killed_mid_stage(repo: Callable[..., Path], unique: str, tmp_path: Path,
                                   shared_store: Path, cluster: Any) -> None:
    """SIGKILL to the worker running a stage: the scheduler gives the stage to another worker
    and the build ends with the local executor's digests."""
    slow = ('[[stage]]\nname = "slow"\noutputs = ["z"]\n'
            f'run = [["sh", "-c", "sleep 12; echo {unique} > /out/z"]]\n'
            '[stage.inputs]\nu = "stage:s2"\n')
    recipes = repo(hidden_graph(unique, 5, seed=11, extra=slow))
    since = time.time()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOS_REPRO")}
    env["MLOS_REPRO_STORE"] = str(shared_store)
    build = subprocess.Popen([*MLOS, "build", "--recipes", str(recipes), "--out", str(tmp_path / "dask"),
                              "--executor", "dask", "--scheduler", cluster.scheduler.address],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    worker = ""
    deadline = time.monotonic() + 120
    while build.poll() is None and time.monotonic() < deadline:
        # Once the five quick stages reported, the one task a worker still holds is the slow one.
        quick = {e["stage"] for e in _events(cluster, since)} >= {f"s{i}" for i in range(5)}
        busy = [w for w, keys in cluster.processing().items() if keys]
        if quick and busy:
            worker = busy[0]
            break
        time.sleep(0.2)
    assert worker, "the slow stage was never seen running"
    time.sleep(3)  # well inside its 12 s
    os.kill(cluster.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
    _, err = build.communicate(timeout=300)
    assert build.returncode == 0, err
    ran = [e for e in _events(cluster, since) if e["stage"] == "slow"]
    assert len(ran) == 1 and ran[0]["ran"] and ran[0]["worker"] != worker, ran  # the killed run never reported
    local = mlos("build", "--recipes", recipes, "--out", tmp_path / "local", "--no-cache", "--store", shared_store)
    assert local.code == 0, local.stderr
    assert (tmp_path / "dask/manifest.json").read_bytes() == (tmp_path / "local/manifest.json").read_bytes()


def test_two_clients_build_each_stage_once(repo: Callable[..., Path], unique: str, tmp_path: Path,
                                           shared_store: Path, cluster: Any) -> None:
    """Two builds of one graph at once through one scheduler: each stage's task key is its cache
    key, so each stage runs once (the scheduler's event log counts the runs)."""
    recipes = repo(hidden_graph(unique, 10, seed=int(unique[8:16], 16)))
    since = time.time()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOS_REPRO")}
    env["MLOS_REPRO_STORE"] = str(shared_store)
    builds = [subprocess.Popen([*MLOS, "build", "--recipes", str(recipes), "--out", str(tmp_path / f"out{i}"),
                                "--executor", "dask", "--scheduler", cluster.scheduler.address],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for i in range(2)]
    for build in builds:
        _, err = build.communicate(timeout=300)
        assert build.returncode == 0, err
    assert (tmp_path / "out0/manifest.json").read_bytes() == (tmp_path / "out1/manifest.json").read_bytes()
    runs: dict[str, int] = {}
    for event in _events(cluster, since):
        runs[event["stage"]] = runs.get(event["stage"], 0) + int(event["ran"])
    assert runs == {f"s{i}": 1 for i in range(10)}, runs


def test_a_scheduler_that_is_not_there_is_named(repo: Callable[..., Path], unique: str, tmp_path: Path,
                                                shared_store: Path) -> None:
    recipes = repo(hidden_graph(unique, 2, seed=3))
    result = mlos("build", "--recipes", recipes, "--out", tmp_path / "o", "--executor", "dask",
                  "--store", shared_store, env={"MLOS_REPRO_SCHEDULER": "tcp://127.0.0.1:9"})
    assert result.code == 2, result.stderr
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:9" in result.stderr
    assert not (tmp_path / "o").exists()
    wrong = mlos("build", "--recipes", recipes, "--out", tmp_path / "o", "--scheduler", "tcp://127.0.0.1:9",
                 "--store", shared_store)
    assert wrong.code == 2 and "--scheduler tcp://127.0.0.1:9 is for --executor dask" in wrong.stderr



def test_build_verify_on_dask_judges_as_locally(repo: Callable[..., Path], unique: str, tmp_path: Path,
                                                shared_store: Path, cluster: Any) -> None:
    """The varied second build runs on the cluster too (every stage at once, from the first
    build's inputs), and the verdicts are the local executor's."""
    leak = ('[[stage]]\nname = "leak"\noutputs = ["umask.txt"]\nrun = [["sh", "-c", "umask > /out/umask.txt"]]\n'
            '[stage.inputs]\nu = "stage:s2"\n')
    recipes = repo(hidden_graph(unique, 4, seed=5, extra=leak))

    def verdicts(*executor: str) -> dict[str, str]:
        out = tmp_path / (executor[1] if executor else "local")
        result = mlos("build", "--verify", "--vary=-all,+umask,+build_path", "--recipes", recipes, "--out", out,
                      "--store", shared_store, *executor)
        assert result.code == 1, result.stderr
        report = json.loads((out / "verify.json").read_text())
        return {f"{o['stage']}/{o['output']}": o["verdict"] for o in report["outputs"]}

    on_dask = verdicts("--executor", "dask", "--scheduler", cluster.scheduler.address)
    assert on_dask == verdicts()
    assert on_dask["leak/umask.txt"] == "differs" and on_dask["s3/o.txt"] == "identical"
    assert all(v == "identical" for k, v in on_dask.items() if not k.startswith("leak/")), on_dask
    varied = [e for e in cluster.get_events(EVENT_TOPIC) if e[1]["varied"] and e[1]["stage"] == "leak"]
    assert varied, "the varied build did not run on the cluster"
