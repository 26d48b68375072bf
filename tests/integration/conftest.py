"""Integration fixtures: the suite's own store, fetched and with the builder environment assembled once.

The store is tests.conftest.suite_store() ($MLOS_REPRO_TEST_STORE, else ~/.cache/mlos-repro-test),
never the user's: the expensive parts — the locked .debs, the assembled environments, the kernel —
are shared across tests and runs of the suite.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlos_repro.env.lockfile import read_lock
from tests.conftest import PROJECT, Started, mlos, suite_store


@pytest.fixture(scope="session")
def shared_store() -> Path:
    if shutil.which("bwrap") is None or shutil.which("mmdebstrap") is None:
        pytest.fail("integration tests need bubblewrap and mmdebstrap: run scripts/install-deps")
    store = suite_store()
    fetched = mlos("fetch", "--recipes", PROJECT / "recipes", "--store", store)
    assert fetched.code == 0, fetched.stderr
    env = mlos("env", "default", "--recipes", PROJECT / "recipes", "--store", store, "--json")
    assert env.code == 0, env.stderr
    return store


@pytest.fixture(scope="session", autouse=True)
def kernel_verify(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started | None]:
    """`build kernel --verify` of the project's recipes, started as soon as the store is ready
    when the session runs a test that reads it (test_kernel's reproducibility test, which runs
    last). Its varied rebuild runs on one CPU for a quarter of an hour: beside the rest of the
    suite, the other CPU keeps working. None when no selected test needs it."""
    # Autouse, so every integration test names it: the one that reads it is marked `background`.
    if not any(item.get_closest_marker("background") is not None for item in request.session.items):
        yield None
        return
    store = request.getfixturevalue("shared_store")
    work = tmp_path_factory.mktemp("kernel-verify")
    started = Started(work, "build", "kernel", "--verify", "--recipes", PROJECT / "recipes",
                      "--out", work / "out", "--store", store, store=store)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def env_digest(shared_store: Path) -> str:
    env = mlos("env", "default", "--recipes", PROJECT / "recipes", "--store", shared_store, "--json")
    digest: str = json.loads(env.stdout)["digest"]
    return digest


def locked_blobs() -> list[tuple[str, str]]:
    """(package file name, sha256) of every .deb of the default environment."""
    env = read_lock(PROJECT / "recipes" / "builder.lock")["default"]
    return [(p.filename, p.sha256) for p in env.packages]
