"""mlos-core and axon: pinned upstream archives (made here, served on 127.0.0.1), `pin`,
`fetch` and the repackaging stage, and the refusal of a wrong pin."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT, mlos, write_repo

UPSTREAM_HOST = "https://downloads.mlos.example"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a directory: (base URL, directory)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def _archive(dest: Path, top: str, tool: str) -> None:
    """An upstream-style release archive: TOP/bin/TOOL (an ELF binary) and TOP/LICENSE."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        tar.add("/usr/bin/true", f"{top}/bin/{tool}")
        license_file = dest.parent / "LICENSE"
        license_file.write_text("Apache License 2.0\n")
        tar.add(license_file, f"{top}/LICENSE")


def _repo(tmp_path: Path, base: str) -> Path:
    text = (PROJECT / "recipes/upstream.toml").read_text().replace(UPSTREAM_HOST, base)
    recipes = write_repo(tmp_path / "repo", text)
    shutil.copytree(PROJECT / "recipes/upstream", recipes / "upstream")
    shutil.copytree(PROJECT / "stage-tools/packaging", tmp_path / "repo/stage-tools/packaging",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return recipes


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _upstream(server: tuple[str, Path], tmp_path: Path, tag: str = "") -> tuple[str, Path, Path, Path]:
    """(base URL, mlos-core archive, axon archive, recipes) with the archives served; `tag`
    changes the archives' contents (a fresh download for a store that holds the others)."""
    base, www = server
    core = www / "mlos-core/1.0.0/mlos-core-1.0.0-linux-amd64.tar.gz"
    axon = www / "axon/0.9.0/axon-0.9.0-linux-amd64.tar.gz"
    _archive(core, "mlos-core-1.0.0", "mlos-core" + tag)
    _archive(axon, "axon-0.9.0", "axon" + tag)
    return base, core, axon, _repo(tmp_path, base)


def test_pin_fetch_and_repackage(shared_store: Path, server: tuple[str, Path], tmp_path: Path) -> None:
    base, core, axon, recipes = _upstream(server, tmp_path)
    common = ("--recipes", recipes, "--store", shared_store)

    unpinned = mlos("build", "--profile", "release", *common, "--out", tmp_path / "out")
    assert unpinned.code == 2
    assert f"is not pinned yet (profile 'release' builds this stage); run: mlos-repro pin {base}/" in unpinned.stderr
    small = mlos("build", *common, "--out", tmp_path / "small")  # small does not build them
    assert small.code == 0, small.stderr

    core_url = f"{base}/mlos-core/1.0.0/{core.name}"
    for url, archive in ((core_url, core), (f"{base}/axon/0.9.0/{axon.name}", axon)):
        pinned = mlos("pin", url, *common)
        assert pinned.code == 0, pinned.stderr
        assert f"url:{url}#sha256={_sha256(archive)}" in (recipes / "stages.toml").read_text()
    assert "#sha256=unpinned" not in (recipes / "stages.toml").read_text()  # inputs and run line alike

    built = mlos("build", "--profile", "release", *common, "--out", tmp_path / "out")
    assert built.code == 0, built.stderr
    deb = tmp_path / "out/upstream-packages/debs/mlos-core_1.0.0-1_amd64.deb"
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "-rwxr-xr-x root/root" in listing and "./usr/bin/mlos-core" in listing
    assert "./usr/share/doc/mlos-core/LICENSE" in listing
    record = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/share/doc/mlos-core/upstream.json",
                            shell=True, capture_output=True, text=True, check=True).stdout
    assert json.loads(record) == {"archive": core.name, "sha256": _sha256(core), "url": core_url}
    assert (tmp_path / "out/upstream-packages/debs/axon_0.9.0-1_amd64.deb").is_file()
    # The SBOM of the .debs records where each came from: the archive's URL and sha256.
    sbom = json.loads((tmp_path / "out/upstream-packages/debs.cdx.json").read_text())
    component = next(c for c in sbom["components"] if c["name"] == "mlos-core")
    origin = component["pedigree"]["ancestors"][0]
    assert origin["name"] == core.name and origin["hashes"][0]["content"] == _sha256(core)
    assert origin["externalReferences"] == [{"type": "distribution", "url": core_url}]
    assert component["hashes"][0]["content"] == _sha256(deb)

    missing = mlos("pin", f"{base}/other.tar.gz", *common)
    assert missing.code == 2 and "no recipe in" in missing.stderr


def test_a_wrong_pin_is_refused_before_anything_is_built(shared_store: Path, server: tuple[str, Path],
                                                        tmp_path: Path) -> None:
    _, core, axon, recipes = _upstream(server, tmp_path, "-wrong-pin")
    # What the recipe claims: the digest of some other archive than the one served.
    wrong = hashlib.sha256(core.read_bytes() + b"tampered").hexdigest()
    stages = recipes / "stages.toml"
    text = stages.read_text().replace(f"{axon.name}#sha256=unpinned", f"{axon.name}#sha256={_sha256(axon)}")
    stages.write_text(text.replace(f"{core.name}#sha256=unpinned", f"{core.name}#sha256={wrong}"))
    common = ("--recipes", recipes, "--store", shared_store, "--profile", "release")

    fetched = mlos("fetch", *common)
    assert fetched.code == 1
    assert "input 'mlos-core'" in fetched.stderr
    assert f"sha256 is {_sha256(core)}, but {wrong} was pinned; refused, not stored" in fetched.stderr
    built = mlos("build", *common, "--out", tmp_path / "out")
    assert built.code == 2
    assert "pinned inputs are not in the store" in built.stderr
    assert "run: mlos-repro fetch --profile release" in built.stderr
    assert "running" not in built.stderr and not (tmp_path / "out").exists()
