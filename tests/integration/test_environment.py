"""Builder environments: assembled offline from stored .debs, bit for bit, corruption refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.conftest import PROJECT, mlos
from tests.integration.conftest import locked_blobs


def test_two_assemblies_have_the_same_digest(shared_store: Path, env_digest: str) -> None:
    again = mlos("env", "default", "--rebuild", "--recipes", PROJECT / "recipes",
                 "--store", shared_store, "--json")
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["digest"] == env_digest
    assert env_digest.startswith("sha256:") and len(env_digest) == 71


def _store_with_copies(shared_store: Path, dest: Path) -> Path:
    """A private store holding copies (not links) of the locked .debs."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for _, digest in locked_blobs():
        shutil.copy2(shared_store / "blobs" / "sha256" / digest, blobs / digest)
    return dest


def test_a_corrupted_deb_in_the_store_is_refused(shared_store: Path, tmp_path: Path) -> None:
    store = _store_with_copies(shared_store, tmp_path / "store")
    _filename, digest = next((f, d) for f, d in locked_blobs() if "/make-dfsg/" in f)
    victim = store / "blobs" / "sha256" / digest
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    result = mlos("env", "default", "--recipes", PROJECT / "recipes", "--store", store)
    assert result.code == 1, result.stderr
    assert "make_" in result.stderr and "corrupted" in result.stderr
    assert "mlos-repro fetch" in result.stderr
    assert not victim.exists()  # removed, so a fetch brings a good copy
    assert list((store / "envs").glob("*/root")) == []
    assert list((store / "envs" / "by-lock").iterdir()) == []


def test_a_missing_deb_says_run_fetch(shared_store: Path, tmp_path: Path) -> None:
    store = _store_with_copies(shared_store, tmp_path / "store")
    _, digest = locked_blobs()[0]
    os.unlink(store / "blobs" / "sha256" / digest)
    result = mlos("env", "default", "--recipes", PROJECT / "recipes", "--store", store)
    assert result.code == 2
    assert "not in the store" in result.stderr and "mlos-repro fetch" in result.stderr


def test_a_stale_lock_is_refused(shared_store: Path, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(PROJECT / "recipes" / "builder.lock", recipes / "builder.lock")
    text = (PROJECT / "recipes" / "builder.toml").read_text()
    (recipes / "builder.toml").write_text(text.replace('"build-essential"', '"build-essential", "bc"'))
    result = mlos("env", "default", "--recipes", recipes, "--store", shared_store)
    assert result.code == 2
    assert "stale" in result.stderr and "mlos-repro lock" in result.stderr
