"""`mlos-repro fetch` against a mirror served on 127.0.0.1: digests checked, mismatches refused."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import lzma
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlos_repro.env.lockfile import LockedPackage, read_lock
from tests.conftest import PROJECT, mlos


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


def _unique_packages() -> list[LockedPackage]:
    unique = {p.sha256: p for env in read_lock(PROJECT / "recipes" / "builder.lock").values()
              for p in env.packages}
    return [unique[k] for k in sorted(unique)]


@pytest.fixture
def mirror(shared_store: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local mirror: every locked .deb of every environment under its pool path, plus a
    Packages.xz index."""
    root = tmp_path / "mirror"
    packages = _unique_packages()
    for pkg in packages:
        dest = root / pkg.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(shared_store / "blobs" / "sha256" / pkg.sha256, dest)
    index = root / "dists" / "bookworm" / "main" / "binary-amd64" / "Packages.xz"
    index.parent.mkdir(parents=True)
    index.write_bytes(lzma.compress("\n".join(p.stanza for p in packages).encode()))
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_downloads_every_locked_deb_once(mirror: tuple[Path, str], tmp_path: Path,
                                               repo: Callable[..., Path]) -> None:
    _, url = mirror
    store = tmp_path / "store"
    recipes = repo("")  # no stages: the locked environments only
    first = mlos("fetch", "--recipes", recipes, "--store", store, "--mirror", url, "--json")
    assert first.code == 0, first.stderr
    unique = _unique_packages()
    fetched = json.loads(first.stdout)
    # Each shared .deb once; the counts are true on an empty store.
    assert len(fetched["downloaded"]) == len(unique) and fetched["present"] == 0
    assert fetched["downloaded_bytes"] == sum(p.size for p in unique)
    for pkg in unique:
        blob = store / "blobs" / "sha256" / pkg.sha256
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == pkg.sha256
    again = mlos("fetch", "--recipes", recipes, "--store", store, "--mirror", url)
    assert again.code == 0, again.stderr
    assert f"downloaded 0 new files (0 B); {len(unique)} already in the store" in again.stderr
    assert "downloading" not in again.stderr


def test_a_tampered_deb_is_refused_and_not_stored(mirror: tuple[Path, str], tmp_path: Path,
                                                  repo: Callable[..., Path]) -> None:
    root, url = mirror
    env = read_lock(PROJECT / "recipes" / "builder.lock")["default"]
    victim = next(p for p in env.packages if p.name == "hostname")
    (root / victim.filename).unlink()
    (root / victim.filename).write_bytes(b"!<arch>\nnot the pinned package\n")
    store = tmp_path / "store"
    result = mlos("fetch", "--recipes", repo(""), "--store", store, "--mirror", url)
    assert result.code == 1, result.stderr
    assert victim.filename in result.stderr and "refused, not stored" in result.stderr
    assert not (store / "blobs" / "sha256" / victim.sha256).exists()
    tampered = hashlib.sha256(b"!<arch>\nnot the pinned package\n").hexdigest()
    assert not (store / "blobs" / "sha256" / tampered).exists()
    assert [p for p in (store / "tmp").iterdir() if p.name.startswith("dl-")] == []


def test_pinned_url_and_deb_inputs_are_fetched_and_mounted(
        mirror: tuple[Path, str], shared_store: Path, repo: Callable[..., Path], unique: str) -> None:
    root, url = mirror
    payload = f"upstream release {unique}\n".encode()
    (root / "release.txt").write_bytes(payload)
    env = read_lock(PROJECT / "recipes" / "builder.lock")["default"]
    hello = next(p for p in env.packages if p.name == "hostname")
    recipes = repo(f"""
        [[stage]]
        name = "consume"
        outputs = ["report.txt"]
        run = [["sh", "-c", "cat /in/upstream > /out/report.txt; dpkg-deb -f /in/pkg Package Version >> /out/report.txt"]]
        [stage.inputs]
        upstream = "url:{url}/release.txt#sha256={hashlib.sha256(payload).hexdigest()}"
        pkg = "deb:hostname={hello.version}#sha256={hello.sha256}"
    """)
    fetched = mlos("fetch", "--recipes", recipes, "--store", shared_store, "--mirror", url, "--json")
    assert fetched.code == 0, fetched.stderr
    assert f"{url}/release.txt" in json.loads(fetched.stdout)["downloaded"]
    built = mlos("build", "--recipes", recipes, "--out", recipes.parent / "out", "--store", shared_store)
    assert built.code == 0, built.stderr
    report = (recipes.parent / "out" / "consume" / "report.txt").read_text()
    assert report == payload.decode() + f"Package: hostname\nVersion: {hello.version}\n"


def test_a_wrongly_pinned_url_is_refused(mirror: tuple[Path, str], shared_store: Path,
                                         repo: Callable[..., Path], unique: str) -> None:
    root, url = mirror
    (root / "drifted.txt").write_text(f"upstream changed the file {unique}\n")
    recipes = repo(f"""
        [[stage]]
        name = "consume"
        outputs = ["x"]
        run = [["true"]]
        [stage.inputs]
        upstream = "url:{url}/drifted.txt#sha256={hashlib.sha256(b'what was pinned').hexdigest()}"
    """)
    result = mlos("fetch", "--recipes", recipes, "--store", shared_store, "--mirror", url)
    assert result.code == 1
    assert "drifted.txt" in result.stderr and "refused" in result.stderr


def test_a_deb_version_missing_from_the_mirror_names_it(mirror: tuple[Path, str], shared_store: Path,
                                                         repo: Callable[..., Path]) -> None:
    _, url = mirror
    recipes = repo(f"""
        [[stage]]
        name = "old"
        outputs = ["x"]
        run = [["true"]]
        [stage.inputs]
        pkg = "deb:hostname=0.1-gone#sha256={'a' * 64}"
    """)
    result = mlos("fetch", "--recipes", recipes, "--store", shared_store, "--mirror", url)
    assert result.code == 2
    assert "hostname 0.1-gone" in result.stderr and "snapshot" in result.stderr
