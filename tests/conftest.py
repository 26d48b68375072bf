"""Shared fixtures: a repository skeleton with the project's pinned builder environment."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
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
    when the stages they measure are in the store; a test whose command started with the
    session (marked `background`) after them, so that it ran beside the whole suite."""
    for item in items:
        tier = item.path.relative_to(TESTS).parts[0]
        if tier in ("unit", "integration"):
            item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("root") is not None and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (it builds privileged stages): run as root"))
    items.sort(key=lambda item: (item.get_closest_marker("background") is not None,
                                 item.path.name == "test_benchmarks.py"))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def cli_env(store: Path | None, env: dict[str, str] | None, state: str) -> dict[str, str]:
    """The environment of one run of the command line: this process's, without MLOS_REPRO_*
    settings, on the given store. What verify-iso records of releases seen stays in `state`
    unless a test gives its own XDG_STATE_HOME."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLOS_REPRO")}
    full_env["MLOS_REPRO_STORE"] = str(store or suite_store())
    full_env.update(env or {})
    full_env.setdefault("XDG_STATE_HOME", state)
    return full_env


def mlos(*args: str | os.PathLike[str], store: Path | None = None, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> Result:
    """Run the real command line, as a user would."""
    with tempfile.TemporaryDirectory(prefix="mlos-test-state-") as state:
        p = subprocess.run([*MLOS, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                           env=cli_env(store, env, state))
    return Result(p.returncode, p.stdout, p.stderr)


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Started:
    """A run of the command line started in the background, with its output in files under
    `work`; wait() gives its Result. It ends if the suite's process dies; its sandboxes end
    with it (bubblewrap's --die-with-parent)."""

    def __init__(self, work: Path, *args: str | os.PathLike[str], store: Path) -> None:
        self.work = work
        (work / "state").mkdir()
        self._out = (work / "stdout").open("w")
        self._err = (work / "stderr").open("w")
        self._proc = subprocess.Popen([*MLOS, *map(str, args)], stdout=self._out, stderr=self._err,
                                      env=cli_env(store, None, str(work / "state")),
                                      preexec_fn=_die_with_parent)

    def wait(self) -> Result:
        code = self._proc.wait()
        self._out.close()
        self._err.close()
        return Result(code, (self.work / "stdout").read_text(), (self.work / "stderr").read_text())

    def stop(self) -> None:
        """End it if it still runs."""
        if self._proc.poll() is None:
            self._proc.terminate()
        self.wait()


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
