"""Shared fixtures: a repository skeleton with the project's pinned builder environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
MLOS = [sys.executable, "-m", "mlos_repro"]


def suite_store() -> Path:
    """The store the suite uses: $MLOS_REPRO_TEST_STORE, else one of its own beside the user's
    default store (which the suite never touches)."""
    given = os.environ.get("MLOS_REPRO_TEST_STORE")
    if given:
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlos-repro-test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tiers by folder (unit, integration); root tests skip when not root; benchmarks go last,
    when the stages they measure are in the store."""
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("root") is not None and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (it builds privileged stages): run as root"))
    items.sort(key=lambda item: item.path.name == "test_benchmarks.py")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def mlos(*args: str | os.PathLike[str], store: Path | None = None, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> Result:
    """Run the real command line, as a user would."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLOS_REPRO")}
    full_env["MLOS_REPRO_STORE"] = str(store or suite_store())
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="mlos-test-state-") as state:
        # What verify-iso records of releases seen stays with this one command unless a test
        # gives its own XDG_STATE_HOME.
        full_env.setdefault("XDG_STATE_HOME", state)
        p = subprocess.run([*MLOS, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                           env=full_env)
    return Result(p.returncode, p.stdout, p.stderr)


def write_repo(root: Path, stages: str, *, lock: bool = True) -> Path:
    """A repository at root with the project's builder.toml (+ lock), SBOM policy and the given
    stage TOML."""
    recipes = root / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "recipes" / "builder.toml", recipes / "builder.toml")
    if lock:
        shutil.copy(PROJECT / "recipes" / "builder.lock", recipes / "builder.lock")
    (recipes / "stages.toml").write_text(textwrap.dedent(stages))
    shutil.copytree(PROJECT / "sbom", root / "sbom", dirs_exist_ok=True)
    return recipes


@pytest.fixture
def repo(tmp_path: Path) -> Callable[..., Path]:
    def make(stages: str, **kw: bool) -> Path:
        return write_repo(tmp_path / "repo", stages, **kw)
    return make


@pytest.fixture
def unique() -> str:
    """A fresh token: recipes that embed it miss a store shared across runs."""
    return uuid.uuid4().hex


def gpg(home: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """gpg in a throwaway home, without passphrases."""
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--quiet",
                           "--pinentry-mode", "loopback", "--passphrase", "", *args],
                          input=stdin, capture_output=True, check=True).stdout


@pytest.fixture
def gnupg_key(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Make throwaway ed25519 signing keys: gnupg_key(uid) -> a GnuPG home holding it."""
    homes: list[Path] = []

    def make(uid: str) -> Path:
        home = tmp_path / f"gnupg-{len(homes)}"
        home.mkdir(mode=0o700)
        homes.append(home)
        gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "1d")
        return home

    yield make
    for home in homes:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
