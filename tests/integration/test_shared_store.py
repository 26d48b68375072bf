"""--store oci://: a real OCI registry (Debian's docker-registry) on 127.0.0.1 as the store several
machines share; stage entries used only when signed by trusted keys, K of them agreeing."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import registry as oci_registry
from tests.conftest import mlos
from tests.integration.test_cluster import hidden_graph


@pytest.fixture(scope="session")
def registry() -> Iterator[tuple[str, Path]]:
    """The registry scripts/run-tests started ($MLOS_REPRO_TEST_REGISTRY), or one of this session's."""
    given = os.environ.get(oci_registry.ENV)
    if given:
        server = oci_registry.started(Path(given))
        yield server.address, server.data
        return
    with tempfile.TemporaryDirectory(prefix="mlos-registry-") as tmp, oci_registry.running(Path(tmp)) as server:
        yield server.address, server.data


@pytest.fixture
def machine(shared_store: Path, tmp_path: Path) -> Callable[[str], Path]:
    """A fresh local store, as on another machine: only the assembled builder environments are
    there (hard links from the suite's store), no blob or stage entry of any build."""
    def make(name: str) -> Path:
        store = tmp_path / f"machine-{name}"
        store.mkdir()
        subprocess.run(["cp", "-al", str(shared_store / "envs"), str(store / "envs")], check=True)
        return store
    return make


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three builders' `keys init` directories: a and b are trusted, stranger is not."""
    made = {}
    for name in ("a", "b", "stranger"):
        directory = tmp_path_factory.mktemp(f"keys-{name}")
        result = mlos("keys", "init", directory / "k")
        assert result.code == 0, result.stderr
        made[name] = directory / "k"
    return made


def pub(keys: dict[str, Path], name: str) -> Path:
    return keys[name] / "attestation/builder.pub.json"


def build(store: Path, recipes: Path, out: Path, url: str, *extra: str | Path) -> tuple[int, str]:
    result = mlos("build", "--recipes", recipes, "--out", out, "--store", url, *extra,
                  env={"MLOS_REPRO_STORE": str(store)})
    return result.code, result.stderr


def test_a_stage_built_on_one_machine_is_used_on_another(registry: tuple[str, Path], machine: Callable[[str], Path],
                                                         keys: dict[str, Path], repo: Callable[..., Path],
                                                         unique: str, tmp_path: Path) -> None:
    address, _ = registry
    url = f"oci://{address}/mlos/share-{unique[:8]}"
    recipes = repo(hidden_graph(unique, 8, seed=int(unique[:6], 16)))
    code, err = build(machine("a"), recipes, tmp_path / "a", url, "--sign-cache", keys["a"])
    assert code == 0 and "8 stages (8 built, 0 cached)" in err, err
    # Another machine trusting a: every entry taken from the registry, blobs pulled and re-hashed.
    b = machine("b")
    code, err = build(b, recipes, tmp_path / "b", url, "--cache-key", pub(keys, "a"))
    assert code == 0 and "8 stages (0 built, 8 cached)" in err, err
    assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()
    assert (tmp_path / "a/s3/o.txt").read_bytes() == (tmp_path / "b/s3/o.txt").read_bytes()
    assert any((b / "stages").iterdir())  # recorded on b too
    # A machine trusting only a stranger's key builds everything itself.
    code, err = build(machine("c"), recipes, tmp_path / "c", url, "--cache-key", pub(keys, "stranger"))
    assert code == 0 and "8 stages (8 built, 0 cached)" in err, err
    # Two keys required: a alone is not enough; once b has built and signed too, it is.
    two = ("--cache-key", pub(keys, "a"), "--cache-key", pub(keys, "b"), "--cache-threshold", "2")
    code, err = build(machine("d"), recipes, tmp_path / "d", url, *two)
    assert code == 0 and "8 stages (8 built, 0 cached)" in err, err
    code, err = build(machine("e"), recipes, tmp_path / "e", url, "--sign-cache", keys["b"], "--no-cache")
    assert code == 0, err
    code, err = build(machine("f"), recipes, tmp_path / "f", url, *two)
    assert code == 0 and "8 stages (0 built, 8 cached)" in err, err
    assert (tmp_path / "f/manifest.json").read_bytes() == (tmp_path / "a/manifest.json").read_bytes()


def test_a_blob_changed_in_the_registry_is_refused(registry: tuple[str, Path], machine: Callable[[str], Path],
                                                   keys: dict[str, Path], repo: Callable[..., Path], unique: str,
                                                   tmp_path: Path) -> None:
    address, data = registry
    url = f"oci://{address}/mlos/tamper-{unique[:8]}"
    recipes = repo(hidden_graph(unique, 3, seed=2))
    code, err = build(machine("a"), recipes, tmp_path / "a", url, "--sign-cache", keys["a"])
    assert code == 0, err
    output = (tmp_path / "a/s1/o.txt").read_bytes()
    import hashlib

    digest = hashlib.sha256(output).hexdigest()
    stored = data / "docker/registry/v2/blobs/sha256" / digest[:2] / digest / "data"
    assert stored.read_bytes() == output
    stored.write_bytes(output.replace(output[:4], b"0000"))
    b = machine("b")
    code, err = build(b, recipes, tmp_path / "b", url, "--cache-key", pub(keys, "a"))
    assert code == 1, err
    assert f"blob sha256:{digest}" in err and "refused" in err
    assert not (b / "blobs/sha256" / digest).exists() and not (tmp_path / "b").exists()


def test_a_graph_on_dask_with_the_shared_store(registry: tuple[str, Path], machine: Callable[[str], Path],
                                               keys: dict[str, Path], repo: Callable[..., Path], unique: str,
                                               tmp_path: Path, shared_store: Path) -> None:
    """LocalCluster workers read and write the OCI store: the same manifest as the local
    executor, and the entries they signed serve another machine."""
    address, _ = registry
    url = f"oci://{address}/mlos/dask-{unique[:8]}"
    recipes = repo(hidden_graph(unique, 9, seed=int(unique[6:12], 16)))
    code, err = build(machine("a"), recipes, tmp_path / "dask", url, "--sign-cache", keys["a"], "--executor", "dask")
    assert code == 0 and "9 stages (9 built, 0 cached)" in err, err
    local = mlos("build", "--recipes", recipes, "--out", tmp_path / "local", "--no-cache", "--store", shared_store)
    assert local.code == 0, local.stderr
    assert (tmp_path / "dask/manifest.json").read_bytes() == (tmp_path / "local/manifest.json").read_bytes()
    code, err = build(machine("b"), recipes, tmp_path / "b", url, "--cache-key", pub(keys, "a"))
    assert code == 0 and "9 stages (0 built, 9 cached)" in err, err


def test_a_shared_store_is_named_when_wrong(registry: tuple[str, Path], machine: Callable[[str], Path],
                                            keys: dict[str, Path], repo: Callable[..., Path], unique: str,
                                            tmp_path: Path) -> None:
    recipes = repo(hidden_graph(unique, 1, seed=1))
    store = machine("a")
    code, err = build(store, recipes, tmp_path / "a", "oci://127.0.0.1:9/mlos/x", "--sign-cache", keys["a"])
    assert code == 2 and "cannot reach the registry oci://127.0.0.1:9/mlos/x" in err, err
    code, err = build(store, recipes, tmp_path / "a", "oci://127.0.0.1:9/Bad Name")
    assert code == 2 and "expected oci://HOST[:PORT]/REPOSITORY" in err, err
    code, err = build(store, recipes, tmp_path / "b", f"oci://{registry[0]}/mlos/x", "--cache-threshold", "2",
                      "--cache-key", pub(keys, "a"))
    assert code == 2 and "--cache-threshold 2: only 1 trusted keys" in err, err
    wrong = mlos("build", "--recipes", recipes, "--out", tmp_path / "c", "--cache-key", pub(keys, "a"))
    assert wrong.code == 2 and "apply to --store oci:// only" in wrong.stderr
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))

